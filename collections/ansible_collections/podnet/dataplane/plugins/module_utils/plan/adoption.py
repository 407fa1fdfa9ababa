# Copyright: podnet contributors
# Apache License 2.0
"""Adopting a node that someone else programmed - flanneld, calico, or hands following seed 003: what the node
already runs (read by the preflight), and the subnet and VTEP MAC the controller makes of it.

A node programmed by flanneld keeps its subnet in subnet.env (FLANNEL_SUBNET, the bridge's gateway address with
the subnet's prefix), gives its VTEP (flannel.1) the subnet's network address as a /32 and the bridge (cni0) the
gateway address; a calico-style node routes each pod's /32 to its veth. Each of these tells the node's subnet
when the plan's subnet size is known; every one found must tell the same. The VTEP's MAC - random, flanneld
chose it - is what every peer's fdb and neighbour entries point at: podnet keeps it, so that no peer has to
change anything while the node changes hands.

Adoption is only ever asked for (podnet_adopt, playbooks/adopt.yml): an ordinary run refuses to touch what is not
podnet's."""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.ownership import KERNEL_FALLBACK_DEVICES
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.node_record import LeaseConflict

# The preflight's option: what to look at on a node that may be adopted.
ADOPT_OPTIONS = {
    "vtep": {"type": "str"},
    "bridge": {"type": "str"},
    "subnet_env": {"type": "path"},
}
# subnet.env is four short lines; anything much larger is not flannel's and is not read whole.
SUBNET_ENV_MAX = 4096
_ENV_LINE = re.compile(r"(?P<key>FLANNEL_[A-Z0-9_]+)=(?P<value>[^\s]*)")
MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def subnet_env_values(text: str | None) -> dict[str, str] | None:
    """The FLANNEL_* assignments of a subnet.env (None: no file there, or not one)."""
    if not text or len(text) > SUBNET_ENV_MAX:
        return None
    values = {}
    for line in text.splitlines():
        found = _ENV_LINE.fullmatch(line.strip())
        if found:
            values[found["key"]] = found["value"]
    return values or None


def found_on_node(links: list[dict[str, Any]], routes: list[dict[str, Any]], subnet_env: str | None,
                  adopt: dict[str, Any]) -> dict[str, Any]:
    """What an adoption looks at, from the node's links ({"name", "mac", "networks": ["a.b.c.d/len"], "owned"}),
    its main table's routes ({"dst", "dev"}) and its subnet.env text: the VTEP and the bridge named in `adopt`
    (their MAC and addresses), subnet.env's values, and the host routes (/32) to devices that are not podnet's
    (a calico-style node's pods). The same whether the preflight read `ip -j` output or netlink."""
    by_name = {link["name"]: link for link in links}

    def device(name: str | None) -> dict[str, Any] | None:
        link = by_name.get(name) if name else None
        if link is None:
            return None
        return {"name": name, "mac": link.get("mac"), "networks": sorted(link.get("networks") or [])}

    podnets = {link["name"] for link in links if link.get("owned")}
    pod_routes = sorted({route["dst"].split("/")[0] for route in routes
                         if route.get("dst", "").endswith("/32") and route.get("dev") and route["dev"] not in podnets
                         and route["dev"] not in (adopt.get("vtep"), adopt.get("bridge"))})
    return {"vtep": device(adopt.get("vtep")), "bridge": device(adopt.get("bridge")),
            "subnet_env": subnet_env_values(subnet_env), "pod_routes": pod_routes}


def routes_from_ip_json(text: str) -> list[dict[str, Any]]:
    """`ip -j route show` (the main table) as found_on_node's routes; ValueError when it is not that output."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("not a list of routes")
    routes = []
    for entry in data:
        dst = entry.get("dst") if isinstance(entry, dict) else None
        if not dst or entry.get("type", "unicast") != "unicast":
            continue
        routes.append({"dst": dst if "/" in dst or dst == "default" else f"{dst}/32", "dev": entry.get("dev")})
    return routes


def _same_size(what: str, network: ipaddress.IPv4Network, prefix: int, problems: list[str]) -> None:
    if network.prefixlen != prefix:
        problems.append(f"{what} is a /{network.prefixlen}, but podnet_subnet_prefix is {prefix}")


def adopted_record(host: str, found: dict[str, Any] | None, cidr: ipaddress.IPv4Network, prefix: int
                   ) -> dict[str, Any] | None:
    """The record of what `host` holds, made from what the preflight found there (None: nothing to adopt - no
    subnet.env, VTEP, bridge or pod route in the cluster CIDR). Raises LeaseConflict, naming each source, where
    what it found disagrees, lies outside the cluster CIDR or has another size than the plan's subnets."""
    if not found:
        return None
    problems: list[str] = []
    told: dict[str, ipaddress.IPv4Network] = {}
    env = found.get("subnet_env") or {}
    if env.get("FLANNEL_SUBNET"):
        try:
            network = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network
        except ValueError:
            problems.append(f"subnet.env's FLANNEL_SUBNET {env['FLANNEL_SUBNET']!r} is not an address/prefix")
        else:
            _same_size(f"subnet.env's FLANNEL_SUBNET {env['FLANNEL_SUBNET']}", network, prefix, problems)
            told["subnet.env"] = network
    vtep = found.get("vtep") or {}
    for address in vtep.get("networks") or []:
        ip = ipaddress.IPv4Interface(address).ip
        if ip in cidr:  # flannel gives its VTEP the subnet's network address
            told[f"{vtep['name']}'s address {address}"] = ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False)
    bridge = found.get("bridge") or {}
    for address in bridge.get("networks") or []:
        network = ipaddress.IPv4Interface(address).network
        if network.network_address in cidr:
            _same_size(f"{bridge['name']}'s address {address}", network, prefix, problems)
            told[f"{bridge['name']}'s address {address}"] = network
    pods = sorted({ipaddress.IPv4Network(f"{dst}/{prefix}", strict=False) for dst in found.get("pod_routes") or []
                   if ipaddress.IPv4Address(dst) in cidr})
    for network in pods:
        routed = [dst for dst in found["pod_routes"] if ipaddress.IPv4Address(dst) in network]
        told[f"the routes to pods {', '.join(routed)}"] = network
    if not told and not problems:
        return None
    for what, network in told.items():
        if not network.subnet_of(cidr):
            problems.append(f"{what} lies outside podnet_cluster_cidr {cidr}")
    if len(set(told.values())) > 1:
        problems.append("what the node runs tells different subnets: "
                        + "; ".join(f"{what}: {network}" for what, network in told.items()))
    if problems:
        raise LeaseConflict(f"{host} cannot be adopted, so no node was changed: " + "; ".join(problems)
                            + ". Give the node podnet_pod_subnet (and podnet_vtep_mac) to say what podnet takes over, "
                            "or fix the node first.")
    mac = vtep.get("mac")
    return {"subnet": str(next(iter(told.values()))), "vtep_mac": mac if mac and MAC.fullmatch(mac) else None,
            "cluster_cidr": str(cidr), "source": "adopted: " + ", ".join(told)}


def backend_devices(node: dict[str, Any]) -> list[str]:
    """The devices the node's backend makes, by name: VTEP, bridge, tunnel, WireGuard device."""
    return [part["name"] for part in (node.get("vtep"), node.get("bridge"), node.get("tunnel"), node.get("wireguard"))
            if part]


def foreign_devices(node: dict[str, Any], look: dict[str, Any]) -> list[str]:
    """The devices the node's plan makes that exist on the node (as the preflight saw it) without podnet's mark and
    are not handed over (podnet_take_over, or adopting): the node's run would refuse them - found here, before the
    controller writes any lease or any node changes, so that an ordinary run on a cluster someone else programmed
    changes no node at all."""
    links, owned = set(look.get("links") or []), set(look.get("owned_links") or [])
    fallback = {name for _kind, name in KERNEL_FALLBACK_DEVICES}
    return [name for name in backend_devices(node)
            if name in links and name not in owned and name not in node.get("take_over", []) and name not in fallback]


def refuse_foreign(cluster: dict[str, Any], looks: dict[str, dict[str, Any]]) -> None:
    """LeaseConflict naming every node's foreign_devices, with the way to adopt them."""
    found = {host: foreign_devices(cluster["nodes"][host], look) for host, look in sorted(looks.items())
             if host in cluster["nodes"]}
    found = {host: names for host, names in found.items() if names}
    if found:
        raise LeaseConflict(
            "some nodes run devices podnet would make but did not (no 'podnet:*' alias), so no node was changed: "
            + "; ".join(f"{host}: {', '.join(names)}" for host, names in found.items())
            + ". A cluster that flanneld, calico or a script set up is taken over with playbooks/adopt.yml (podnet_adopt:"
            " true), which keeps the subnet and VTEP MAC each node holds; a single device is handed over with "
            "podnet_take_over; or remove them.")
