# Copyright: podnet contributors
# Apache License 2.0
"""A node's whole desired state as the commands a person would type on a fresh host."""
from __future__ import annotations

from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.builders import (
    iptables_command,
    iptables_rule_args,
    pod_network_commands,
    route_objects,
    sysctl_objects,
    tunnel_objects,
    vtep_objects,
    vxlan_peer_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.objects import PODNET_RTPROTO
from ansible_collections.podnet.dataplane.plugins.module_utils.policy import policy_commands

# Without host access the underlay device cannot be looked up (DESIGN §4): assume eth0.
RENDER_UNDERLAY = "eth0"


def _commands(objs) -> list[str]:
    return [cmd for obj in objs for cmd in obj.add_commands()]


def node_commands(node: dict[str, Any]) -> list[str]:
    underlay = node.get("underlay_interface") or RENDER_UNDERLAY
    mtu = node["render_mtu"]
    lines = [
        f"# podnet: {node['name']} ({node['node_ip']}), backend {node['backend']}, pod subnet {node['subnet']}",
        f"# routes podnet installs are tagged 'proto {PODNET_RTPROTO}'; devices carry the alias 'podnet:*'",
    ]
    lines += _commands(sysctl_objects(node["sysctls"]))
    if node.get("vtep"):
        vtep = dict(node["vtep"], underlay_interface=node["vtep"].get("underlay_interface") or underlay)
        lines += _commands(vtep_objects(vtep))
        lines += _commands(vxlan_peer_objects(vtep["name"], vtep["peers"]))
    if node.get("tunnel"):
        lines += _commands(tunnel_objects(dict(node["tunnel"], mtu=node["tunnel"].get("mtu") or mtu)))
    # calico-bgp routes name no device (as in seed 003); host-gw and direct routes use the underlay.
    fill_dev = node["backend"] != "calico-bgp"
    routes = [dict(r, dev=r.get("dev") or (underlay if fill_dev else None)) for r in node["routes"]]
    lines += pod_network_commands(node["bridge"], node["pods"], mtu, node["pod_mode"])
    lines += _commands(route_objects(routes))
    lines += [iptables_command(r["table"], "-A", r["chain"], iptables_rule_args(r)) for r in node["iptables"]]
    lines += policy_commands(node.get("policy"))
    return lines
