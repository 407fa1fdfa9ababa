# Copyright: podnet contributors
# Apache License 2.0
"""Field checks shared by the planner (inventory variables) and the modules (arguments).

Each check returns a list of messages "<field>: <what is wrong>"; empty means valid.  Callers prefix
the host when there is one, so every error names both host and field.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

IFNAMSIZ = 15  # usable characters of a Linux interface name (IFNAMSIZ 16 incl. the NUL)
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.@-]+")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
# A network namespace is a file in /run/netns that `ip netns add/exec` names on a command line: letters,
# digits, '_', '.', '-', not starting with '.' or '-' (no option, no hidden or relative name).
NETNS_MAX = 128
POD_NAME_MAX = 63
_NETNS_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class PlanError(ValueError):
    """Invalid inventory.  `problems` lists every problem found, each naming host and variable."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("podnet: invalid inventory:\n  - " + "\n  - ".join(problems))


def check_interface_name(field: str, name: Any) -> list[str]:
    if not isinstance(name, str) or not name:
        return [f"{field}: interface name {name!r} must be a non-empty string"]
    if len(name) > IFNAMSIZ:
        return [f"{field}: interface name {name!r} is {len(name)} characters; Linux allows at most {IFNAMSIZ}"]
    if not _IFNAME_RE.fullmatch(name) or name in (".", ".."):
        return [f"{field}: interface name {name!r} contains characters Linux does not allow "
                "(use letters, digits, '_', '.', '-', '@')"]
    return []


def check_netns_name(field: str, name: Any, prefix: bool = False) -> list[str]:
    """A network namespace name (or, with prefix, the start of one: the rest is a pod name)."""
    if not isinstance(name, str) or not name:
        return [f"{field}: {name!r} must be a non-empty string"]
    limit = NETNS_MAX - POD_NAME_MAX if prefix else NETNS_MAX  # a prefix leaves room for the pod's name
    if len(name) > limit:
        return [f"{field}: {name[:20]!r}... is {len(name)} characters; at most {limit}"]
    if not _NETNS_RE.fullmatch(name):
        return [f"{field}: {name!r} must be letters, digits, '_', '.' and '-', not starting with '.' or '-'"]
    return []


def check_mac(field: str, mac: Any) -> list[str]:
    """A unicast, non-zero MAC: what a VTEP must have for peers' fdb entries to reach it."""
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
        return [f"{field}: {mac!r} is not a MAC address (expected six colon-separated hex bytes)"]
    mac = mac.lower()
    if mac == "ff:ff:ff:ff:ff:ff":
        return [f"{field}: {mac} is the broadcast address; a VTEP needs a unicast MAC"]
    if int(mac[:2], 16) & 0x01:
        return [f"{field}: {mac} is a multicast MAC; a VTEP needs a unicast MAC"]
    if mac == "00:00:00:00:00:00":
        return [f"{field}: 00:00:00:00:00:00 is not a usable MAC"]
    return []


def check_ipv4(field: str, value: Any) -> list[str]:
    try:
        ipaddress.IPv4Address(str(value))
    except ValueError:
        return [f"{field}: {value!r} is not an IPv4 address"]
    return []


def check_ipv4_network(field: str, value: Any, strict: bool = True) -> list[str]:
    try:
        ipaddress.IPv4Network(str(value), strict=strict)
    except ValueError as exc:
        return [f"{field}: {value!r} is not an IPv4 network ({exc})"]
    return []


# A per-interface sysctl as podnet_pod_sysctls names it: "{}" is the host-side pod interface. sysctl(8)
# turns the dots into a path under /proc/sys (and a '/' into a dot), so only this shape is safe: any other
# '/', '..' or empty part could reach files outside the interface's own settings.
_POD_SYSCTL_RE = re.compile(r"net\.ipv[46]\.(conf|neigh)\.\{\}\.[a-z0-9_]+")
_SYSCTL_VALUE_RE = re.compile(r"-?[0-9]{1,20}")


def check_pod_sysctls(field: str, value: Any) -> list[str]:
    """podnet_pod_sysctls: {"net.ipv4.conf.{}.<setting>": <integer>, ...} for the pods' host interfaces."""
    if not isinstance(value, dict):
        return [f"{field}: must be a mapping of sysctl names (with {{}} for the interface) to integers, "
                f"got {value!r:.80}"]
    problems = []
    for key, setting in value.items():
        if not isinstance(key, str) or not _POD_SYSCTL_RE.fullmatch(key):
            problems.append(f"{field}: {key!r:.80} must be net.ipv4.conf.{{}}.<setting> or "
                            "net.ipv4.neigh.{}.<setting> (or net.ipv6...; lowercase letters, digits, '_')")
        elif (isinstance(setting, bool) or not isinstance(setting, (int, str))
              or not _SYSCTL_VALUE_RE.fullmatch(str(setting))):
            problems.append(f"{field}: {key}: {setting!r:.80} must be an integer")
    return problems
