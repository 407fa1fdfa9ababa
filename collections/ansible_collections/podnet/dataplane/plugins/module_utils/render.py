# Copyright: podnet contributors
# Apache License 2.0
"""A node's whole desired state as the commands a person would type on a fresh host."""
from __future__ import annotations

from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.builders import (
    iptables_argv,
    iptables_rule_args,
    pod_network_argvs,
    route_objects,
    sysctl_objects,
    tunnel_objects,
    vtep_objects,
    vxlan_peer_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.objects import PODNET_RTPROTO
from ansible_collections.podnet.dataplane.plugins.module_utils.offload import (
    TX_CHECKSUM,
    decide_tx_checksum,
    feature_argv,
    kernel_version,
    tx_checksum_comments,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.policy import policy_argvs
from ansible_collections.podnet.dataplane.plugins.module_utils.shell import (
    comment_line,
    display_word,
    shell_line,
)

# Without host access the underlay device cannot be looked up (DESIGN §4): assume eth0.
RENDER_UNDERLAY = "eth0"
# Nor can the kernel: unless told the nodes' release, render for Debian 12's kernel line.
RENDER_KERNEL = "6.1"


class RenderError(ValueError):
    """A render input that cannot be rendered (the message says which and why)."""


def _argvs(objs) -> list[list[str]]:
    return [argv for obj in objs for argv in obj.add_argvs()]


def _node_script(node: dict[str, Any], kernel: str | None) -> list[str | list[str]]:
    """The script body in order: comment lines (str, already one line each) and commands (argv lists)."""
    if kernel and kernel_version(kernel) is None:
        raise RenderError(f"podnet_render_kernel: {kernel!r} is not a kernel release (like 6.1.0-28-amd64 "
                          "or 5.4.0)")
    underlay = node.get("underlay_interface") or RENDER_UNDERLAY
    mtu = node["render_mtu"]
    shown = {key: display_word(node[key]) for key in ("name", "node_ip", "backend", "subnet")}
    script: list[str | list[str]] = [
        comment_line(f"podnet: {shown['name']} ({shown['node_ip']}), backend {shown['backend']}, "
                     f"pod subnet {shown['subnet']}"),
        comment_line(f"routes podnet installs are tagged 'proto {PODNET_RTPROTO}'; devices carry the alias "
                     "'podnet:*'"),
    ]
    script += _argvs(sysctl_objects(node["sysctls"]))
    if node.get("vtep"):
        vtep = dict(node["vtep"], underlay_interface=node["vtep"].get("underlay_interface") or underlay)
        script += _argvs(vtep_objects(vtep))
        script += _argvs(vxlan_peer_objects(vtep["name"], vtep["peers"]))
        decision = decide_tx_checksum(vtep.get("tx_checksum_offload") or "auto", kernel or RENDER_KERNEL)
        script += tx_checksum_comments(vtep["name"], decision)
        script.append(feature_argv(vtep["name"], TX_CHECKSUM, decision.enabled))
    if node.get("tunnel"):
        script += _argvs(tunnel_objects(dict(node["tunnel"], mtu=node["tunnel"].get("mtu") or mtu)))
    # calico-bgp routes name no device (as in seed 003); host-gw and direct routes use the underlay.
    fill_dev = node["backend"] != "calico-bgp"
    routes = [dict(r, dev=r.get("dev") or (underlay if fill_dev else None)) for r in node["routes"]]
    script += pod_network_argvs(node["bridge"], node["pods"], mtu, node["pod_mode"])
    script += _argvs(route_objects(routes))
    script += [iptables_argv(r["table"], "-A", r["chain"], iptables_rule_args(r)) for r in node["iptables"]]
    script += policy_argvs(node.get("policy"))
    return script


def node_argvs(node: dict[str, Any], kernel: str | None = None) -> list[list[str]]:
    """Every command of the node's script as the argument vector podnet means it to run, in order."""
    return [item for item in _node_script(node, kernel) if isinstance(item, list)]


def node_commands(node: dict[str, Any], kernel: str | None = None) -> list[str]:
    """The node's script lines: node_argvs joined for sh, with comment lines where they belong.

    `kernel`: the nodes' kernel release (`uname -r`), for the decisions that depend on it; None or ""
    renders for a kernel of RENDER_KERNEL."""
    return [shell_line(item) if isinstance(item, list) else item for item in _node_script(node, kernel)]
