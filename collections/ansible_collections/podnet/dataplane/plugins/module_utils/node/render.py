# Copyright: podnet contributors
# Apache License 2.0
"""A node's whole desired state as the commands a person would type on a fresh host.

The script is the node's run itself, rendered: the same steps in the same order with the same parameters
(node_apply.node_steps), each resource printing what it would create. So running it on a fresh node gives
the state a converge gives, and a converge afterwards changes nothing.
"""
from __future__ import annotations

import shlex
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import PODNET_RTPROTO
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.offload import kernel_version
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import comment_line, display_word
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_apply import render_node

# Without host access the underlay device cannot be looked up (DESIGN §4): the VXLAN device is rendered
# over eth0 unless the inventory names the node's underlay device.
RENDER_UNDERLAY = "eth0"
# Nor can the kernel: unless told the nodes' release, render for Debian 12's kernel line.
RENDER_KERNEL = "6.1"


class RenderError(ValueError):
    """A render input that cannot be rendered (the message says which and why)."""


def node_commands(node: dict[str, Any], kernel: str | None = None,
                  options: dict[str, Any] | None = None) -> list[str]:
    """The node's script lines: comment lines, then every command of the node's run, in order.

    `kernel`: the nodes' kernel release (`uname -r`), for the decisions that depend on it; None or ""
    renders for a kernel of RENDER_KERNEL. `options`: node_apply's options as the roles pass them
    (subnet_env, rt_protos_file, pod_sysctls, ...); omitted ones take node_apply's defaults."""
    if kernel and kernel_version(kernel) is None:
        raise RenderError(f"podnet_render_kernel: {kernel!r} is not a kernel release (like 6.1.0-28-amd64 "
                          "or 5.4.0)")
    if node.get("vtep") and not node["vtep"].get("underlay_interface"):
        underlay = node.get("underlay_interface") or RENDER_UNDERLAY
        node = dict(node, vtep=dict(node["vtep"], underlay_interface=underlay))
    shown = {key: display_word(node[key]) for key in ("name", "node_ip", "backend", "subnet")}
    header = [
        comment_line(f"podnet: {shown['name']} ({shown['node_ip']}), backend {shown['backend']}, "
                     f"pod subnet {shown['subnet']}"),
        comment_line(f"routes podnet installs are tagged 'proto {PODNET_RTPROTO}'; devices carry the alias "
                     "'podnet:*'; iptables rules the comment 'podnet:*'"),
    ]
    try:
        return header + render_node(node, kernel or RENDER_KERNEL, options)
    except ValueError as exc:
        raise RenderError(f"host {shown['name']}: {exc}") from None


def node_argvs(node: dict[str, Any], kernel: str | None = None,
               options: dict[str, Any] | None = None) -> list[list[str]]:
    """Every command of the node's script as the argument vector it stands for (shlex's reading of it)."""
    return [shlex.split(line) for line in node_commands(node, kernel, options) if not line.startswith("#")]
