#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: netns_lab
short_description: Build or remove podnet's network-namespace lab on the controller
version_added: "0.1.0"
description:
  - Builds the lab that stands in for real hosts in podnet's integration tests and demos, entirely out of
    network namespaces on the machine the module runs on (normally C(localhost)).
  - One underlay namespace C(<prefix>-underlay) holds the bridge C(br0), which carries I(gateway).
    Each node is a namespace with C(lo) up and an C(eth0) that is one end of a veth pair; the other end
    (C(v<host number of the node address>)) is a port of C(br0). C(eth0) holds the node address with the
    prefix length of I(underlay_cidr) and the node has a default route via I(gateway).
  - With I(routed_cidr) the lab has a second underlay segment behind a router, so that nodes can sit on
    either side of an L3 boundary (for CrossSubnet and DirectRouting). The underlay namespace then also
    holds the bridge C(br1), which carries I(routed_gateway), and routes between the two segments
    (C(net.ipv4.ip_forward=1), set inside the underlay namespace only). A node whose address is inside
    I(routed_cidr) is wired to C(br1) instead (its port is C(r<host number>)), with the prefix length of
    I(routed_cidr) and a default route via I(routed_gateway).
  - Pod namespaces are created empty (only C(lo) up) so that the pod network can be wired later from
    inside the node; processes started with C(ip netns exec) cannot create persistent namespaces
    themselves, because their mounts do not propagate back.
  - With I(state=present) the module is idempotent and first refuses, before creating anything, an
    I(underlay_cidr) or I(routed_cidr) that overlaps an address or a route of the namespace it runs in
    (the controller's root namespace), so that the lab can never shadow the machine's real network.
  - With I(state=absent) it kills the processes still running in every namespace whose name starts with
    C(<prefix>-), then deletes those namespaces, so nodes that were dropped from the inventory go too.
  - Uses netlink (pyroute2) only; it never runs the C(ip) command.
author:
  - podnet maintainers (@podnet)
requirements:
  - pyroute2 on the controller
  - root privileges (creating namespaces needs C(CAP_SYS_ADMIN))
options:
  prefix:
    description:
      - Lab prefix, 1 to 8 lowercase letters or digits. Every namespace of the lab is named C(<prefix>-...),
        which keeps parallel labs apart and tells I(state=absent) what to delete.
    type: str
    required: true
  state:
    description: Whether the lab should exist.
    type: str
    choices: [present, absent]
    default: present
  underlay_cidr:
    description:
      - IPv4 network shared by the gateway and all node addresses, for example C(172.30.0.0/24).
      - Required with I(state=present).
    type: str
  gateway:
    description:
      - Address of the underlay bridge, used as the nodes' default gateway. Defaults to the first host
        address of I(underlay_cidr).
    type: str
  routed_cidr:
    description:
      - IPv4 network of an optional second underlay segment, routed to I(underlay_cidr) by the underlay
        namespace, for example C(172.31.0.0/24). Must not overlap I(underlay_cidr).
      - Without it the lab has the single segment I(underlay_cidr); a C(br1) left by an earlier run with
        I(routed_cidr) is then removed (C(ip_forward) in the underlay namespace is left as it is).
    type: str
  routed_gateway:
    description:
      - Address of C(br1), the default gateway of the nodes inside I(routed_cidr). Defaults to the first
        host address of I(routed_cidr). Needs I(routed_cidr).
    type: str
  nodes:
    description: The lab nodes. Ignored with I(state=absent).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Node namespace name; must start with C(<prefix>-).
        type: str
        required: true
      address:
        description:
          - Node IPv4 address inside I(underlay_cidr) or I(routed_cidr); the segment that contains it is
            the one the node is wired to. A prefix length, if given, must be that of that segment.
        type: str
        required: true
      pods:
        description: Names of the pod namespaces to create for this node; each must start with C(<prefix>-).
        type: list
        elements: str
        default: []
notes:
  - Supports check mode; in check mode nothing is created, removed or killed.
  - Namespaces not listed in I(nodes) are left alone by I(state=present).
"""

EXAMPLES = r"""
- name: Build a two-node lab
  podnet.lab.netns_lab:
    prefix: demo
    underlay_cidr: 172.30.0.0/24
    gateway: 172.30.0.1
    nodes:
      - {name: demo-node1, address: 172.30.0.11, pods: [demo-node1-pod1]}
      - {name: demo-node2, address: 172.30.0.12, pods: [demo-node2-pod1]}

- name: Build a lab with two segments and a router between them (node3 is across an L3 boundary)
  podnet.lab.netns_lab:
    prefix: demo
    underlay_cidr: 172.30.0.0/24
    routed_cidr: 172.31.0.0/24
    routed_gateway: 172.31.0.1
    nodes:
      - {name: demo-node1, address: 172.30.0.11/24}
      - {name: demo-node2, address: 172.30.0.12/24}
      - {name: demo-node3, address: 172.31.0.13/24}

- name: Remove every namespace of that lab
  podnet.lab.netns_lab:
    prefix: demo
    state: absent
"""

RETURN = r"""
namespaces:
  description: Namespaces created (I(state=present)) or removed (I(state=absent)), or that would be in check mode.
  returned: always
  type: list
  elements: str
  sample: [demo-underlay, demo-node1, demo-node1-pod1]
underlay_namespace:
  description: Name of the underlay namespace.
  returned: always
  type: str
  sample: demo-underlay
segments:
  description:
    - The lab's underlay segments with I(state=present), each with its bridge, network and gateway;
      C(br0) first, then C(br1) when I(routed_cidr) is set. Empty with I(state=absent).
  returned: always
  type: list
  elements: dict
  sample: [{bridge: br0, network: 172.30.0.0/24, gateway: 172.30.0.1},
           {bridge: br1, network: 172.31.0.0/24, gateway: 172.31.0.1}]
killed:
  description: Process ids that were killed because they still lived in a lab namespace (I(state=absent)).
  returned: always
  type: list
  elements: int
  sample: [4242]
"""

import ipaddress
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, field

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from pyroute2 import IPRoute
    from pyroute2 import config as pyroute2_config
    from pyroute2 import netns as pyroute2_netns

    # pyroute2 makes a namespace in a forked helper and waits 2 s for its answer; in the QEMU guest, on a loaded
    # machine, the helper once answered later than that and the whole guest lab failed to come up
    pyroute2_config.default_communicate_timeout = 60
    HAS_PYROUTE2 = True
except ImportError:  # reported by main() through fail_json
    HAS_PYROUTE2 = False

BRIDGE = "br0"
ROUTED_BRIDGE = "br1"
IP_FORWARD = "net/ipv4/ip_forward"
NODE_IFNAME = "eth0"
IFF_UP = 0x1
MAIN_TABLE = 254
LOCAL_TABLE = 255
PREFIX_RE = re.compile(r"[a-z0-9]{1,8}")
KILL_GRACE_SECONDS = 2.0


class LabError(Exception):
    """A problem the user must fix; reported through fail_json."""


@dataclass
class Segment:
    """One underlay L2 segment: a bridge in the underlay namespace carrying the segment's gateway."""

    option: str  # the option that defines it, for messages: underlay_cidr or routed_cidr
    bridge: str
    port_letter: str  # node ports are named "<letter><host number>"
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address

    def summary(self) -> dict:
        return {"bridge": self.bridge, "network": str(self.network), "gateway": str(self.gateway)}


@dataclass
class Node:
    name: str
    address: ipaddress.IPv4Address
    segment: Segment
    pods: list[str] = field(default_factory=list)


@dataclass
class Lab:
    prefix: str
    segments: list[Segment]  # br0 first; br1 too when the lab has a routed segment
    nodes: list[Node]

    @property
    def underlay(self) -> str:
        return underlay_name(self.prefix)

    @property
    def routed(self) -> bool:
        return len(self.segments) > 1


class Changes:
    """Collects what was (or in check mode would be) changed."""

    def __init__(self, check: bool) -> None:
        self.check = check
        self.changed = False
        self.namespaces: list[str] = []

    def mark(self) -> bool:
        """Record a change; returns True when the caller should really apply it."""
        self.changed = True
        return not self.check


def underlay_name(prefix: str) -> str:
    return f"{prefix}-underlay"


# --- validation -------------------------------------------------------------------------------------


def parse_network(text: str, option: str = "underlay_cidr") -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise LabError(f"{option} {text!r} is not an IPv4 network: {exc}") from exc
    if network.num_addresses < 4:
        raise LabError(f"{option} {network} is too small for a gateway and nodes")
    return network


def parse_networks(params: dict) -> list[tuple[str, ipaddress.IPv4Network]]:
    """underlay_cidr, then routed_cidr when given (the two must be disjoint)."""
    networks = [("underlay_cidr", parse_network(params["underlay_cidr"]))]
    if params.get("routed_cidr"):
        routed = parse_network(params["routed_cidr"], "routed_cidr")
        if routed.overlaps(networks[0][1]):
            raise LabError(
                f"routed_cidr {routed} overlaps underlay_cidr {networks[0][1]}; the two segments "
                "must be disjoint"
            )
        networks.append(("routed_cidr", routed))
    return networks


def parse_lab(params: dict, networks: list[tuple[str, ipaddress.IPv4Network]]) -> Lab:
    prefix = params["prefix"]
    segments = []
    for option, network in networks:
        gateway_option = "gateway" if option == "underlay_cidr" else "routed_gateway"
        bridge, letter = (BRIDGE, "v") if option == "underlay_cidr" else (ROUTED_BRIDGE, "r")
        text = params.get(gateway_option) or str(next(network.hosts()))
        segments.append(
            Segment(option, bridge, letter, network, parse_host(text, network, gateway_option, option))
        )
    nodes = [parse_node(raw, segments, prefix) for raw in params["nodes"]]
    check_unique(prefix, [s.gateway for s in segments], nodes)
    return Lab(prefix, segments, nodes)


def parse_host(
    text: str, network: ipaddress.IPv4Network, what: str, option: str = "underlay_cidr"
) -> ipaddress.IPv4Address:
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise LabError(f"{what} {text!r} is not an IPv4 address: {exc}") from exc
    if "/" in text and iface.network.prefixlen != network.prefixlen:
        raise LabError(f"{what} {text} must use the prefix length of {option} ({network})")
    address = iface.ip
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise LabError(f"{what} {address} is not a host address of {option} {network}")
    return address


def segment_of(text: str, segments: list[Segment], what: str) -> Segment:
    """The segment whose network holds the address (the first one when it is in none: its error)."""
    try:
        address = ipaddress.IPv4Interface(text).ip
    except ValueError as exc:
        raise LabError(f"{what} {text!r} is not an IPv4 address: {exc}") from exc
    inside = [s for s in segments if address in s.network]
    if not inside and len(segments) > 1:
        raise LabError(
            f"{what} {address} is not a host address of "
            + " or ".join(f"{s.option} {s.network}" for s in segments)
        )
    return (inside or segments)[0]


def parse_node(raw: dict, segments: list[Segment], prefix: str) -> Node:
    name = raw["name"]
    check_ns_name(name, prefix, "node")
    for pod in raw["pods"]:
        check_ns_name(pod, prefix, f"pod of node {name}")
    what = f"address of node {name}"
    segment = segment_of(str(raw["address"]), segments, what)
    address = parse_host(str(raw["address"]), segment.network, what, segment.option)
    return Node(name, address, segment, list(raw["pods"]))


def check_ns_name(name: str, prefix: str, what: str) -> None:
    # Only `<prefix>-` names are removed by state=absent; anything else would leak.
    if not name.startswith(f"{prefix}-") or "/" in name or len(name) > 255:
        raise LabError(f"{what} namespace {name!r} must be named '{prefix}-...' (no '/')")
    if name == underlay_name(prefix):
        raise LabError(f"{what} namespace {name!r} collides with the underlay namespace")


def check_unique(prefix: str, gateways: list[ipaddress.IPv4Address], nodes: list[Node]) -> None:
    names = [underlay_name(prefix)] + [n.name for n in nodes] + [p for n in nodes for p in n.pods]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LabError(f"namespace names are used twice: {', '.join(dupes)}")
    addresses = list(gateways) + [n.address for n in nodes]
    dupes = sorted({str(a) for a in addresses if addresses.count(a) > 1})
    if dupes:
        raise LabError(f"addresses are used twice (the gateways included): {', '.join(dupes)}")


def root_conflicts(network: ipaddress.IPv4Network) -> list[str]:
    """Addresses and routes of the current (root) namespace that overlap the lab's underlay."""
    conflicts = []
    with IPRoute() as ipr:
        for msg in ipr.addr("dump", family=socket.AF_INET):
            net = ipaddress.IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}").network
            if net.overlaps(network):
                conflicts.append(f"address {msg.get('address')}/{msg['prefixlen']}")
        for msg in ipr.route("dump", family=socket.AF_INET):
            # The local table only mirrors the addresses checked above.
            if msg.get("table") != LOCAL_TABLE:
                conflicts.extend(route_conflicts(msg, network))
    return sorted(set(conflicts))


def route_conflicts(msg, network: ipaddress.IPv4Network) -> list[str]:
    found = []
    # A default route covers everything; only its gateway can collide with the lab.
    if msg["dst_len"] > 0:
        dst = ipaddress.IPv4Network(f"{msg.get('dst')}/{msg['dst_len']}", strict=False)
        if dst.overlaps(network):
            found.append(f"route {dst} (table {msg.get('table')})")
    gateway = msg.get("gateway")
    if gateway and ipaddress.IPv4Address(gateway) in network:
        found.append(f"route gateway {gateway}")
    return found


# --- netlink helpers --------------------------------------------------------------------------------


def find_link(ipr, ifname: str):
    indexes = ipr.link_lookup(ifname=ifname)
    return ipr.link("get", index=indexes[0])[0] if indexes else None


def link_kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def ensure_up(ipr, link, changes: Changes) -> None:
    if not link["flags"] & IFF_UP and changes.mark():
        ipr.link("set", index=link["index"], state="up")


def ensure_addresses(ipr, link, wanted: ipaddress.IPv4Interface, changes: Changes) -> None:
    """Make `wanted` the only IPv4 address of a link the lab owns."""
    have = {
        ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
        for a in ipr.addr("dump", family=socket.AF_INET, index=link["index"])
    }
    for stale in have - {wanted}:
        if changes.mark():
            ipr.addr("del", index=link["index"], address=str(stale.ip), prefixlen=stale.network.prefixlen)
    if wanted not in have and changes.mark():
        ipr.addr("add", index=link["index"], address=str(wanted.ip), prefixlen=wanted.network.prefixlen)


def ensure_default_route(ipr, link, gateway: ipaddress.IPv4Address, changes: Changes) -> None:
    defaults = [r for r in ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE) if r["dst_len"] == 0]
    if any(r.get("gateway") == str(gateway) and r.get("oif") == link["index"] for r in defaults):
        return
    if changes.mark():
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=link["index"])


def netns_sysctl(name: str, path: str, value: str | None = None) -> str:
    """Read (and, given `value`, first write) /proc/sys/<path> inside namespace `name`.

    /proc/sys/net shows the network namespace of the process that reads it, so a forked child enters
    the namespace and does the work: this process never leaves its own namespace, even on errors.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report "ok:<value>" or "error:<message>" through the pipe, never return
        code = 1
        try:
            os.close(read_fd)
            pyroute2_netns.setns(name, flags=0)  # flags=0: never create the namespace
            if value is not None:
                with open(f"/proc/sys/{path}", "w", encoding="ascii") as handle:
                    handle.write(f"{value}\n")
            with open(f"/proc/sys/{path}", encoding="ascii") as handle:
                os.write(write_fd, b"ok:" + handle.read().strip().encode())
            code = 0
        except BaseException as exc:  # anything must reach the parent, never a traceback of the child
            os.write(write_fd, f"error:{exc}".encode(errors="replace"))
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 4096):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    answer = b"".join(chunks).decode(errors="replace")
    if not answer.startswith("ok:"):
        raise LabError(
            f"cannot {'set' if value is not None else 'read'} {path} in namespace {name}: "
            f"{answer.removeprefix('error:') or 'the helper process died'}"
        )
    return answer[3:]


def ensure_ip_forward(name: str, changes: Changes) -> None:
    if netns_sysctl(name, IP_FORWARD) != "1" and changes.mark():
        netns_sysctl(name, IP_FORWARD, "1")


# --- state=present ----------------------------------------------------------------------------------


def ensure_netns(name: str, changes: Changes) -> bool:
    """Create the namespace if missing; returns whether it exists now (False only in check mode)."""
    if name in pyroute2_netns.listnetns():
        return True
    changes.namespaces.append(name)
    if changes.mark():
        pyroute2_netns.create(name)
        return True
    return False


def ensure_lo(ipr, changes: Changes) -> None:
    ensure_up(ipr, find_link(ipr, "lo"), changes)


def ensure_bridge(ipr, lab: Lab, segment: Segment, changes: Changes):
    bridge = find_link(ipr, segment.bridge)
    if bridge is not None and link_kind(bridge) != "bridge":
        raise LabError(f"{segment.bridge} in {lab.underlay} exists but is not a bridge")
    if bridge is None:
        if not changes.mark():
            return None
        ipr.link("add", ifname=segment.bridge, kind="bridge")
        bridge = find_link(ipr, segment.bridge)
    ensure_up(ipr, bridge, changes)
    ensure_addresses(
        ipr, bridge, ipaddress.IPv4Interface(f"{segment.gateway}/{segment.network.prefixlen}"), changes
    )
    return bridge


def ensure_no_routed_bridge(ipr, changes: Changes) -> None:
    """A lab without routed_cidr has no br1 (one left by an earlier run with it goes, with its ports)."""
    bridge = find_link(ipr, ROUTED_BRIDGE)
    if bridge is None or link_kind(bridge) != "bridge":
        return
    if changes.mark():
        ipr.link("del", index=bridge["index"])


def port_name(node: Node) -> str:
    # The host number is unique per node of a segment and stable when the inventory is reordered; the
    # letter keeps the two segments apart ("v": br0, "r": br1). A letter plus at most ten digits stays
    # within the 15-character interface name limit.
    return f"{node.segment.port_letter}{int(node.address) - int(node.segment.network.network_address)}"


def paired(port, eth0) -> bool:
    """Whether the underlay port and the node's eth0 are the two ends of one veth."""
    return (
        port is not None
        and eth0 is not None
        and link_kind(port) == "veth"
        and link_kind(eth0) == "veth"
        and port.get("IFLA_LINK") == eth0["index"]
        and eth0.get("IFLA_LINK") == port["index"]
    )


def ensure_veth(under, node_ipr, node: Node, changes: Changes):
    """Return (port, eth0) wired as one veth pair, rebuilding it when the ends do not match."""
    name = port_name(node)
    port, eth0 = find_link(under, name), find_link(node_ipr, NODE_IFNAME)
    if paired(port, eth0):
        return port, eth0
    if not changes.mark():
        return None, None
    # Deleting one end of a veth deletes both; look again before deleting the other.
    if eth0 is not None:
        node_ipr.link("del", index=eth0["index"])
    port = find_link(under, name)
    if port is not None:
        under.link("del", index=port["index"])
    under.link("add", ifname=name, kind="veth", peer={"ifname": NODE_IFNAME, "net_ns_fd": node.name})
    return find_link(under, name), find_link(node_ipr, NODE_IFNAME)


def ensure_node(under, bridge, node: Node, changes: Changes) -> None:
    segment = node.segment
    with IPRoute(netns=node.name, flags=0) as node_ipr:
        ensure_lo(node_ipr, changes)
        if bridge is None:  # check mode with a bridge still to create: the port would be new too
            changes.mark()
            return
        port, eth0 = ensure_veth(under, node_ipr, node, changes)
        if port is None:  # check mode: the pair would be (re)built
            return
        if port.get("master") != bridge["index"] and changes.mark():
            under.link("set", index=port["index"], master=bridge["index"])
        ensure_up(under, port, changes)
        ensure_up(node_ipr, eth0, changes)
        ensure_addresses(
            node_ipr, eth0, ipaddress.IPv4Interface(f"{node.address}/{segment.network.prefixlen}"), changes
        )
        if changes.check and not eth0["flags"] & IFF_UP:
            return  # the kernel refuses a route through a down link; a real run brings it up first
        ensure_default_route(node_ipr, eth0, segment.gateway, changes)


def ensure_pod(name: str, changes: Changes) -> None:
    if ensure_netns(name, changes):
        with IPRoute(netns=name, flags=0) as ipr:
            ensure_lo(ipr, changes)


def check_root(network: ipaddress.IPv4Network, option: str = "underlay_cidr") -> None:
    conflicts = root_conflicts(network)
    if conflicts:
        raise LabError(
            f"{option} {network} overlaps the root network namespace ({'; '.join(conflicts)}); "
            "choose a lab range that this machine does not use"
        )


def lab_present(params: dict, changes: Changes) -> Lab:
    networks = parse_networks(params)
    # Checked before the nodes: a clash with the machine's network is the error worth reporting first.
    for option, network in networks:
        check_root(network, option)
    lab = parse_lab(params, networks)
    under_exists = ensure_netns(lab.underlay, changes)
    for node in lab.nodes:
        ensure_netns(node.name, changes)
    if not under_exists:  # check mode: everything inside would be new
        changes.namespaces.extend(p for n in lab.nodes for p in n.pods if p not in pyroute2_netns.listnetns())
        return lab
    with IPRoute(netns=lab.underlay, flags=0) as under:
        ensure_lo(under, changes)
        if not lab.routed:
            ensure_no_routed_bridge(under, changes)
        bridges = {s.bridge: ensure_bridge(under, lab, s, changes) for s in lab.segments}
        if lab.routed:
            # The underlay namespace is the router between the segments (its own sysctl, not the root's).
            ensure_ip_forward(lab.underlay, changes)
        for node in lab.nodes:
            if node.name in pyroute2_netns.listnetns():
                ensure_node(under, bridges[node.segment.bridge], node, changes)
            for pod in node.pods:
                ensure_pod(pod, changes)
    return lab


# --- state=absent -----------------------------------------------------------------------------------


def lab_namespaces(prefix: str) -> list[str]:
    return sorted(n for n in pyroute2_netns.listnetns() if n.startswith(f"{prefix}-"))


def own_lineage() -> set[int]:
    """This process and its ancestors: a controller running inside a lab namespace must survive."""
    lineage, pid = set(), os.getpid()
    while pid > 1 and pid not in lineage:
        lineage.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])  # the comm field may hold spaces
        except (OSError, ValueError, IndexError):
            break
    return lineage


def pids_in(names: list[str]) -> list[int]:
    by_ns, spare = pyroute2_netns.ns_pids(), own_lineage()
    return sorted(pid for name in names for pid in by_ns.get(name, []) if pid not in spare)


def kill_all(names: list[str]) -> list[int]:
    """Stop every process in the namespaces: a namespace outlives its mount while processes hold it."""
    killed = pids_in(names)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_in(names):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while pids_in(names) and time.monotonic() < deadline:
            time.sleep(0.05)
    return killed


def lab_absent(prefix: str, changes: Changes) -> list[int]:
    names = lab_namespaces(prefix)
    if not names:
        return []
    changes.namespaces.extend(names)
    if not changes.mark():
        return []
    killed = kill_all(names)
    for name in names:
        pyroute2_netns.remove(name)
    return killed


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            prefix=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            underlay_cidr=dict(type="str"),
            gateway=dict(type="str"),
            routed_cidr=dict(type="str"),
            routed_gateway=dict(type="str"),
            nodes=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    name=dict(type="str", required=True),
                    address=dict(type="str", required=True),
                    pods=dict(type="list", elements="str", default=[]),
                ),
            ),
        ),
        required_if=[("state", "present", ["underlay_cidr"])],
        required_by={"routed_gateway": "routed_cidr"},
        supports_check_mode=True,
    )
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"))
    prefix = module.params["prefix"]
    if not PREFIX_RE.fullmatch(prefix):
        module.fail_json(msg=f"prefix {prefix!r} must be 1 to 8 lowercase letters or digits")
    changes = Changes(module.check_mode)
    killed: list[int] = []
    segments: list[dict] = []
    try:
        if module.params["state"] == "present":
            segments = [s.summary() for s in lab_present(module.params, changes).segments]
        else:
            killed = lab_absent(prefix, changes)
    except LabError as exc:
        module.fail_json(msg=str(exc), changed=changes.changed, namespaces=changes.namespaces)
    module.exit_json(
        changed=changes.changed,
        namespaces=changes.namespaces,
        underlay_namespace=underlay_name(prefix),
        segments=segments,
        killed=killed,
    )


if __name__ == "__main__":
    main()
