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
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.adoption import (
    ADOPT_OPTIONS,
    SUBNET_ENV_MAX,
)
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
    "adopt": {"type": "dict", "options": ADOPT_OPTIONS},
}
# What the action plugin can answer from one shell line (look_command); anything else needs the module.
ADDRESS_ONLY = ("node_ip", "underlay_interface", "kernel_features", "node_record", "adopt")
# /usr/sbin is not on a plain user's PATH on some systems; `ip` lives there on others.
ADDRESS_DUMP_COMMAND = 'PATH="$PATH:/usr/sbin:/sbin" ip -j -d address show'  # -d: the alias too
PROBE_SEPARATOR = "--- podnet kernel features ---"
# The address dump, then (only when it worked) the kernel probe: both fixed text.
LOOK_COMMAND = f"{ADDRESS_DUMP_COMMAND} && echo '{PROBE_SEPARATOR}' && {{ {FEATURE_PROBE_COMMAND}; }}"
ROUTES_SEPARATOR = "--- podnet routes ---"
ROUTE_DUMP_COMMAND = 'PATH="$PATH:/usr/sbin:/sbin" ip -j route show'
SUBNET_ENV_SEPARATOR = "--- podnet subnet.env ---"


def _head(path: str, limit: int) -> str:
    # the paths are the only text here that comes from the inventory: quoted
    return f"{{ head -c {limit + 1} -- {shlex.quote(path)} 2>/dev/null; true; }}"


def look_command(node_record: str | None, adopt: dict | None = None) -> str:
    """LOOK_COMMAND; when adopting, the main table's routes after ROUTES_SEPARATOR; then the node's record (its
    first RECORD_MAX bytes; nothing where there is none) after RECORD_SEPARATOR; then, when adopting, subnet.env
    after SUBNET_ENV_SEPARATOR. Fixed-format sections first: a file's text can hold anything."""
    command = LOOK_COMMAND
    if adopt:
        command += f" && echo '{ROUTES_SEPARATOR}' && {ROUTE_DUMP_COMMAND}"
    if node_record:
        command += f" && echo '{RECORD_SEPARATOR}' && {_head(node_record, RECORD_MAX)}"
    if adopt and adopt.get("subnet_env"):
        command += f" && echo '{SUBNET_ENV_SEPARATOR}' && {_head(adopt['subnet_env'], SUBNET_ENV_MAX)}"
    return command


@dataclass(frozen=True)
class Look:
    """look_command's output in its sections (None: not asked, or no file there)."""
    addresses: str
    probe: str
    routes: str | None = None
    record: str | None = None
    subnet_env: str | None = None


def split_look(stdout: str, node_record: str | None, adopt: dict | None = None) -> Look:
    """look_command's output in its sections; ValueError where the output is not look_command's."""
    if PROBE_SEPARATOR not in stdout:
        raise ValueError("no kernel probe in the output")
    addresses, rest = stdout.split(PROBE_SEPARATOR, 1)
    subnet_env = record = routes = None
    if adopt and adopt.get("subnet_env"):
        if SUBNET_ENV_SEPARATOR not in rest:
            raise ValueError("no subnet.env section in the output")
        rest, subnet_env = rest.rsplit(SUBNET_ENV_SEPARATOR + "\n", 1)
    if node_record:
        if RECORD_SEPARATOR not in rest:
            raise ValueError("no node record section in the output")
        rest, record = rest.split(RECORD_SEPARATOR + "\n", 1)
    if adopt:
        if ROUTES_SEPARATOR not in rest:
            raise ValueError("no routes section in the output")
        rest, routes = rest.split(ROUTES_SEPARATOR + "\n", 1)
    return Look(addresses, rest, routes, record or None, subnet_env or None)


class UnderlayProblem(Exception):
    """The node IP is not where the inventory says; the message is the user's error."""


@dataclass(frozen=True)
class Interface:
    name: str
    mtu: int
    alias: str | None
    addresses: tuple[str, ...]  # without prefix length
    mac: str | None = None
    networks: tuple[str, ...] = ()  # IPv4 addresses with their prefix length ("10.244.1.1/24")

    def seen(self) -> dict:
        """As adoption.found_on_node takes a link."""
        return {"name": self.name, "mac": self.mac, "networks": list(self.networks),
                "owned": is_owned_alias(self.alias)}


def interfaces_from_ip_json(text: str) -> list[Interface]:
    """`ip -j -d address show` -> interfaces in the kernel's order; ValueError when it is not that output."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("not a list of interfaces")
    interfaces = []
    for entry in data:
        if not entry:  # iproute2 prints {} for links it could not describe
            continue
        infos = entry.get("addr_info", [])
        addresses = tuple(str(a["local"]) for a in infos if "local" in a)
        networks = tuple(f"{a['local']}/{a['prefixlen']}" for a in infos
                         if a.get("family") == "inet" and "local" in a and "prefixlen" in a)
        interfaces.append(Interface(str(entry["ifname"]), int(entry["mtu"]), entry.get("ifalias"), addresses,
                                    entry.get("address"), networks))
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
