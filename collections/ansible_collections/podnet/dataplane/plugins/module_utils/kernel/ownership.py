# Copyright: podnet contributors
# Apache License 2.0
"""How podnet tells what it owns from what it does not, before it changes anything.

A device is podnet's when its alias is podnet's (objects.is_owned_alias); a route in the node's namespace
when its protocol is podnet's (152, registered by name in rt_protos.d so that nobody else takes the
number by accident). Pod namespaces are podnet's as a whole: it creates them for the pods it is given.
Anything else with a name or destination podnet wants is someone else's: podnet refuses to change it,
naming it, unless the inventory hands it over explicitly (`podnet_take_over`, the modules' `take_over`).
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Collection, Iterable, Mapping

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    PODNET_RTPROTO,
    KObject,
    Link,
    Route,
    is_owned_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import check_interface_name

# Devices the kernel makes by itself that nobody configures but the tunnel's user: loading the ipip
# module creates tunl0, which calico (and so podnet's calico-ipip) configures in place.
KERNEL_FALLBACK_DEVICES = frozenset({("ipip", "tunl0")})

TAKE_OVER_VAR = "podnet_take_over"
RT_PROTO_NAME = "podnet"
RT_PROTOS_MARKER = "# podnet:rt_protos"
RT_PROTOS_FILE = "/etc/iproute2/rt_protos.d/podnet.conf"
RTPROT_BIRD = 12
_RT_PROTOS_LINE = re.compile(r"\s*(0x[0-9a-fA-F]+|\d+)\s+(\S+)")


def route_destination(text: str) -> str | None:
    """A route destination as podnet keys it ("10.244.1.0/24", "0.0.0.0/0"), or None if it is not one."""
    try:
        return str(ipaddress.IPv4Network("0.0.0.0/0" if text == "default" else text))
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError):
        return None


def take_over_problems(values: object, where: str = TAKE_OVER_VAR) -> list[str]:
    """`values` must be a list of device names and IPv4 route destinations (full matches)."""
    if values is None:
        return []
    if not isinstance(values, list):
        return [f"{where}: must be a list of device names and route destinations, got {values!r}"]
    problems = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            problems.append(f"{where}[{index}]: {value!r} must be a device name or a route destination")
        elif "/" in value or value == "default":
            if route_destination(value) is None:
                problems.append(f"{where}[{index}]: {value!r} is not an IPv4 route destination "
                                "(like 10.244.1.0/24, without host bits)")
        else:
            problems += check_interface_name(f"{where}[{index}]", value)
    return problems


class TakeOver:
    """What the inventory handed over to podnet: device names, and route destinations (normalised)."""

    def __init__(self, values: Iterable[str] | None = ()):
        self.devices = set()
        self.routes = set()
        for value in values or ():
            if "/" in value or value == "default":
                self.routes.add(route_destination(value) or value)
            else:
                self.devices.add(value)

    def __bool__(self) -> bool:
        return bool(self.devices or self.routes)


def foreign_conflicts(want: Iterable[KObject], have: Mapping[tuple, KObject],
                      take_over: Collection[str] | TakeOver | None = (),
                      also_owned_protos: Collection[int] = ()) -> list[str]:
    """Existing objects of the node's own namespace that podnet wants to change but does not own.
    `also_owned_protos`: route protocols that are podnet's too here (the routes of podnet's own BIRD)."""
    granted = take_over if isinstance(take_over, TakeOver) else TakeOver(take_over)
    problems: list[str] = []
    for obj in want:
        if getattr(obj, "netns", None) is not None:
            continue
        existing = have.get(obj.key())
        if isinstance(obj, Link) and isinstance(existing, Link):
            if is_owned_alias(existing.alias) or existing.name in granted.devices \
                    or (existing.kind, existing.name) in KERNEL_FALLBACK_DEVICES:
                continue
            alias = f"alias {existing.alias!r}" if existing.alias else "no alias"
            problems.append(
                f"device {existing.name} exists and is not podnet's (a {existing.kind or 'network'} device with "
                f"{alias}, not 'podnet:*'): podnet will not change or delete it. Give podnet's device "
                f"another name, remove {existing.name}, or hand it over with {TAKE_OVER_VAR}: [{existing.name}]")
        elif isinstance(obj, Route) and isinstance(existing, Route):
            if existing.proto == PODNET_RTPROTO or existing.proto in also_owned_protos \
                    or existing.dst in granted.routes:
                continue
            problems.append(
                f"route {existing.dst} exists and is not podnet's (proto {existing.proto}, not {PODNET_RTPROTO}"
                f" '{RT_PROTO_NAME}'): podnet will not replace it. Remove it, or hand it over with "
                f"{TAKE_OVER_VAR}: [{existing.dst}]")
    return problems


def podnets_fou_port(obj: KObject | None) -> int | None:
    """The FOU port `obj` makes podnet's: the one it sends to (its encap_dport) when it is a device of podnet's
    in the node's namespace; None for anything else. A FOU port carries no owner's mark, so the device that
    sends to it is the only sign of whose it is."""
    if isinstance(obj, Link) and obj.netns is None and is_owned_alias(obj.alias) and obj.ipip is not None:
        return obj.ipip.encap_dport
    return None


def foreign_fou_port(port: int | None, have: Mapping[tuple, KObject]) -> str | None:
    """The problem with a FOU port that exists and is not podnet's (podnets_fou_port of no device here);
    None when it is absent or podnet's."""
    if not port or ("fou", None, port) not in have:
        return None
    if any(podnets_fou_port(obj) == port for obj in have.values()):
        return None
    return (f"FOU port {port} exists and is not podnet's (no device of podnet's here sends to it): podnet will not "
            f"take it over or remove it. Remove it (ip fou del port {port}) or choose another port "
            "(podnet_udp_port)")


# --- the protocol number's name ------------------------------------------------------------------------


def rt_protos_text() -> str:
    return f"{RT_PROTOS_MARKER}\n{PODNET_RTPROTO}\t{RT_PROTO_NAME}\n"


def is_podnets_rt_protos(text: str | None) -> bool:
    return bool(text) and text.splitlines()[0] == RT_PROTOS_MARKER


def rt_proto_claims(path: str) -> list[tuple[str, str]]:
    """Where another name is given to podnet's protocol number: (file, name) for each, looking at the
    folder podnet's file goes into (its *.conf files) and the main table beside it (../rt_protos)."""
    folder = os.path.dirname(path)
    candidates = [os.path.join(os.path.dirname(folder), "rt_protos")]
    try:
        candidates += sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".conf"))
    except OSError:
        pass
    claims = []
    for candidate in candidates:
        if os.path.abspath(candidate) == os.path.abspath(path):
            continue
        try:
            with open(candidate, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            found = _RT_PROTOS_LINE.match(line.split("#", 1)[0])
            if found and int(found.group(1), 0) == PODNET_RTPROTO and found.group(2) != RT_PROTO_NAME:
                claims.append((candidate, found.group(2)))
    return claims
