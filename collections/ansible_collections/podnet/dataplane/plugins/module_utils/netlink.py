# Copyright: podnet contributors
# Apache License 2.0
"""The one engine: read kernel state (one dump per object kind), diff it against wanted objects, and
apply only the difference over netlink (pyroute2 IPRoute; NDB is far too slow at scale).

Every module — and every backend — reaches the kernel through `Engine`.  Check mode, `--diff` and
the `rendered` state use `plan()` and never call `apply()`.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ansible_collections.podnet.dataplane.plugins.module_utils.objects import (
    MAIN_TABLE,
    NUD_PERMANENT,
    RTNH_F_ONLINK,
    Address,
    FdbEntry,
    KObject,
    Link,
    Neighbour,
    Route,
    Sysctl,
    VxlanInfo,
)

try:
    from pyroute2 import IPRoute, NetNS
    from pyroute2.netlink.exceptions import NetlinkError

    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError as exc:  # reported by the modules through missing_required_lib
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = exc
    NetlinkError = OSError  # type: ignore[misc,assignment]

AF_BRIDGE = 7
IFF_UP = 0x1
NTF_SELF = 0x02
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1

# Apply order: removals innermost-first, then creation outermost-first, so every object's
# dependencies (device, address for onlink/nexthop reachability) exist when it is written.
_PHASES = {
    ("delete", Route): 0,
    ("delete", FdbEntry): 1,
    ("delete", Neighbour): 1,
    ("delete", Address): 2,
    ("delete", Link): 3,
    ("add", Link): 4,
    ("update", Link): 4,
    ("add", Sysctl): 5,
    ("update", Sysctl): 5,
    ("add", Address): 6,
    ("add", Neighbour): 7,
    ("update", Neighbour): 7,
    ("add", FdbEntry): 7,
    ("update", FdbEntry): 7,
    ("add", Route): 8,
    ("update", Route): 8,
}
_LINK_KIND_ORDER = {"bridge": 0, "vxlan": 1, "veth": 2}


class EngineError(Exception):
    """A kernel operation failed; the message names the object and the command it corresponds to."""


@dataclass
class Change:
    op: str  # add | update | delete
    want: KObject | None
    have: KObject | None
    fields: list[str] = field(default_factory=list)

    @property
    def obj(self) -> KObject:
        return self.want if self.want is not None else self.have  # type: ignore[return-value]

    @property
    def commands(self) -> list[str]:
        if self.op == "add":
            return self.obj.add_commands()
        if self.op == "delete":
            return self.obj.delete_commands()
        return self.obj.update_commands(self.fields)

    def sort_key(self) -> tuple:
        phase = _PHASES[(self.op, type(self.obj))]
        kind_rank = _LINK_KIND_ORDER.get(getattr(self.obj, "kind", ""), 9)
        return (phase, kind_rank)

    def as_dict(self) -> dict:
        out = {"op": self.op, "object": self.obj.as_dict(), "commands": self.commands}
        if self.fields:
            out["fields"] = self.fields
        return out


@dataclass
class KernelState:
    """What one namespace holds, keyed exactly like the wanted objects."""

    objects: dict[tuple, KObject] = field(default_factory=dict)
    link_index: dict[str, int] = field(default_factory=dict)

    def of_type(self, kind: type) -> list[KObject]:
        return [o for o in self.objects.values() if isinstance(o, kind)]

    def device_holding(self, ip: str) -> Link | None:
        """The link that has `ip` as one of its addresses (needs an Address dump)."""
        for address in self.of_type(Address):
            if address.cidr.split("/")[0] == ip:
                return self.objects.get(("link", address.netns, address.dev))
        return None


def plan(want: Iterable[KObject], have: KernelState,
         purge: Callable[[KObject], bool] | None = None) -> list[Change]:
    """Compare wanted objects with the kernel; `purge` selects existing objects to remove when they
    are not wanted (only ever podnet-owned ones — the callers' predicates guarantee that)."""
    changes: list[Change] = []
    wanted: dict[tuple, KObject] = {}
    for obj in want:
        wanted[obj.key()] = obj
    for key, obj in wanted.items():
        existing = have.objects.get(key)
        if existing is None:
            changes.append(Change("add", obj, None))
            continue
        diff = obj.differing_fields(existing)
        if isinstance(obj, Link) and obj.needs_recreate(existing):  # type: ignore[arg-type]
            changes.append(Change("delete", None, existing))
            changes.append(Change("add", obj, None))
        elif diff:
            changes.append(Change("update", obj, existing, diff))
    if purge is not None:
        for key, existing in have.objects.items():
            if key not in wanted and purge(existing):
                changes.append(Change("delete", None, existing))
    changes.sort(key=Change.sort_key)
    return changes


def read_sysctls(names: Iterable[str], netns: str | None = None) -> dict[tuple, Sysctl]:
    """Current values from /proc/sys of the namespace this process is in; missing ones are skipped."""
    found: dict[tuple, Sysctl] = {}
    for name in names:
        try:
            with open(Sysctl(name=name).path, encoding="ascii") as handle:
                obj = Sysctl(name=name, value=handle.read().strip(), netns=netns)
        except FileNotFoundError:
            continue
        found[obj.key()] = obj
    return found


def write_sysctl(obj: Sysctl) -> None:
    with open(obj.path, "w", encoding="ascii") as handle:
        handle.write(f"{obj.value}\n")


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


class Engine:
    """Reads and writes one network namespace (None = the one this process runs in)."""

    def __init__(self, netns: str | None = None):
        if not HAS_PYROUTE2:
            raise EngineError(f"pyroute2 is required on the target: {PYROUTE2_IMPORT_ERROR}")
        self.netns = netns
        self._ipr = NetNS(netns) if netns else IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- reading
    def gather(self, kinds: set[type], sysctls: Iterable[str] = ()) -> KernelState:
        """One dump per requested object kind.  Links are always read (names <-> indexes)."""
        state = KernelState()
        names: dict[int, str] = {}
        links = list(self._ipr.get_links())
        for msg in links:
            names[msg["index"]] = msg.get_attr("IFLA_IFNAME")
        for msg in links:
            link = self._parse_link(msg, names)
            state.objects[link.key()] = link
            state.link_index[link.name] = msg["index"]
        if Address in kinds:
            for msg in self._ipr.get_addr(family=socket.AF_INET):
                dev = names.get(msg["index"])
                addr = _attr(msg, "IFA_LOCAL") or _attr(msg, "IFA_ADDRESS")
                if dev and addr:
                    obj = Address(dev=dev, cidr=f"{addr}/{msg['prefixlen']}", netns=self.netns)
                    state.objects[obj.key()] = obj
        if Neighbour in kinds:
            for msg in self._ipr.get_neighbours(family=socket.AF_INET):
                dev = names.get(msg["ifindex"])
                dst = _attr(msg, "NDA_DST")
                if dev and dst:
                    obj = Neighbour(dev=dev, dst=dst, mac=_attr(msg, "NDA_LLADDR"),
                                    permanent=bool(msg["state"] & NUD_PERMANENT), netns=self.netns)
                    state.objects[obj.key()] = obj
        if FdbEntry in kinds:
            vxlan_indexes = {state.link_index[o.name] for o in state.of_type(Link) if o.kind == "vxlan"}
            for msg in self._ipr.fdb("dump"):
                if msg["ifindex"] not in vxlan_indexes or not msg["flags"] & NTF_SELF:
                    continue
                mac = _attr(msg, "NDA_LLADDR")
                if not mac:
                    continue
                obj = FdbEntry(dev=names[msg["ifindex"]], mac=mac, dst=_attr(msg, "NDA_DST"),
                               netns=self.netns)
                state.objects[obj.key()] = obj
        if Route in kinds:
            for msg in self._ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
                route = self._parse_route(msg, names)
                if route is not None:
                    state.objects[route.key()] = route
        state.objects.update(read_sysctls(sysctls, self.netns))
        return state

    def _parse_link(self, msg, names: dict[int, str]) -> Link:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        vxlan = None
        if kind == "vxlan":
            data = info.get_attr("IFLA_INFO_DATA")
            vxlan = VxlanInfo(
                vni=data.get_attr("IFLA_VXLAN_ID"),
                port=data.get_attr("IFLA_VXLAN_PORT"),
                local=data.get_attr("IFLA_VXLAN_LOCAL"),
                underlay=names.get(data.get_attr("IFLA_VXLAN_LINK") or 0),
                learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            )
        master = msg.get_attr("IFLA_MASTER")
        return Link(
            name=msg.get_attr("IFLA_IFNAME"),
            kind=kind or "device",
            mtu=msg.get_attr("IFLA_MTU"),
            mac=msg.get_attr("IFLA_ADDRESS"),
            up=bool(msg["flags"] & IFF_UP),
            master=names.get(master) if master else None,
            alias=msg.get_attr("IFLA_IFALIAS"),
            vxlan=vxlan,
            netns=self.netns,
        )

    def _parse_route(self, msg, names: dict[int, str]) -> Route | None:
        if msg["type"] != RTN_UNICAST or msg.get_attr("RTA_MULTIPATH"):
            return None
        table = msg.get_attr("RTA_TABLE") or msg["table"]
        if table != MAIN_TABLE:
            return None
        dst = msg.get_attr("RTA_DST") or "0.0.0.0"
        oif = msg.get_attr("RTA_OIF")
        return Route(
            dst=f"{dst}/{msg['dst_len']}",
            via=msg.get_attr("RTA_GATEWAY"),
            dev=names.get(oif) if oif else None,
            onlink=bool(msg["flags"] & RTNH_F_ONLINK),
            proto=msg["proto"],
            netns=self.netns,
        )

    # ---------------------------------------------------------------- writing
    def apply(self, changes: list[Change], state: KernelState) -> None:
        """Write the changes in order; a failure names the object and the equivalent command."""
        for change in changes:
            try:
                self._apply_one(change, state)
            except NetlinkError as exc:
                if change.op == "delete" and exc.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
                    continue  # already gone (e.g. routes removed together with their device)
                raise EngineError(f"{'; '.join(change.commands)}: {exc}") from exc
            except OSError as exc:
                raise EngineError(f"{'; '.join(change.commands)}: {exc}") from exc

    def _index(self, state: KernelState, name: str) -> int:
        if name not in state.link_index:
            found = self._ipr.link_lookup(ifname=name)
            if not found:
                raise EngineError(f"device {name} does not exist")
            state.link_index[name] = found[0]
        return state.link_index[name]

    def _apply_one(self, change: Change, state: KernelState) -> None:
        obj = change.obj
        ipr = self._ipr
        if isinstance(obj, Link):
            self._apply_link(change, obj, state)
        elif isinstance(obj, Address):
            iface = ipaddress.ip_interface(obj.cidr)
            ipr.addr("add" if change.op == "add" else "del", index=self._index(state, obj.dev),
                     address=str(iface.ip), prefixlen=iface.network.prefixlen)
        elif isinstance(obj, Neighbour):
            if change.op == "delete":
                ipr.neigh("del", dst=obj.dst, ifindex=self._index(state, obj.dev))
            else:
                ipr.neigh("replace", dst=obj.dst, lladdr=obj.mac, ifindex=self._index(state, obj.dev),
                          state=NUD_PERMANENT)
        elif isinstance(obj, FdbEntry):
            index = self._index(state, obj.dev)
            # A VXLAN fdb entry can hold several remotes ("append"); podnet wants exactly one, so a
            # changed destination is a delete of the old remote followed by an add.
            stale = change.have if change.op != "add" else None
            if stale is not None:
                ipr.fdb("del", ifindex=index, lladdr=stale.mac, **({"dst": stale.dst} if stale.dst else {}))
            if change.op != "delete":
                ipr.fdb("add", ifindex=index, lladdr=obj.mac, dst=obj.dst, state=NUD_PERMANENT)
        elif isinstance(obj, Route):
            self._apply_route(change, obj, state)
        elif isinstance(obj, Sysctl):
            write_sysctl(obj)

    def _apply_route(self, change: Change, route: Route, state: KernelState) -> None:
        spec: dict = {"dst": route.dst, "table": MAIN_TABLE}
        if change.op == "delete":
            if route.proto is not None:
                spec["proto"] = route.proto
            if route.dev:
                spec["oif"] = self._index(state, route.dev)
            self._ipr.route("del", **spec)
            return
        if route.via:
            spec["gateway"] = route.via
        if route.dev:
            spec["oif"] = self._index(state, route.dev)
        spec["scope"] = RT_SCOPE_UNIVERSE if route.via else RT_SCOPE_LINK
        if route.onlink:
            spec["flags"] = RTNH_F_ONLINK
        if route.proto is not None:
            spec["proto"] = route.proto
        self._ipr.route("replace", **spec)

    def _apply_link(self, change: Change, link: Link, state: KernelState) -> None:
        ipr = self._ipr
        if change.op == "delete":
            ipr.link("del", index=self._index(state, link.name))
            state.link_index.pop(link.name, None)
            return
        if change.op == "add":
            spec: dict = {"ifname": link.name, "kind": link.kind}
            if link.kind == "vxlan" and link.vxlan is not None:
                v = link.vxlan
                spec.update(vxlan_id=v.vni, vxlan_port=v.port, vxlan_learning=int(v.learning))
                if v.local:
                    spec["vxlan_local"] = v.local
                if v.underlay:
                    spec["vxlan_link"] = self._index(state, v.underlay)
            elif link.kind == "veth":
                peer: dict = {"ifname": link.peer}
                if link.mtu:
                    peer["mtu"] = link.mtu
                if link.peer_netns:
                    peer["net_ns_fd"] = link.peer_netns
                spec["peer"] = peer
            if link.mac:
                spec["address"] = link.mac
            if link.mtu:
                spec["mtu"] = link.mtu
            ipr.link("add", **spec)
            state.link_index.pop(link.name, None)
            fields = ["alias", "master", "up"]
        else:
            fields = change.fields
        settings: dict = {}
        if "mac" in fields and link.mac:
            settings["address"] = link.mac
        if "mtu" in fields and link.mtu:
            settings["mtu"] = link.mtu
        if "master" in fields and link.master:
            settings["master"] = self._index(state, link.master)
        if "alias" in fields and link.alias is not None:
            settings["ifalias"] = link.alias  # "" clears it
        if "up" in fields and link.up is not None:
            settings["state"] = "up" if link.up else "down"
        if settings:
            ipr.link("set", index=self._index(state, link.name), **settings)
