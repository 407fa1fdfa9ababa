# Copyright: podnet contributors
# Apache License 2.0
"""What each node knows of itself: the record a node's run writes on the node (its pod subnet, VTEP MAC,
backend, node IP, the cluster it belongs to), and what the controller makes of the records it reads back.

The nodes are the source of truth for their subnets. The controller's lease file is a copy: a controller that
lost it (or another checkout, which never had it) takes each node's subnet from the node's record before it
allocates anything; a lease file that gives a node another subnet than the node holds is refused, whole,
before any node changes - re-addressing a node is only ever the inventory's explicit choice
(podnet_pod_subnet), never the side effect of two controllers' files.

A record is podnet's when it is a JSON object whose "podnet" key is RECORD_MARK: anything else at the path
is not podnet's, and the node's run refuses to overwrite it."""
from __future__ import annotations

import ipaddress
import json
from typing import Any

# Where a node keeps its record by default: in /etc, so that it outlives a reboot.
NODE_RECORD_FILE = "/etc/podnet/node.json"
RECORD_MARK = "node-record"
RECORD_FORMAT = 1
# The separator the preflight's shell line prints before the record's text.
RECORD_SEPARATOR = "--- podnet node record ---"
# A record is a few hundred bytes; anything much larger at the path is not podnet's and is not read whole.
RECORD_MAX = 65536


def record_text(node: dict[str, Any]) -> str:
    """The record of a planned node (the plan's node state), as the node's run writes it."""
    record = {
        "podnet": RECORD_MARK,
        "format": RECORD_FORMAT,
        "host": node["name"],
        "node_ip": node["node_ip"],
        "cluster_cidr": node.get("cluster_cidr"),
        "subnet": node["subnet"],
        "backend": node["backend"],
        "vtep_mac": (node.get("vtep") or {}).get("mac"),
    }
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def parse_record(text: str | None) -> dict[str, Any] | None:
    """The record in `text` when it is podnet's, else None (no file, not JSON, or someone else's)."""
    if not text or len(text) > RECORD_MAX:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("podnet") != RECORD_MARK:
        return None
    return record


def is_podnets(text: str | None) -> bool:
    return parse_record(text) is not None


class LeaseConflict(Exception):
    """The lease file and the nodes disagree; the message names every disagreement and what to do."""


def _subnet(value: Any) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(value) if isinstance(value, str) else None
    except ValueError:
        return None


def reconcile(leases: dict[str, str], cluster: dict[str, Any], records: dict[str, dict[str, Any] | None],
              asked: list[str]) -> dict[str, str]:
    """The leases to plan with: the lease file's, plus every subnet a node holds (its record) that the file
    lacks. `cluster` is the plan made from the lease file alone; `records` the records read from the nodes in
    `asked` (None where a node has none). Raises LeaseConflict where the file gives a node another subnet than
    the node holds, gives one node's subnet to another, or lacks a node this run could not ask, and where a
    podnet_pod_subnet takes the subnet a node without one holds."""
    nodes = cluster["nodes"]
    cidr = ipaddress.IPv4Network(cluster["settings"]["podnet_cluster_cidr"])
    prefix = cluster["settings"]["podnet_subnet_prefix"]
    explicit = {host for host in nodes if host not in cluster["leases"]}  # podnet_pod_subnet: no lease
    merged = {host: subnet for host, subnet in leases.items() if host in nodes and host not in explicit}
    held: dict[str, str] = {}
    problems = []
    for host in nodes:
        record = records.get(host)
        if host in explicit or not record:
            continue
        subnet = _subnet(record.get("subnet"))
        # a record of another cluster layout (podnet_cluster_cidr or the prefix changed since) holds nothing here
        if subnet is None or subnet.prefixlen != prefix or not subnet.subnet_of(cidr):
            continue
        held[host] = str(subnet)
        lease = merged.get(host)
        if lease is None:
            merged[host] = str(subnet)
        elif _subnet(lease) != subnet:
            origin = record.get("source") or f"its record, written by a podnet run: backend {record.get('backend')}"
            problems.append(f"{host} holds {subnet} ({origin}), but the lease file gives it {lease}")
    by_subnet: dict[str, list[str]] = {}
    for host, subnet in merged.items():
        by_subnet.setdefault(str(_subnet(subnet) or subnet), []).append(host)
    for subnet, owners in sorted(by_subnet.items()):
        holders = [host for host in owners if held.get(host) == subnet]
        if len(owners) > 1 and holders:
            others = [host for host in owners if host not in holders]
            problems.append(f"{' and '.join(holders)} hold{'s' if len(holders) == 1 else ''} {subnet}, but the lease "
                            f"file gives it to {', '.join(others) or 'another node too'}")
    # an explicit subnet (podnet_pod_subnet) over one a node without one holds would move that node unasked
    for host, subnet in sorted(held.items()):
        for other in sorted(explicit):
            if ipaddress.IPv4Network(nodes[other]["subnet"]).overlaps(ipaddress.IPv4Network(subnet)):
                problems.append(f"{host} holds {subnet}, but podnet_pod_subnet gives {nodes[other]['subnet']} to {other}")
    unasked = [host for host in nodes if host not in explicit and host not in merged and host not in asked]
    if unasked:
        problems.append(f"the lease file has no pod subnet for {', '.join(unasked)}, and this run does not reach "
                        f"{'it' if len(unasked) == 1 else 'them'} to ask what {'it holds' if len(unasked) == 1 else 'they hold'}"
                        " (--limit): run once without --limit, or give "
                        f"{'it' if len(unasked) == 1 else 'them'} podnet_pod_subnet")
    if problems:
        raise LeaseConflict(
            "the pod subnet leases disagree with the nodes, so no node was changed: " + "; ".join(problems)
            + ". The nodes are the source of truth: a lease file of another controller or checkout, or an old copy, "
            "must not re-address them. Remove the wrong entries from the lease file (podnet_lease_file) and podnet "
            "takes each node's subnet from the node; to move a node to another subnet on purpose, set its "
            "podnet_pod_subnet (and that of a node whose subnet it takes).")
    return merged


def reconcile_macs(macs: dict[str, str], cluster: dict[str, Any], records: dict[str, dict[str, Any] | None],
                   explicit: set[str], default_mac: Any) -> dict[str, str]:
    """The VTEP MACs to plan with where they are not podnet's default for the node (default_mac(node_ip)): the
    controller's file (`macs`), plus the MAC a node holds (its record, or the VTEP an adoption found) that the file
    lacks. Nodes in `explicit` (podnet_vtep_mac) keep the inventory's. Raises LeaseConflict where the file gives a
    node another MAC than the node holds: every peer's fdb and neighbour entries point at the MAC the node holds."""
    nodes = cluster["nodes"]
    merged = {host: mac for host, mac in macs.items() if host in nodes and host not in explicit}
    problems = []
    for host, record in sorted(records.items()):
        held = (record or {}).get("vtep_mac")
        if host not in nodes or host in explicit or not isinstance(held, str) or not held:
            continue
        kept = merged.get(host)
        if kept is None:
            if held != default_mac(nodes[host]["node_ip"]):
                merged[host] = held
        elif kept != held:
            problems.append(f"{host}'s VTEP has MAC {held}, but the VTEP MAC file gives it {kept}")
    if problems:
        raise LeaseConflict(
            "the VTEP MACs disagree with the nodes, so no node was changed: " + "; ".join(problems)
            + ". Every peer reaches a node's VTEP by the MAC the node holds: remove the wrong entries from the VTEP "
            "MAC file (podnet_vtep_macs_file) and podnet takes each node's MAC from the node; to change a node's "
            "MAC on purpose, set its podnet_vtep_mac.")
    return merged
