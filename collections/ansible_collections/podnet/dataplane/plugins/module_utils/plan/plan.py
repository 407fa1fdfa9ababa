# Copyright: podnet contributors
# Apache License 2.0
"""Validate the inventory, allocate pod subnets, and compute every node's desired network state.

Pure Python, no host access: the `podnet.dataplane.plan` filter runs this once per play on the
controller, before any task reaches a node, so bad input stops the run while every host is still
untouched.  All problems are collected and reported together, each naming the host and the variable.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    CALICO_GATEWAY,
    UDP_DEVICE,
    VXLAN_OVERHEAD,
    WIREGUARD_PORT,
    calico_veth_name,
    host_veth_name,
    normalize_mac,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.features import TRANSPORT_FEATURES
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.ownership import (
    TAKE_OVER_VAR,
    take_over_problems,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.wireguard_keys import (
    DEFAULT_FOLDER as WIREGUARD_KEY_DIR,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan import policy
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.adoption import backend_devices
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.backends import (
    KNOWN_BACKENDS,
    PROFILES,
    Profile,
    profile_for,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    POD_NAME_MAX,
    PlanError,
    check_interface_name,
    check_mac,
    check_netns_name,
    check_pod_sysctls,
)

# An inventory hostname becomes a file name (render.yml), a comment in the rendered script and a BIRD
# protocol name: letters, digits, '_', '.', '-', starting and ending with a letter or digit (DNS names and
# IPv4 addresses fit).
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?")
# BIRD 2 symbols are at most 64 characters (SYM_MAX_LEN); a peer's is "peer_" + its name.
BIRD_SYMBOL_MAX = 64
POD_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")

IPIP_DEVICE = "tunl0"
WIREGUARD_DEVICES = ("flannel-wg", "wireguard.cali")

DEFAULTS: dict[str, Any] = {
    "podnet_backend": "flannel-vxlan",
    "podnet_transport": None,  # the preset's
    "podnet_pod_wiring": None,  # the preset's
    "podnet_cluster_cidr": "10.244.0.0/16",
    "podnet_subnet_prefix": 24,
    "podnet_vxlan_vni": None,  # per backend: flannel 1, calico 4096
    "podnet_vxlan_port": None,  # per backend: flannel 8472, calico 4789
    "podnet_udp_port": 8285,  # flannel's udp backend's port
    "podnet_wireguard_port": WIREGUARD_PORT,
    # raising the epoch makes every node a new WireGuard key
    "podnet_wireguard_key_epoch": 0,
    "podnet_mtu": None,
    "podnet_underlay_mtu": 1500,
    "podnet_ipmasq": True,
    "podnet_bridge": "cni0",
    "podnet_pod_netns_prefix": "",
    "podnet_calico_bgp": "static",
    "podnet_bgp_as": 64512,
    "podnet_flannel_directrouting": False,
    "podnet_calico_crosssubnet": False,
    "podnet_network_policies": [],
}
CLUSTER_KEYS = ("podnet_backend", "podnet_transport", "podnet_pod_wiring", "podnet_cluster_cidr", "podnet_subnet_prefix", "podnet_vxlan_vni",
                "podnet_vxlan_port", "podnet_udp_port", "podnet_mtu", "podnet_underlay_mtu", "podnet_ipmasq", "podnet_bridge",
                "podnet_calico_bgp", "podnet_bgp_as", "podnet_flannel_directrouting", "podnet_calico_crosssubnet",
                "podnet_network_policies", "podnet_wireguard_port", "podnet_wireguard_key_epoch")
# Adopt what the node runs (playbooks/adopt.yml sets it): the preflight reads the node's subnet and VTEP MAC, and
# the node's run takes over its devices and routes to the other nodes.
ADOPT_VAR = "podnet_adopt"
# The controller's copy of the VTEP MACs the nodes hold where they are not podnet's default (adopted ones).
VTEP_MACS_VAR = "podnet_vtep_macs_file"
NODE_KEYS = ("podnet_node_ip", "podnet_pod_subnet", "podnet_vtep_mac", "podnet_underlay_interface",
             "podnet_pods", "podnet_pod_netns_prefix", "podnet_bgp_route_reflector",
             "podnet_vxlan_tx_checksum_offload", "podnet_pod_sysctls", TAKE_OVER_VAR, ADOPT_VAR)
# Paths on the node that reach a systemd unit, bird.conf or a command line (the roles' defaults are safe;
# these are checked when the inventory sets them). An empty podnet_persist_dir means "record nothing".
PATH_KEYS = ("podnet_persist_dir", "podnet_boot_lib", "podnet_boot_python", "podnet_bird_dir", "podnet_lock_file",
             "podnet_flannel_subnet_env", "podnet_proxy_arp_state_file", "podnet_rt_protos_file",
             "podnet_wireguard_key_dir", "podnet_node_record")
_PATH_RE = re.compile(r"(/[A-Za-z0-9_.+@-]+)+")
# Far below PATH_MAX (4096): podnet appends file names, and BIRD's control socket (<bird dir>/bird.ctl)
# must fit a unix socket address (107 bytes) - a longer path fails on the node, after changes.
PATH_MAX = 1024
BIRD_DIR_MAX = 107 - len("/bird.ctl")
NAME_MAX = 255


@dataclass
class _Problems:
    items: list[str]

    def add(self, host: str, var: str, message: str) -> None:
        self.items.append(f"host {shown_host(host)}: {var}: {message}")

    def extend(self, host: str, messages: list[str]) -> None:
        self.items.extend(f"host {shown_host(host)}: {m}" for m in messages)


def shown_host(host: Any) -> str:
    """A hostname as messages show it: as it is when valid, quoted (newlines and all escaped) when not."""
    return host if isinstance(host, str) and HOSTNAME_RE.fullmatch(host) else repr(host)


def bird_symbol(host: str) -> str:
    """The BIRD protocol name of a BGP peer (bird.conf): "peer_" + its name with every other character '_'."""
    return "peer_" + re.sub(r"[^A-Za-z0-9_]", "_", host)


def _check_paths(host: str, hv: dict[str, Any], problems: _Problems) -> None:
    for key in PATH_KEYS:
        value = hv.get(key)
        if value is None or (key in ("podnet_persist_dir", "podnet_node_record") and value == ""):
            continue
        limit = BIRD_DIR_MAX if key == "podnet_bird_dir" else PATH_MAX
        if isinstance(value, str) and (len(value) > limit
                                       or any(len(part) > NAME_MAX for part in value.split("/"))):
            problems.add(host, key, f"{value[:40]!r}... is {len(value)} characters; at most {limit}, "
                                    f"each part at most {NAME_MAX}")
            continue
        if (not isinstance(value, str) or not _PATH_RE.fullmatch(value)
                or any(part in (".", "..") for part in value.split("/"))):
            problems.add(host, key, f"{value!r} must be an absolute path of letters, digits and '_.+@-' "
                                    "(no spaces, quotes, newlines, '.' or '..' parts)")


def _check_device_names(host: str, node: dict[str, Any], problems: _Problems) -> None:
    """Every device podnet makes on a node has its own name, none of them the underlay's or the loopback's:
    a pod's host end named like the bridge or the underlay would make podnet change (or delete) a device
    that is not its own. Checked here, before any node is touched."""
    taken: dict[str, str] = {"lo": "the loopback device"}
    if node.get("underlay_interface"):
        taken[node["underlay_interface"]] = "podnet_underlay_interface"
    backend_devices = []
    if node.get("bridge"):
        backend_devices.append(("podnet_bridge", node["bridge"]["name"]))
    if node.get("vtep"):
        backend_devices.append(("podnet_vxlan_vni", node["vtep"]["name"]))  # the VTEP's name follows the VNI
    if node.get("tunnel"):
        backend_devices.append(("the IPIP or UDP tunnel", node["tunnel"]["name"]))
    if node.get("wireguard"):
        backend_devices.append(("the WireGuard device", node["wireguard"]["name"]))
    # what the other backends make: every run's cleanup (and a switch of backend) removes those
    mine = {(node.get(part) or {}).get("name") for part in ("vtep", "tunnel", "wireguard")}
    for other in (IPIP_DEVICE, UDP_DEVICE, *WIREGUARD_DEVICES, "flannel.1",
                  *(p.vtep for p in PROFILES.values() if p.vtep and "{" not in p.vtep)):
        if other not in mine:
            taken.setdefault(other, "the name of another backend's device, which podnet removes")
    own = backend_devices + [(f"podnet_pods[{pod['name']}].host_interface", pod["host_interface"])
                             for pod in node["pods"]]
    for var, name in own:
        if name in taken:
            problems.add(host, var, f"{name!r} is also {taken[name]}; every device podnet makes on a node needs "
                                    "a name of its own, and never the underlay's")
        else:
            taken[name] = var


def _check_hostnames(hosts: list[str], settings: dict[str, Any], problems: _Problems) -> None:
    """Inventory hostnames podnet can write into files, scripts and bird.conf; BIRD names distinct."""
    symbols: dict[str, str] = {}
    bird = runs_bird(settings)
    for host in hosts:
        if not isinstance(host, str) or not HOSTNAME_RE.fullmatch(host):
            problems.add(host, "inventory_hostname", "must be letters, digits, '_', '.' and '-', starting and "
                                                     "ending with a letter or digit (at most 253)")
            continue
        if not bird:
            continue
        symbol = bird_symbol(host)
        if len(symbol) > BIRD_SYMBOL_MAX:
            problems.add(host, "inventory_hostname", f"BIRD names this peer {symbol}, {len(symbol)} characters; "
                                                     f"BIRD allows {BIRD_SYMBOL_MAX} (a hostname of at most "
                                                     f"{BIRD_SYMBOL_MAX - len('peer_')} with podnet_calico_bgp: bird)")
        elif symbol in symbols:
            problems.add(host, "inventory_hostname", f"BIRD would name it {symbol}, as {symbols[symbol]}: "
                                                     "rename one (bird.conf cannot tell them apart)")
        symbols.setdefault(symbol, host)


def _profile(settings: dict[str, Any]) -> Profile:
    """The cluster's profile, once _cluster_settings has checked the backend and transport."""
    try:
        return profile_for(settings["podnet_backend"], settings["podnet_transport"], settings["podnet_pod_wiring"])
    except (KeyError, ValueError):
        return PROFILES["flannel-vxlan"]  # reported already; only checks that cannot fail anyway follow


def runs_bird(settings: dict[str, Any]) -> bool:
    return _profile(settings).transport == "bgp" and settings["podnet_calico_bgp"] == "bird"


def vtep_mac_for(node_ip: str) -> str:
    """A stable VTEP MAC per node: locally administered, unicast, derived from the node IP, so it
    survives reboots and re-runs and never depends on systemd's MAC policy."""
    digest = bytearray(hashlib.sha256(f"podnet-vtep/{node_ip}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in digest)


def _int(value: Any) -> int | None:
    # int() alone would take ' 24\n', '２４' (fullwidth) and 24.9: an integer or ASCII digits only
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,20}", value):
        return int(value)
    return None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    return None


def tx_checksum_mode(value: Any) -> str | None:
    """podnet_vxlan_tx_checksum_offload as one of auto/on/off (YAML reads a bare on/off as a boolean),
    None when it is none of them."""
    if value in (None, ""):
        return "auto"
    if value == "auto":
        return value
    flag = _bool(value)
    return None if flag is None else ("on" if flag else "off")


def _check_ifname(problems: _Problems, host: str, var: str, name: Any) -> None:
    problems.extend(host, check_interface_name(var, name))


def _check_mac(problems: _Problems, host: str, var: str, mac: Any) -> str | None:
    found = check_mac(var, mac)
    problems.extend(host, found)
    return None if found else normalize_mac(mac)


def _cluster_settings(hosts: list[str], hostvars: dict[str, dict], problems: _Problems) -> dict[str, Any]:
    """Cluster-wide variables must agree on every node (they are group vars in a sane inventory)."""
    settings: dict[str, Any] = {}
    for key in CLUSTER_KEYS:
        values = {}
        for host in hosts:
            value = hostvars[host].get(key, DEFAULTS[key])
            values[host] = DEFAULTS[key] if value is None and DEFAULTS[key] is not None else value
        distinct = {repr(v) for v in values.values()}
        if len(distinct) > 1:
            detail = ", ".join(f"{h}={v!r}" for h, v in values.items())
            problems.add(hosts[0], key, f"must be the same on every node of podnet_nodes, got {detail}")
        settings[key] = values[hosts[0]] if hosts else DEFAULTS[key]
    first = hosts[0] if hosts else "(all)"

    backend = settings["podnet_backend"]
    if backend not in KNOWN_BACKENDS:
        problems.add(first, "podnet_backend", f"unknown backend {backend!r}; choose one of "
                                              f"{', '.join(KNOWN_BACKENDS)}")
    try:
        cidr = ipaddress.IPv4Network(str(settings["podnet_cluster_cidr"]), strict=True)
        settings["podnet_cluster_cidr"] = cidr
    except ValueError as exc:
        problems.add(first, "podnet_cluster_cidr", f"{settings['podnet_cluster_cidr']!r} is not an IPv4 "
                                                   f"network ({exc})")
        settings["podnet_cluster_cidr"] = None
    prefix = _int(settings["podnet_subnet_prefix"])
    cidr = settings["podnet_cluster_cidr"]
    if prefix is None or not 1 <= prefix <= 30:
        problems.add(first, "podnet_subnet_prefix", f"{settings['podnet_subnet_prefix']!r} must be an "
                                                    "integer between 1 and 30")
        prefix = None
    elif cidr is not None and prefix < cidr.prefixlen:
        problems.add(first, "podnet_subnet_prefix", f"/{prefix} is larger than the cluster CIDR {cidr}")
        prefix = None
    settings["podnet_subnet_prefix"] = prefix
    profile = PROFILES.get(backend, PROFILES["flannel-vxlan"])
    if backend in PROFILES:
        try:
            profile = profile_for(backend, settings["podnet_transport"], settings["podnet_pod_wiring"])
        except ValueError as exc:
            named, _sep, message = str(exc).partition(": ")
            if named in ("podnet_transport", "podnet_pod_wiring"):
                problems.add(first, named, message)
            else:
                problems.add(first, "podnet_pod_wiring" if settings["podnet_pod_wiring"] else "podnet_transport",
                             str(exc))
    settings["podnet_transport"] = profile.transport
    settings["podnet_pod_wiring"] = profile.pod_mode
    settings["podnet_vxlan_vni"] = settings["podnet_vxlan_vni"] if settings["podnet_vxlan_vni"] not in (None, "") \
        else profile.vni
    settings["podnet_vxlan_port"] = settings["podnet_vxlan_port"] \
        if settings["podnet_vxlan_port"] not in (None, "") else profile.port
    vni = _int(settings["podnet_vxlan_vni"])
    if vni is None or not 1 <= vni <= 16777215:
        problems.add(first, "podnet_vxlan_vni", f"{settings['podnet_vxlan_vni']!r} is out of range; a VXLAN "
                                                "network identifier is 1..16777215")
    settings["podnet_vxlan_vni"] = vni
    port = _int(settings["podnet_vxlan_port"])
    if port is None or not 1 <= port <= 65535:
        problems.add(first, "podnet_vxlan_port", f"{settings['podnet_vxlan_port']!r} is not a UDP port "
                                                 "(1..65535)")
    settings["podnet_vxlan_port"] = port
    udp_port = _int(settings["podnet_udp_port"])
    if udp_port is None or not 1 <= udp_port <= 65535:
        problems.add(first, "podnet_udp_port", f"{settings['podnet_udp_port']!r} is not a UDP port (1..65535)")
    settings["podnet_udp_port"] = udp_port
    wg_port = _int(settings["podnet_wireguard_port"])
    if wg_port is None or not 1 <= wg_port <= 65535:
        problems.add(first, "podnet_wireguard_port", f"{settings['podnet_wireguard_port']!r} is not a UDP port "
                                                     "(1..65535)")
    settings["podnet_wireguard_port"] = wg_port
    epoch = _int(settings["podnet_wireguard_key_epoch"])
    if epoch is None or not 0 <= epoch <= 2**31 - 1:
        problems.add(first, "podnet_wireguard_key_epoch", f"{settings['podnet_wireguard_key_epoch']!r} must be an "
                                                          "integer from 0 (raise it to give every node a new key)")
    settings["podnet_wireguard_key_epoch"] = epoch
    for key, low in (("podnet_mtu", 576), ("podnet_underlay_mtu", 576 + VXLAN_OVERHEAD)):
        if settings[key] is None:
            continue
        value = _int(settings[key])
        if value is None or not low <= value <= 65535:
            problems.add(first, key, f"{settings[key]!r} must be an integer between {low} and 65535")
        settings[key] = value
    ipmasq = _bool(settings["podnet_ipmasq"])
    if ipmasq is None:
        problems.add(first, "podnet_ipmasq", f"{settings['podnet_ipmasq']!r} is not a boolean")
    settings["podnet_ipmasq"] = ipmasq
    _check_ifname(problems, first, "podnet_bridge", settings["podnet_bridge"])
    if vni is not None and profile.vtep:
        _check_ifname(problems, first, "podnet_vxlan_vni", profile.vtep.format(vni=vni))
    if settings["podnet_calico_bgp"] not in ("static", "bird"):
        problems.add(first, "podnet_calico_bgp", f"{settings['podnet_calico_bgp']!r} must be 'static' or 'bird'")
    asn = _int(settings["podnet_bgp_as"])
    if asn is None or not 1 <= asn <= 4294967295:
        problems.add(first, "podnet_bgp_as", f"{settings['podnet_bgp_as']!r} is not an AS number (1..4294967295)")
    settings["podnet_bgp_as"] = asn
    for key in ("podnet_flannel_directrouting", "podnet_calico_crosssubnet"):
        flag = _bool(settings[key])
        if flag is None:
            problems.add(first, key, f"{settings[key]!r} is not a boolean")
        elif flag and key != profile.direct_var:
            problems.add(first, key, f"only applies to backend(s) "
                                     f"{', '.join(b for b, p in PROFILES.items() if p.direct_var == key)}, "
                                     f"not {backend} over {profile.transport}")
        settings[key] = bool(flag)
    return settings


def _allocate(names: list[str], explicit: dict[str, ipaddress.IPv4Network],
              leases: dict[str, str], cidr: ipaddress.IPv4Network, prefix: int,
              problems: _Problems) -> dict[str, ipaddress.IPv4Network]:
    """Explicit subnets win; otherwise a node keeps its lease; new nodes take the lowest free subnet
    in inventory order.  No node's subnet ever depends on which other nodes exist."""
    taken: list[ipaddress.IPv4Network] = list(explicit.values())
    result = dict(explicit)
    pending = []
    for name in names:
        if name in explicit:
            continue
        lease = leases.get(name)
        try:
            net = ipaddress.IPv4Network(lease) if lease else None
        except ValueError:
            net = None
        if (net is not None and net.prefixlen == prefix and net.subnet_of(cidr)
                and not any(net.overlaps(t) for t in taken)):
            result[name] = net
            taken.append(net)
        else:
            pending.append(name)
    if pending:
        free = (s for s in cidr.subnets(new_prefix=prefix) if not any(s.overlaps(t) for t in taken))
        for name in pending:
            net = next(free, None)
            if net is None:
                problems.add(name, "podnet_pod_subnet", f"no free /{prefix} left in {cidr} to allocate")
                continue
            result[name] = net
            taken.append(net)
    return result


def plan_cluster(hosts: list[str], hostvars: dict[str, dict], leases: dict[str, str] | None = None,
                 vtep_macs: dict[str, str] | None = None) -> dict[str, Any]:
    """Return {"settings": ..., "nodes": {host: node_state}, "leases": {host: subnet}, "vtep_macs": {host: mac}}.
    `vtep_macs` are the VTEP MACs the nodes hold where they are not podnet's default (adopted from flanneld):
    a node's podnet_vtep_mac wins over them; "vtep_macs" returns the ones in use."""
    problems = _Problems([])
    leases = dict(leases or {})
    vtep_macs = dict(vtep_macs or {})
    if not hosts:
        raise PlanError(["group podnet_nodes: no hosts; add nodes with podnet_node_ip"])
    settings = _cluster_settings(hosts, hostvars, problems)
    cidr: ipaddress.IPv4Network | None = settings["podnet_cluster_cidr"]
    prefix: int | None = settings["podnet_subnet_prefix"]

    _check_hostnames(hosts, settings, problems)
    node_ips: dict[str, str] = {}
    node_nets: dict[str, ipaddress.IPv4Network] = {}
    explicit: dict[str, ipaddress.IPv4Network] = {}
    macs: dict[str, str] = {}
    kept_macs: dict[str, str] = {}
    for host in hosts:
        hv = hostvars[host]
        raw_ip = hv.get("podnet_node_ip")
        if raw_ip in (None, ""):
            problems.add(host, "podnet_node_ip", "is required (the node's underlay IPv4 address)")
        else:
            try:
                # "172.30.0.11/24" also tells podnet the node's underlay subnet (for CrossSubnet).
                iface = ipaddress.IPv4Interface(str(raw_ip))
                ip = iface.ip
                if iface.network.prefixlen < 32:
                    node_nets[host] = iface.network
                if ip.is_multicast or ip.is_unspecified or ip.is_loopback or str(ip).endswith(".255"):
                    problems.add(host, "podnet_node_ip", f"{ip} cannot be a node's unicast address")
                for other, other_ip in node_ips.items():
                    if other_ip == str(ip):
                        problems.add(host, "podnet_node_ip", f"{ip} is also the node IP of {other}")
                node_ips[host] = str(ip)
            except ValueError:
                problems.add(host, "podnet_node_ip", f"{raw_ip!r} is not an IPv4 address (optionally with "
                                                     "/prefix)")
        raw_subnet = hv.get("podnet_pod_subnet")
        if raw_subnet not in (None, ""):
            try:
                net = ipaddress.IPv4Network(str(raw_subnet), strict=True)
            except ValueError as exc:
                problems.add(host, "podnet_pod_subnet", f"{raw_subnet!r} is not an IPv4 network ({exc})")
            else:
                if cidr is not None and not net.subnet_of(cidr):
                    problems.add(host, "podnet_pod_subnet", f"{net} is outside podnet_cluster_cidr {cidr}")
                elif net.prefixlen > 30:
                    problems.add(host, "podnet_pod_subnet", f"{net} is too small for a pod subnet")
                for other, other_net in explicit.items():
                    if net.overlaps(other_net):
                        problems.add(host, "podnet_pod_subnet", f"{net} overlaps {other_net} of {other}")
                explicit[host] = net
        raw_mac = hv.get("podnet_vtep_mac")
        mac_var = "podnet_vtep_mac"
        if raw_mac in (None, "") and host in vtep_macs:
            raw_mac, mac_var = vtep_macs[host], VTEP_MACS_VAR
        if raw_mac not in (None, ""):
            mac = _check_mac(problems, host, mac_var, raw_mac)
            if mac:
                for other, other_mac in macs.items():
                    if other_mac == mac:
                        problems.add(host, mac_var, f"{mac} is also the VTEP MAC of {other}")
                macs[host] = mac
                if mac_var == VTEP_MACS_VAR:
                    kept_macs[host] = mac
        if hv.get(ADOPT_VAR) not in (None, "") and _bool(hv.get(ADOPT_VAR)) is None:
            problems.add(host, ADOPT_VAR, f"{hv[ADOPT_VAR]!r} is not a boolean")
        _check_paths(host, hv, problems)
        problems.extend(host, take_over_problems(hv.get(TAKE_OVER_VAR)))
        if hv.get("podnet_pod_sysctls") is not None:  # the calico role's default is safe
            problems.extend(host, check_pod_sysctls("podnet_pod_sysctls", hv["podnet_pod_sysctls"]))
        underlay = hv.get("podnet_underlay_interface")
        if underlay not in (None, ""):
            _check_ifname(problems, host, "podnet_underlay_interface", underlay)
        if tx_checksum_mode(hv.get("podnet_vxlan_tx_checksum_offload")) is None:
            problems.add(host, "podnet_vxlan_tx_checksum_offload",
                         f"{hv['podnet_vxlan_tx_checksum_offload']!r} must be auto, on or off")
        reflector = hv.get("podnet_bgp_route_reflector")
        if reflector not in (None, "") and _bool(reflector) is None:
            problems.add(host, "podnet_bgp_route_reflector", f"{reflector!r} is not a boolean")
        elif _bool(reflector) and not runs_bird(settings):
            problems.add(host, "podnet_bgp_route_reflector", "needs BGP with BIRD (podnet_backend calico-bgp, or "
                                                             "podnet_transport bgp, with podnet_calico_bgp: bird; "
                                                             "it is a BGP role)")
    direct_var = _profile(settings).direct_var
    if direct_var and settings.get(direct_var):
        for host in hosts:
            if host in node_ips and host not in node_nets:
                problems.add(host, "podnet_node_ip", f"{direct_var} needs the node's underlay prefix, "
                                                     f"e.g. {node_ips[host]}/24")

    subnets: dict[str, ipaddress.IPv4Network] = {}
    if cidr is not None and prefix is not None and not problems.items:
        subnets = _allocate(hosts, explicit, leases, cidr, prefix, problems)

    nodes: dict[str, dict[str, Any]] = {}
    if not problems.items:
        for host in hosts:
            macs.setdefault(host, vtep_mac_for(node_ips[host]))
        for host in hosts:
            nodes[host] = _node_state(host, hosts, hostvars, settings, node_ips, node_nets, subnets, macs,
                                      problems)
            _check_device_names(host, nodes[host], problems)
    _compile_policies(settings, nodes, problems)
    if problems.items:
        raise PlanError(problems.items)
    new_leases = {h: str(subnets[h]) for h in hosts if h not in explicit}
    public = {k: (str(v) if isinstance(v, ipaddress.IPv4Network) else v) for k, v in settings.items()}
    return {"settings": public, "nodes": nodes, "leases": new_leases, "vtep_macs": kept_macs}


def _compile_policies(settings: dict[str, Any], nodes: dict[str, dict], problems: _Problems) -> None:
    """Each node's policy chains (node["policy"]); policy problems are reported with all others."""
    try:
        if nodes and not problems.items:
            for host, compiled in policy.compile_policies(settings["podnet_backend"],
                                                          settings["podnet_network_policies"], nodes,
                                                          settings["podnet_pod_wiring"]).items():
                nodes[host]["policy"] = compiled
        else:
            policy.validate_policies(settings["podnet_backend"], settings["podnet_network_policies"],
                                     next(iter(nodes), "(all)"), settings["podnet_pod_wiring"])
    except PlanError as exc:
        problems.items.extend(exc.problems)


def _pods(host: str, hv: dict, subnet: ipaddress.IPv4Network, pod_mode: str,
          problems: _Problems) -> list[dict[str, Any]]:
    """Lab pods with addresses (free ones allocated), gateway and host-side veth name.  Bridge mode
    reserves the subnet's first address for cni0; routed (calico) pods use 169.254.1.1 as gateway."""
    bridge_gateway = next(subnet.hosts())
    gateway = bridge_gateway if pod_mode == "bridge" else ipaddress.IPv4Address(CALICO_GATEWAY)
    raw = hv.get("podnet_pods") or []
    if not isinstance(raw, list):
        problems.add(host, "podnet_pods", "must be a list of {name, address} mappings")
        return []
    netns_prefix = hv.get("podnet_pod_netns_prefix") or ""
    if netns_prefix:
        problems.extend(host, check_netns_name("podnet_pod_netns_prefix", netns_prefix, prefix=True))
    used = {bridge_gateway}
    pods: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not item.get("name"):
            problems.add(host, f"podnet_pods[{index}]", "each pod needs at least a name")
            continue
        name = str(item["name"])
        if not POD_NAME_RE.fullmatch(name) or len(name) > POD_NAME_MAX:
            shown = repr(name) if len(name) <= 2 * POD_NAME_MAX else f"{name[:20]!r}... ({len(name)} chars)"
            problems.add(host, f"podnet_pods[{index}].name", f"{shown} must be lowercase letters, digits "
                                                             f"and '-' (at most {POD_NAME_MAX})")
            continue  # later messages name the pod: only a valid name may appear in them
        if item.get("netns") not in (None, ""):
            problems.extend(host, check_netns_name(f"podnet_pods[{name}].netns", item["netns"]))
        if name in names:
            problems.add(host, f"podnet_pods[{index}].name", f"duplicate pod name {name!r}")
        names.add(name)
        address = None
        if item.get("address"):
            try:
                # the whole value: a suffix after '/' that is not a prefix length is not ignored
                address = ipaddress.IPv4Interface(str(item["address"])).ip
            except ValueError:
                problems.add(host, f"podnet_pods[{index}].address", f"{item['address']!r} is not an IPv4 "
                                                                    "address")
                continue
            if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
                problems.add(host, f"podnet_pods[{index}].address", f"{address} is not a usable address of "
                                                                    f"this node's subnet {subnet}")
                continue
            if address in used:
                problems.add(host, f"podnet_pods[{index}].address", f"{address} is already used on this node")
                continue
            used.add(address)
        pods.append({"name": name, "netns": item.get("netns") or f"{netns_prefix}{name}", "address": address,
                     "interface": item.get("interface") or "eth0",
                     "host_interface": item.get("host_interface"),
                     "labels": item.get("labels") or {}})  # checked with the policies (policy.py)
    free = (a for a in subnet.hosts() if a not in used)
    for pod in pods:
        if pod["address"] is None:
            pod["address"] = next(free, None)
            if pod["address"] is None:
                problems.add(host, "podnet_pods", f"subnet {subnet} has no free address for pod {pod['name']}")
                continue
            used.add(pod["address"])
        pod["address"] = f"{pod['address']}/{subnet.prefixlen}"
        pod["gateway"] = str(gateway)
        veth_name = host_veth_name if pod_mode == "bridge" else calico_veth_name
        pod["host_interface"] = pod["host_interface"] or veth_name(pod["netns"], pod["interface"])
        for field in ("interface", "host_interface"):
            _check_ifname(problems, host, f"podnet_pods[{pod['name']}].{field}", pod[field])
        if pod["interface"] == "lo":  # every namespace has its own lo: the pod's end would fail, half made
            problems.add(host, f"podnet_pods[{pod['name']}].interface",
                         "'lo' is the pod's loopback device; name the pod's end of its veth otherwise")
    return pods


def _node_state(host: str, hosts: list[str], hostvars: dict[str, dict], settings: dict[str, Any],
                node_ips: dict[str, str], node_nets: dict[str, ipaddress.IPv4Network],
                subnets: dict[str, ipaddress.IPv4Network], macs: dict[str, str],
                problems: _Problems) -> dict[str, Any]:
    backend = settings["podnet_backend"]
    profile = _profile(settings)
    cluster_cidr = str(settings["podnet_cluster_cidr"])
    subnet = subnets[host]
    hv = hostvars[host]
    underlay = hv.get("podnet_underlay_interface") or None
    gateway = next(subnet.hosts())
    # Render-time MTU; at apply time the modules derive it from the real underlay device instead.
    mtu = settings["podnet_mtu"] or (settings["podnet_underlay_mtu"] - profile.overhead)
    vtep_name = profile.vtep.format(vni=settings["podnet_vxlan_vni"]) if profile.encap == "vxlan" else None
    direct = bool(profile.direct_var and settings[profile.direct_var])
    peers = []
    for other in hosts:
        if other == host:
            continue
        same_l2 = direct and node_nets[other] == node_nets[host]
        peers.append({"name": other, "node_ip": node_ips[other], "subnet": str(subnets[other]),
                      "vtep_ip": str(subnets[other].network_address), "mac": macs[other],
                      "encapsulated": profile.encap is not None and not same_l2})
    state: dict[str, Any] = {
        "name": host,
        "backend": backend,
        "transport": profile.transport,
        # what the node's kernel must offer; the preflight checks it on every node before any changes
        "kernel_features": list(TRANSPORT_FEATURES.get(profile.transport, ())),
        "pod_mode": profile.pod_mode,
        "node_ip": node_ips[host],
        "subnet": str(subnet),
        "cluster_cidr": cluster_cidr,
        "underlay_interface": underlay,
        "mtu": settings["podnet_mtu"],
        "render_mtu": mtu,
        "bridge": {"name": settings["podnet_bridge"], "address": f"{gateway}/{subnet.prefixlen}"}
        if profile.pod_mode == "bridge" else None,
        "pods": _pods(host, hv, subnet, profile.pod_mode, problems),
        "sysctls": {"net.ipv4.ip_forward": 1},
        # what this node's inventory hands over to podnet although podnet did not create it
        "take_over": list(hv.get(TAKE_OVER_VAR) or []),
        "peers": peers,
        "vtep": None,
        "tunnel": None,
        "wireguard": None,
        "bgp": None,
        "routes": [],
    }
    encapsulated = [p for p in peers if p["encapsulated"]]
    if profile.encap == "vxlan":
        state["vtep"] = {
            "name": vtep_name,
            "vni": settings["podnet_vxlan_vni"],
            "port": settings["podnet_vxlan_port"],
            "local": node_ips[host],
            "underlay_interface": underlay,
            "mac": macs[host],
            "mtu": settings["podnet_mtu"],
            "address": f"{subnet.network_address}/32",
            "learning": False,
            "tx_checksum_offload": tx_checksum_mode(hv.get("podnet_vxlan_tx_checksum_offload")),
            # exactly the vxlan_fdb module's `peers` shape
            "peers": [{"vtep_ip": p["vtep_ip"], "mac": p["mac"], "node_ip": p["node_ip"]} for p in encapsulated],
        }
    elif profile.encap == "ipip":
        # calico configures the fallback tunl0 that loading ipip creates, with a /32 from the block.
        state["tunnel"] = {"name": IPIP_DEVICE, "mtu": settings["podnet_mtu"],
                           "address": f"{subnet.network_address}/32"}
    elif profile.encap == "udp":
        # an IPIP device of podnet's own with foo-over-UDP, whose local address receives the peers' datagrams
        state["tunnel"] = {"name": UDP_DEVICE, "mtu": settings["podnet_mtu"],
                           "address": f"{subnet.network_address}/32", "fou_port": settings["podnet_udp_port"],
                           "local": node_ips[host], "underlay_interface": underlay}
    elif profile.encap == "wireguard":
        # every peer's public key is made on that peer: the node role fills public_key in (wireguard_key)
        state["wireguard"] = {
            "name": profile.wireguard_device, "mtu": settings["podnet_mtu"], "local": node_ips[host],
            "listen_port": settings["podnet_wireguard_port"], "address": f"{subnet.network_address}/32",
            # each node's private key lives in a file there, made on the node (a folder per node where nodes share
            # a filesystem, as in the namespace lab)
            "key_dir": hv.get("podnet_wireguard_key_dir") or WIREGUARD_KEY_DIR,
            "key_epoch": settings["podnet_wireguard_key_epoch"],
            "peers": [{"name": p["name"], "public_key": None,
                       "endpoint": f"{p['node_ip']}:{settings['podnet_wireguard_port']}",
                       "allowed_ips": [p["subnet"]]} for p in encapsulated],
        }
    for peer in peers:
        if peer["encapsulated"] and profile.encap == "wireguard":
            # a route out of the device (scope link): WireGuard picks the peer by the allowed IPs
            route = {"dst": peer["subnet"], "via": None, "dev": profile.wireguard_device, "onlink": False}
        elif peer["encapsulated"] and profile.encap == "vxlan":
            route = {"dst": peer["subnet"], "via": peer["vtep_ip"], "dev": vtep_name, "onlink": True}
        elif peer["encapsulated"]:
            route = {"dst": peer["subnet"], "via": peer["node_ip"], "dev": state["tunnel"]["name"], "onlink": True}
        elif profile.transport == "bgp":
            route = {"dst": peer["subnet"], "via": peer["node_ip"], "dev": None, "onlink": False}
        else:  # host-gw, DirectRouting, CrossSubnet: plain route; the peer must share the L2 segment
            route = {"dst": peer["subnet"], "via": peer["node_ip"], "dev": underlay, "onlink": False}
        state["routes"].append(route)
    if profile.transport == "bgp":
        state["bgp"] = _bgp(host, hosts, hostvars, settings, node_ips, subnet)
        if state["bgp"]["mode"] == "bird":
            state["routes"] = []  # BIRD learns and installs them (proto bird)
    if profile.flannel_env:  # flannel runs the network (canal: flannel between the nodes, calico's wiring)
        state["iptables"] = flannel_ipmasq_rules(cluster_cidr, str(subnet)) if settings["podnet_ipmasq"] else []
        state["subnet_env"] = {
            "FLANNEL_NETWORK": cluster_cidr,
            "FLANNEL_SUBNET": f"{gateway}/{subnet.prefixlen}",
            "FLANNEL_MTU": mtu,
            "FLANNEL_IPMASQ": "true" if settings["podnet_ipmasq"] else "false",
        }
    else:
        state["iptables"] = []
        state["subnet_env"] = None
    if _bool(hv.get(ADOPT_VAR)):
        # adopting a node someone else programmed: what the backend makes may be there already, unmarked - the
        # devices and the routes to the other nodes are taken over in place (marked, routes replaced atomically)
        state["take_over"] = list(dict.fromkeys(state["take_over"] + backend_devices(state)
                                                + [r["dst"] for r in state["routes"]]))
    return state


def _bgp(host: str, hosts: list[str], hostvars: dict[str, dict], settings: dict[str, Any],
         node_ips: dict[str, str], subnet: ipaddress.IPv4Network) -> dict[str, Any]:
    """BGP sessions: a full mesh, or — once some nodes are route reflectors — clients peer only with
    the reflectors and reflectors with everyone (marking non-reflectors as their clients)."""
    reflectors = {h for h in hosts if _bool(hostvars[h].get("podnet_bgp_route_reflector")) is True}
    me_reflector = host in reflectors
    neighbors = []
    for other in hosts:
        if other == host:
            continue
        if reflectors and not me_reflector and other not in reflectors:
            continue
        neighbors.append({"name": other, "symbol": bird_symbol(other), "address": node_ips[other],
                          "rr_client": me_reflector and other not in reflectors})
    return {"mode": settings["podnet_calico_bgp"], "asn": settings["podnet_bgp_as"],
            "router_id": node_ips[host], "block": str(subnet), "route_reflector": me_reflector,
            "cluster_id": node_ips[host] if me_reflector else None, "neighbors": neighbors}


def flannel_ipmasq_rules(cluster_cidr: str, node_subnet: str) -> list[dict[str, Any]]:
    """flannel's masquerade and forward rules (seed 000), in flannel's order."""
    c = str(cluster_cidr)
    return [
        {"table": "nat", "chain": "POSTROUTING", "rule": ["-s", c, "-d", c, "-j", "RETURN"]},
        {"table": "nat", "chain": "POSTROUTING", "rule": ["-s", c, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"]},
        {"table": "nat", "chain": "POSTROUTING", "rule": ["!", "-s", c, "-d", node_subnet, "-j", "RETURN"]},
        {"table": "nat", "chain": "POSTROUTING", "rule": ["!", "-s", c, "-d", c, "-j", "MASQUERADE"]},
        {"table": "filter", "chain": "FORWARD", "rule": ["-s", c, "-j", "ACCEPT"]},
        {"table": "filter", "chain": "FORWARD", "rule": ["-d", c, "-j", "ACCEPT"]},
    ]
