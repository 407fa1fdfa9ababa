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
  - Pod namespaces are created empty (only C(lo) up) so that the pod network can be wired later from
    inside the node; processes started with C(ip netns exec) cannot create persistent namespaces
    themselves, because their mounts do not propagate back.
  - With I(state=present) the module is idempotent and first refuses, before creating anything, an
    I(underlay_cidr) that overlaps an address or a route of the namespace it runs in (the controller's
    root namespace), so that the lab can never shadow the machine's real network.
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
          - Node IPv4 address inside I(underlay_cidr) (a prefix length, if given, must be that of
            I(underlay_cidr)).
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
  podnet.dataplane.netns_lab:
    prefix: demo
    underlay_cidr: 172.30.0.0/24
    gateway: 172.30.0.1
    nodes:
      - {name: demo-node1, address: 172.30.0.11, pods: [demo-node1-pod1]}
      - {name: demo-node2, address: 172.30.0.12, pods: [demo-node2-pod1]}

- name: Remove every namespace of that lab
  podnet.dataplane.netns_lab:
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
    from pyroute2 import netns as pyroute2_netns

    HAS_PYROUTE2 = True
except ImportError:  # reported by main() through fail_json
    HAS_PYROUTE2 = False

BRIDGE = "br0"
NODE_IFNAME = "eth0"
IFF_UP = 0x1
MAIN_TABLE = 254
LOCAL_TABLE = 255
PREFIX_RE = re.compile(r"^[a-z0-9]{1,8}$")
KILL_GRACE_SECONDS = 2.0


class LabError(Exception):
    """A problem the user must fix; reported through fail_json."""


@dataclass
class Node:
    name: str
    address: ipaddress.IPv4Address
    pods: list[str] = field(default_factory=list)


@dataclass
class Lab:
    prefix: str
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    nodes: list[Node]

    @property
    def underlay(self) -> str:
        return underlay_name(self.prefix)


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


def parse_network(text: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise LabError(f"underlay_cidr {text!r} is not an IPv4 network: {exc}") from exc
    if network.num_addresses < 4:
        raise LabError(f"underlay_cidr {network} is too small for a gateway and nodes")
    return network


def parse_lab(params: dict, network: ipaddress.IPv4Network) -> Lab:
    prefix = params["prefix"]
    gateway = parse_host(params["gateway"] or str(next(network.hosts())), network, "gateway")
    nodes = [parse_node(raw, network, prefix) for raw in params["nodes"]]
    check_unique(prefix, gateway, nodes)
    return Lab(prefix, network, gateway, nodes)


def parse_host(text: str, network: ipaddress.IPv4Network, what: str) -> ipaddress.IPv4Address:
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise LabError(f"{what} {text!r} is not an IPv4 address: {exc}") from exc
    if "/" in text and iface.network.prefixlen != network.prefixlen:
        raise LabError(f"{what} {text} must use the prefix length of underlay_cidr ({network})")
    address = iface.ip
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise LabError(f"{what} {address} is not a host address of underlay_cidr {network}")
    return address


def parse_node(raw: dict, network: ipaddress.IPv4Network, prefix: str) -> Node:
    name = raw["name"]
    check_ns_name(name, prefix, "node")
    for pod in raw["pods"]:
        check_ns_name(pod, prefix, f"pod of node {name}")
    return Node(name, parse_host(str(raw["address"]), network, f"address of node {name}"), list(raw["pods"]))


def check_ns_name(name: str, prefix: str, what: str) -> None:
    # Only `<prefix>-` names are removed by state=absent; anything else would leak.
    if not name.startswith(f"{prefix}-") or "/" in name or len(name) > 255:
        raise LabError(f"{what} namespace {name!r} must be named '{prefix}-...' (no '/')")
    if name == underlay_name(prefix):
        raise LabError(f"{what} namespace {name!r} collides with the underlay namespace")


def check_unique(prefix: str, gateway: ipaddress.IPv4Address, nodes: list[Node]) -> None:
    names = [underlay_name(prefix)] + [n.name for n in nodes] + [p for n in nodes for p in n.pods]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LabError(f"namespace names are used twice: {', '.join(dupes)}")
    addresses = [gateway] + [n.address for n in nodes]
    dupes = sorted({str(a) for a in addresses if addresses.count(a) > 1})
    if dupes:
        raise LabError(f"addresses are used twice (the gateway included): {', '.join(dupes)}")


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


def ensure_bridge(ipr, lab: Lab, changes: Changes):
    bridge = find_link(ipr, BRIDGE)
    if bridge is not None and link_kind(bridge) != "bridge":
        raise LabError(f"{BRIDGE} in {lab.underlay} exists but is not a bridge")
    if bridge is None:
        if not changes.mark():
            return None
        ipr.link("add", ifname=BRIDGE, kind="bridge")
        bridge = find_link(ipr, BRIDGE)
    ensure_up(ipr, bridge, changes)
    ensure_addresses(ipr, bridge, ipaddress.IPv4Interface(f"{lab.gateway}/{lab.network.prefixlen}"), changes)
    return bridge


def port_name(lab: Lab, node: Node) -> str:
    # The host number is unique per node and stable when the inventory is reordered; "v" plus at
    # most ten digits stays within the 15-character interface name limit.
    return f"v{int(node.address) - int(lab.network.network_address)}"


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


def ensure_veth(under, node_ipr, lab: Lab, node: Node, changes: Changes):
    """Return (port, eth0) wired as one veth pair, rebuilding it when the ends do not match."""
    name = port_name(lab, node)
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


def ensure_node(under, bridge, lab: Lab, node: Node, changes: Changes) -> None:
    with IPRoute(netns=node.name, flags=0) as node_ipr:
        ensure_lo(node_ipr, changes)
        if bridge is None:  # check mode with a bridge still to create: the port would be new too
            changes.mark()
            return
        port, eth0 = ensure_veth(under, node_ipr, lab, node, changes)
        if port is None:  # check mode: the pair would be (re)built
            return
        if port.get("master") != bridge["index"] and changes.mark():
            under.link("set", index=port["index"], master=bridge["index"])
        ensure_up(under, port, changes)
        ensure_up(node_ipr, eth0, changes)
        ensure_addresses(
            node_ipr, eth0, ipaddress.IPv4Interface(f"{node.address}/{lab.network.prefixlen}"), changes
        )
        if changes.check and not eth0["flags"] & IFF_UP:
            return  # the kernel refuses a route through a down link; a real run brings it up first
        ensure_default_route(node_ipr, eth0, lab.gateway, changes)


def ensure_pod(name: str, changes: Changes) -> None:
    if ensure_netns(name, changes):
        with IPRoute(netns=name, flags=0) as ipr:
            ensure_lo(ipr, changes)


def check_root(network: ipaddress.IPv4Network) -> None:
    conflicts = root_conflicts(network)
    if conflicts:
        raise LabError(
            f"underlay_cidr {network} overlaps the root network namespace ({'; '.join(conflicts)}); "
            "choose a lab range that this machine does not use"
        )


def lab_present(params: dict, changes: Changes) -> None:
    network = parse_network(params["underlay_cidr"])
    # Checked before the nodes: a clash with the machine's network is the error worth reporting first.
    check_root(network)
    lab = parse_lab(params, network)
    under_exists = ensure_netns(lab.underlay, changes)
    for node in lab.nodes:
        ensure_netns(node.name, changes)
    if not under_exists:  # check mode: everything inside would be new
        changes.namespaces.extend(p for n in lab.nodes for p in n.pods if p not in pyroute2_netns.listnetns())
        return
    with IPRoute(netns=lab.underlay, flags=0) as under:
        ensure_lo(under, changes)
        bridge = ensure_bridge(under, lab, changes)
        for node in lab.nodes:
            if node.name in pyroute2_netns.listnetns():
                ensure_node(under, bridge, lab, node, changes)
            for pod in node.pods:
                ensure_pod(pod, changes)


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
        supports_check_mode=True,
    )
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"))
    prefix = module.params["prefix"]
    if not PREFIX_RE.match(prefix):
        module.fail_json(msg=f"prefix {prefix!r} must be 1 to 8 lowercase letters or digits")
    changes = Changes(module.check_mode)
    killed: list[int] = []
    try:
        if module.params["state"] == "present":
            lab_present(module.params, changes)
        else:
            killed = lab_absent(prefix, changes)
    except LabError as exc:
        module.fail_json(msg=str(exc), changed=changes.changed, namespaces=changes.namespaces)
    module.exit_json(
        changed=changes.changed,
        namespaces=changes.namespaces,
        underlay_namespace=underlay_name(prefix),
        killed=killed,
    )


if __name__ == "__main__":
    main()
