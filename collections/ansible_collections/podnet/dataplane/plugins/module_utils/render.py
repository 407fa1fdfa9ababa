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
from ansible_collections.podnet.dataplane.plugins.module_utils.offload import (
    decide_tx_checksum,
    kernel_version,
    tx_checksum_lines,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.policy import policy_commands

# Without host access the underlay device cannot be looked up (DESIGN §4): assume eth0.
RENDER_UNDERLAY = "eth0"
# Nor can the kernel: unless told the nodes' release, render for Debian 12's kernel line.
RENDER_KERNEL = "6.1"


class RenderError(ValueError):
    """A render input that cannot be rendered (the message says which and why)."""


def _commands(objs) -> list[str]:
    return [cmd for obj in objs for cmd in obj.add_commands()]


def node_commands(node: dict[str, Any], kernel: str | None = None) -> list[str]:
    """`kernel`: the nodes' kernel release (`uname -r`), for the decisions that depend on it; None or ""
    renders for a kernel of RENDER_KERNEL."""
    if kernel and kernel_version(kernel) is None:
        raise RenderError(f"podnet_render_kernel: {kernel!r} is not a kernel release (like 6.1.0-28-amd64 "
                          "or 5.4.0)")
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
        decision = decide_tx_checksum(vtep.get("tx_checksum_offload") or "auto", kernel or RENDER_KERNEL)
        lines += tx_checksum_lines(vtep["name"], decision)
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
