# Copyright: podnet contributors
# Apache License 2.0
"""The node IP check of podnet.dataplane.preflight, on a list of interfaces however it was read: from a
netlink dump in the module, or from `ip -j -d address show` in the preflight action plugin (which then
needs no Python on the node - a module run costs ~0.3 CPU-s there, mostly Ansible's own imports)."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.features import (
    FEATURE_PROBE_COMMAND,
    FEATURES,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import is_owned_alias
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.node_record import (
    RECORD_MAX,
    RECORD_SEPARATOR,
)

PREFLIGHT_SPEC = {
    "node_ip": {"type": "str", "required": True},
    "underlay_interface": {"type": "str"},
    "paths": {"type": "list", "elements": "path", "default": []},
    "persist_dir": {"type": "path"},
    "iptables_prefix": {"type": "str"},
    "iptables_table": {"type": "str", "default": "filter"},
    "kernel_features": {"type": "list", "elements": "str", "default": [], "choices": list(FEATURES)},
    "node_record": {"type": "path"},
}
# What the action plugin can answer from one shell line (look_command); anything else needs the module.
ADDRESS_ONLY = ("node_ip", "underlay_interface", "kernel_features", "node_record")
# /usr/sbin is not on a plain user's PATH on some systems; `ip` lives there on others.
ADDRESS_DUMP_COMMAND = 'PATH="$PATH:/usr/sbin:/sbin" ip -j -d address show'  # -d: the alias too
PROBE_SEPARATOR = "--- podnet kernel features ---"
# The address dump, then (only when it worked) the kernel probe: both fixed text.
LOOK_COMMAND = f"{ADDRESS_DUMP_COMMAND} && echo '{PROBE_SEPARATOR}' && {{ {FEATURE_PROBE_COMMAND}; }}"


def look_command(node_record: str | None) -> str:
    """LOOK_COMMAND, then the node's record (its first RECORD_MAX bytes; nothing where there is none) after
    RECORD_SEPARATOR. The path is quoted: it is the only text here that comes from the inventory."""
    if not node_record:
        return LOOK_COMMAND
    return (f"{LOOK_COMMAND} && echo '{RECORD_SEPARATOR}' && "
            f"{{ head -c {RECORD_MAX + 1} -- {shlex.quote(node_record)} 2>/dev/null; true; }}")


def split_look(stdout: str, node_record: str | None) -> tuple[str, str, str | None]:
    """The address dump, the kernel probe and the record's text (None: none asked or none there) of
    look_command's output; ValueError where the output is not look_command's."""
    if PROBE_SEPARATOR not in stdout:
        raise ValueError("no kernel probe in the output")
    addresses, probe = stdout.split(PROBE_SEPARATOR, 1)
    if not node_record:
        return addresses, probe, None
    if RECORD_SEPARATOR not in probe:
        raise ValueError("no node record section in the output")
    probe, record = probe.split(RECORD_SEPARATOR + "\n", 1)
    return addresses, probe, record or None


class UnderlayProblem(Exception):
    """The node IP is not where the inventory says; the message is the user's error."""


@dataclass(frozen=True)
class Interface:
    name: str
    mtu: int
    alias: str | None
    addresses: tuple[str, ...]  # without prefix length


def interfaces_from_ip_json(text: str) -> list[Interface]:
    """`ip -j -d address show` -> interfaces in the kernel's order; ValueError when it is not that output."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("not a list of interfaces")
    interfaces = []
    for entry in data:
        if not entry:  # iproute2 prints {} for links it could not describe
            continue
        addresses = tuple(str(a["local"]) for a in entry.get("addr_info", []) if "local" in a)
        interfaces.append(Interface(str(entry["ifname"]), int(entry["mtu"]), entry.get("ifalias"), addresses))
    return interfaces


def look(interfaces: list[Interface], node_ip: str, named: str | None) -> dict:
    """Which interface holds the node IP (and its MTU), and the interfaces there are; UnderlayProblem when
    the node IP is on no interface, or not on the one the inventory names."""
    ip = node_ip.split("/")[0]
    holder = next((i for i in interfaces if ip in i.addresses), None)
    if holder is None:
        raise UnderlayProblem(f"podnet preflight: podnet_node_ip {ip} is not configured on any interface of "
                              "this node; nothing was changed on any node")
    if named and holder.name != named:
        raise UnderlayProblem(f"podnet preflight: podnet_underlay_interface {named} does not hold podnet_node_ip "
                              f"{ip} (it is on {holder.name}); nothing was changed on any node")
    return {
        "underlay_interface": holder.name,
        "underlay_mtu": holder.mtu,
        "links": sorted(i.name for i in interfaces),
        "owned_links": sorted(i.name for i in interfaces if is_owned_alias(i.alias)),
    }
