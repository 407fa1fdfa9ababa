# Copyright: podnet contributors
# Apache License 2.0
"""Typed kernel objects: podnet's desired state is a list of these.

Each object knows its identity key (what makes two objects "the same thing" in the kernel), which of
its fields matter when comparing with what the kernel has, and how a person would type it with
`ip` / `bridge` / `sysctl`.  The netlink engine turns them into messages; rendering, check mode and
`--diff` print them.  Fields left as None are "don't care" in comparisons.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import (
    display_word,
    netns_argv,
    shell_line,
)

# Routes podnet installs carry this protocol number, so podnet can tell them from everyone else's
# (kernel = 2, boot = 3, static = 4, bird = 12, calico/felix = 80).  Shown by `ip route` as
# "proto 152"; /etc/iproute2/rt_protos.d/podnet.conf may name it.
PODNET_RTPROTO = 152

# Devices podnet created carry this prefix in their alias (IFLA_IFALIAS, `ip link show` "alias ..."),
# which is how a later run, `reset.yml` or `overridden` knows they are podnet's to change or remove.
OWNER_ALIAS = "podnet"

MAIN_TABLE = 254
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x04


# Devices podnet creates are created in this device group (IFLA_GROUP, `ip link show` "group 152"): the
# kernel takes a group with the RTM_NEWLINK that creates a device, but an alias only in a second message. A
# run killed between the two leaves a device without podnet's alias that is podnet's all the same; read
# back, such a device shows UNFINISHED_ALIAS, so the next run takes it as its own and finishes it.
PODNET_LINK_GROUP = 152


def owner_alias(role: str) -> str:
    return f"{OWNER_ALIAS}:{role}"


UNFINISHED_ALIAS = owner_alias("unfinished")


# The ipip module's fallback device, which the module itself makes in every namespace as it loads.
IPIP_FALLBACK = "tunl0"


def read_alias(alias: str | None, group: int | None) -> str | None:
    """A device's alias as podnet reads it: its own, or UNFINISHED_ALIAS for one podnet created and did not
    get to mark (no alias, podnet's device group)."""
    return alias if alias or group != PODNET_LINK_GROUP else UNFINISHED_ALIAS


def is_owned_alias(alias: str | None) -> bool:
    return bool(alias) and (alias == OWNER_ALIAS or alias.startswith(OWNER_ALIAS + ":"))


@dataclass(frozen=True)
class KObject:
    """Base of every kernel object.  `netns` is None for the node itself, or a pod namespace name."""

    def key(self) -> tuple:
        raise NotImplementedError

    # Fields that identify the object or only decide where it lives: not compared as attributes.
    identity_fields: ClassVar[tuple[str, ...]] = ()

    def differing_fields(self, have: KObject) -> list[str]:
        """Fields this (wanted) object specifies that the existing one does not match."""
        out = []
        for f in fields(self):
            if f.name in self.identity_fields or f.name == "netns":
                continue
            want = getattr(self, f.name)
            if want is None:
                continue
            if getattr(have, f.name) != want:
                out.append(f.name)
        return out

    # Commands are argument vectors; the *_commands strings are only ever shell_line of them, so a
    # value is one shell word whatever it holds.
    def add_argvs(self) -> list[list[str]]:
        raise NotImplementedError

    def delete_argvs(self) -> list[list[str]]:
        raise NotImplementedError

    def update_argvs(self, changed: list[str]) -> list[list[str]]:
        """Commands that bring an existing object in line; default: replace it in one step."""
        return self.delete_argvs() + self.add_argvs()

    def add_commands(self) -> list[str]:
        return [shell_line(argv) for argv in self.add_argvs()]

    def delete_commands(self) -> list[str]:
        return [shell_line(argv) for argv in self.delete_argvs()]

    def update_commands(self, changed: list[str]) -> list[str]:
        return [shell_line(argv) for argv in self.update_argvs(changed)]

    def describe(self, only: set[str] | None = None) -> str:
        """One line of state for --diff: identity first, then the attributes (only those in `only`)."""
        words = [type(self).__name__.lower()]
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if only is not None and f.name not in only and f.name not in self.identity_fields \
                    and f.name != "netns":
                continue
            # Quoted when needed, so a value cannot pass for another field or start another line.
            shown = f"({value.describe()})" if isinstance(value, KObject) else display_word(value)
            words.append(f"{f.name}={shown}")
        return " ".join(words)

    def specified(self) -> set[str]:
        return {f.name for f in fields(self) if getattr(self, f.name) is not None}

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"object": type(self).__name__.lower()}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                data[f.name] = value if not isinstance(value, KObject) else value.as_dict()
        return data


@dataclass(frozen=True)
class VxlanInfo(KObject):
    vni: int = 1
    port: int = 8472
    local: str | None = None
    underlay: str | None = None
    learning: bool = False

    def key(self) -> tuple:
        return ("vxlan",)


@dataclass(frozen=True)
class IpipInfo(KObject):
    """The tunnel settings of an IPIP device podnet creates (the fallback tunl0 has none podnet sets). With
    encap_dport the device puts each packet into UDP to that port (foo-over-UDP): the inner IPv4 packet is
    the datagram's payload, as flannel's udp backend sends it."""

    local: str | None = None
    underlay: str | None = None
    encap_dport: int | None = None
    encap_sport: int | None = None  # None: chosen per flow by the kernel
    encap_csum: bool = False

    def key(self) -> tuple:
        return ("ipip",)

    def argv(self) -> list[str]:
        """The words after `ip link add <name> type ipip`."""
        words = ["remote", "any", "local", self.local or "any"]
        if self.underlay:
            words += ["dev", self.underlay]
        if self.encap_dport:
            words += ["encap", "fou", "encap-sport", str(self.encap_sport or "auto"),
                      "encap-dport", str(self.encap_dport), "encap-csum" if self.encap_csum else "noencap-csum"]
        return words


@dataclass(frozen=True)
class Link(KObject):
    name: str = ""
    kind: str = ""  # vxlan | bridge | veth | ipip | wireguard
    mtu: int | None = None
    mac: str | None = None
    up: bool | None = True
    master: str | None = None
    alias: str | None = None
    vxlan: VxlanInfo | None = None
    ipip: IpipInfo | None = None  # an IPIP device of podnet's own (not the fallback tunl0)
    peer: str | None = None  # veth only: the peer's name
    peer_netns: str | None = None  # veth only: where the peer is created
    netns: str | None = None
    identity_fields = ("name", "kind", "peer", "peer_netns")

    def key(self) -> tuple:
        return ("link", self.netns, self.name)

    def needs_recreate(self, have: Link) -> bool:
        """VNI, port, local address and underlay device cannot be changed on a live VXLAN device; an IPIP
        device's tunnel settings are replaced with the device too (one step, as they were created)."""
        if self.kind != have.kind:
            return True
        if self.vxlan is not None and have.vxlan is not None:
            return self.vxlan != have.vxlan
        if self.ipip is not None:
            return self.ipip != have.ipip
        return False

    def add_argvs(self) -> list[list[str]]:
        prefix: list[list[str]] = []
        if self.kind == "vxlan" and self.vxlan is not None:
            v = self.vxlan
            argv = ["ip", "link", "add", self.name, "type", "vxlan", "id", str(v.vni)]
            if v.local:
                argv += ["local", v.local]
            if v.underlay:
                argv += ["dev", v.underlay]
            argv += ["dstport", str(v.port)]
            if not v.learning:
                argv.append("nolearning")
        elif self.kind == "ipip" and self.name == IPIP_FALLBACK:
            # loading ipip creates tunl0 in every namespace, so `ip tunnel add tunl0` (seed 003's command)
            # answers "File exists" on a real kernel: the module is loaded and its tunl0 configured
            argv = ["modprobe", "ipip"]
        elif self.kind == "ipip" and self.ipip is not None:
            # the kernel refuses a device with FOU encapsulation while the fou module is not loaded
            prefix = [["modprobe", "fou"]] if self.ipip.encap_dport else []
            argv = ["ip", "link", "add", self.name, "type", "ipip", *self.ipip.argv()]
        elif self.kind == "ipip":
            argv = ["ip", "tunnel", "add", self.name, "mode", "ipip"]
        elif self.kind == "veth":
            argv = ["ip", "link", "add", self.name, "type", "veth"]
            if self.peer:
                argv += ["peer", "name", self.peer]
            if self.peer_netns:
                argv += ["netns", self.peer_netns]
        else:
            argv = ["ip", "link", "add", self.name, "type", self.kind]
        return prefix + [netns_argv(self.netns, argv)] + self.update_argvs(
            [f for f in ("mac", "mtu", "master", "alias", "up") if getattr(self, f) is not None])

    def delete_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "link", "del", self.name])]

    def update_argvs(self, changed: list[str]) -> list[list[str]]:
        if "vxlan" in changed or "ipip" in changed or "kind" in changed:
            return self.delete_argvs() + self.add_argvs()
        words: list[str] = []
        if "mac" in changed and self.mac:
            words += ["address", self.mac]
        if "mtu" in changed and self.mtu:
            words += ["mtu", str(self.mtu)]
        if "master" in changed and self.master:
            words += ["master", self.master]
        if "alias" in changed and self.alias:
            words += ["alias", self.alias]
        if "up" in changed and self.up is not None:
            words.append("up" if self.up else "down")
        if not words:
            return []
        return [netns_argv(self.netns, ["ip", "link", "set", self.name, *words])]


@dataclass(frozen=True)
class Address(KObject):
    dev: str = ""
    cidr: str = ""  # "10.244.0.0/32"
    netns: str | None = None
    identity_fields = ("dev", "cidr")

    def key(self) -> tuple:
        return ("address", self.netns, self.dev, self.cidr)

    def add_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "addr", "add", self.cidr, "dev", self.dev])]

    def delete_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "addr", "del", self.cidr, "dev", self.dev])]


@dataclass(frozen=True)
class Neighbour(KObject):
    """A permanent IPv4 neighbour entry, e.g. a peer VTEP's X.0 address and MAC."""

    dev: str = ""
    dst: str = ""
    mac: str | None = None
    permanent: bool | None = True
    netns: str | None = None
    identity_fields = ("dev", "dst")

    def key(self) -> tuple:
        return ("neigh", self.netns, self.dev, self.dst)

    def add_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "neigh", "add", self.dst, "dev", self.dev, "lladdr", str(self.mac)])]

    def delete_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "neigh", "del", self.dst, "dev", self.dev])]

    def update_argvs(self, changed: list[str]) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "neigh", "replace", self.dst, "dev", self.dev,
                                        "lladdr", str(self.mac)])]


@dataclass(frozen=True)
class FdbEntry(KObject):
    """A permanent forwarding entry on a VXLAN device (NTF_SELF): peer VTEP MAC -> peer node IP."""

    dev: str = ""
    mac: str = ""
    dst: str | None = None
    netns: str | None = None
    identity_fields = ("dev", "mac")

    def key(self) -> tuple:
        return ("fdb", self.netns, self.dev, self.mac)

    def add_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["bridge", "fdb", "add", self.mac, "dst", str(self.dst), "dev", self.dev])]

    def delete_argvs(self) -> list[list[str]]:
        dst = ["dst", self.dst] if self.dst else []
        return [netns_argv(self.netns, ["bridge", "fdb", "del", self.mac, *dst, "dev", self.dev])]

    def update_argvs(self, changed: list[str]) -> list[list[str]]:
        return [netns_argv(self.netns, ["bridge", "fdb", "replace", self.mac, "dst", str(self.dst),
                                        "dev", self.dev])]


@dataclass(frozen=True)
class Route(KObject):
    """An IPv4 route in the main table.  Identity is the destination; everything else is compared."""

    dst: str = ""  # "10.244.2.0/24", "10.244.0.3/32" or "0.0.0.0/0"
    via: str | None = None
    dev: str | None = None
    onlink: bool | None = None
    proto: int | None = PODNET_RTPROTO
    netns: str | None = None
    identity_fields = ("dst",)

    def key(self) -> tuple:
        return ("route", self.netns, self.dst)

    def _spec(self) -> list[str]:
        net = ipaddress.ip_network(self.dst)
        if net.prefixlen == 0:
            dst = "default"
        elif net.prefixlen == 32:
            dst = str(net.network_address)
        else:
            dst = str(net)
        words = [dst]
        if self.via:
            words += ["via", self.via]
        if self.dev:
            words += ["dev", self.dev]
        if self.onlink:
            words.append("onlink")
        if self.proto is not None:
            # the marker is part of the route: a route typed without it would not be podnet's
            words += ["proto", str(self.proto)]
        return words

    def add_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "route", "add", *self._spec()])]

    def delete_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "route", "del", *self._spec()])]

    def update_argvs(self, changed: list[str]) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "route", "replace", *self._spec()])]


@dataclass(frozen=True)
class FouPort(KObject):
    """A foo-over-UDP receive port (`ip fou add port P ipproto 4`): UDP datagrams to it carry an IPv4 packet
    as their whole payload, which the kernel hands to the IPIP device of the outer addresses. A FOU port has
    no field for an owner's mark: it is podnet's when podnet's IPIP device sends to it (see ipip_tunnel)."""

    port: int = 0
    ipproto: int = 4
    netns: str | None = None
    identity_fields = ("port",)

    def key(self) -> tuple:
        return ("fou", self.netns, self.port)

    def add_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "fou", "add", "port", str(self.port), "ipproto", str(self.ipproto)])]

    def delete_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["ip", "fou", "del", "port", str(self.port)])]


@dataclass(frozen=True)
class WireguardDevice(KObject):
    """A WireGuard device's own settings (`wg set DEV listen-port P private-key FILE`). The private key is a
    file on the node, read only while it is written to the kernel: the object names the file and is compared
    by the public key that key gives (which the kernel reports), so no plan, diff, record or result holds the
    private key. The device itself is a Link of kind wireguard; these settings go with it."""

    dev: str = ""
    listen_port: int | None = None
    public_key: str | None = None
    private_key_file: str | None = None
    netns: str | None = None
    # the file is where the key is read from, not something the kernel holds: never compared
    identity_fields = ("dev", "private_key_file")

    def key(self) -> tuple:
        return ("wgdev", self.netns, self.dev)

    def add_argvs(self) -> list[list[str]]:
        words = ["listen-port", str(self.listen_port)] if self.listen_port is not None else []
        words += ["private-key", self.private_key_file] if self.private_key_file else []
        return [netns_argv(self.netns, ["wg", "set", self.dev, *words])] if words else []

    def delete_argvs(self) -> list[list[str]]:
        return []  # they go with the device

    def update_argvs(self, changed: list[str]) -> list[list[str]]:
        return self.add_argvs()


@dataclass(frozen=True)
class WireguardPeer(KObject):
    """A peer of a WireGuard device: its public key, where it is reached (`endpoint`, address:port) and the
    addresses it may send from and is sent to (`allowed_ips`, sorted: the kernel keeps no order)."""

    dev: str = ""
    public_key: str = ""
    endpoint: str | None = None
    allowed_ips: tuple[str, ...] | None = None
    netns: str | None = None
    identity_fields = ("dev", "public_key")

    def __post_init__(self) -> None:
        if self.allowed_ips is not None:  # a list from a record, in any order: the one form compared
            networks = sorted({ipaddress.ip_network(n, strict=False) for n in self.allowed_ips},
                              key=lambda n: (n.version, n.network_address, n.prefixlen))
            object.__setattr__(self, "allowed_ips", tuple(str(n) for n in networks))

    def key(self) -> tuple:
        return ("wgpeer", self.netns, self.dev, self.public_key)

    def add_argvs(self) -> list[list[str]]:
        words = ["endpoint", self.endpoint] if self.endpoint else []
        if self.allowed_ips is not None:
            words += ["allowed-ips", ",".join(self.allowed_ips)]
        return [netns_argv(self.netns, ["wg", "set", self.dev, "peer", self.public_key, *words])]

    def delete_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["wg", "set", self.dev, "peer", self.public_key, "remove"])]

    def update_argvs(self, changed: list[str]) -> list[list[str]]:
        return self.add_argvs()  # `wg set ... allowed-ips` replaces the peer's list


@dataclass(frozen=True)
class Sysctl(KObject):
    name: str = ""  # dotted, e.g. "net.ipv4.ip_forward"
    value: str = ""
    netns: str | None = None
    identity_fields = ("name",)

    def key(self) -> tuple:
        return ("sysctl", self.netns, self.name)

    @property
    def interface(self) -> str | None:
        """The device a per-interface setting belongs to (net.ipv4.conf.<if>.x, net.ipv4.neigh.<if>.x)."""
        parts = self.name.split(".")
        if len(parts) == 5 and parts[:2] == ["net", "ipv4"] and parts[2] in ("conf", "neigh"):
            return None if parts[3] in ("all", "default") else parts[3].replace("/", ".")
        return None

    @property
    def path(self) -> str:
        # sysctl(8) spells a dot inside a component (flannel.1) as "/": swap the two, as it does.
        return "/proc/sys/" + self.name.translate(str.maketrans("./", "/."))

    def add_argvs(self) -> list[list[str]]:
        return [netns_argv(self.netns, ["sysctl", "-w", f"{self.name}={self.value}"])]

    def delete_argvs(self) -> list[list[str]]:
        return []  # a sysctl is never removed; podnet leaves the value in place

    def update_argvs(self, changed: list[str]) -> list[list[str]]:
        return self.add_argvs()


def from_dict(data: dict[str, Any]) -> KObject:
    """The inverse of KObject.as_dict (used to re-apply persisted state at boot)."""
    classes = {cls.__name__.lower(): cls
               for cls in (VxlanInfo, IpipInfo, Link, Address, Neighbour, FdbEntry, Route, FouPort, WireguardDevice,
                           WireguardPeer, Sysctl)}
    values = {k: (from_dict(v) if isinstance(v, dict) else v) for k, v in data.items() if k != "object"}
    return classes[data["object"]](**values)
