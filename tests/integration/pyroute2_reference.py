"""pyroute2 as the reference for podnet's engine (module_utils/kernel/netlink.py), which speaks rtnetlink over a
bare socket: the same reads through pyroute2's dumps and parsers, the same writes as one pyroute2 call per
object. Tests compare the engine's decoded dumps, encoded messages and resulting kernel state with these."""

from __future__ import annotations

import errno
import ipaddress
import socket

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    IFF_UP,
    NTF_SELF,
    RT_SCOPE_LINK,
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RTN_UNICAST,
    Change,
    KernelState,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    MAIN_TABLE,
    NUD_PERMANENT,
    PODNET_LINK_GROUP,
    RTNH_F_ONLINK,
    Address,
    FdbEntry,
    Link,
    Neighbour,
    Route,
    VxlanInfo,
    read_alias,
)
from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


class Reference:
    """One namespace read and written through pyroute2, one call per object."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self.ipr = NetNS(netns, flags=0) if netns else IPRoute()  # flags=0: never create the namespace

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def gather(self, kinds: set[type]) -> KernelState:
        state = KernelState()
        links = list(self.ipr.get_links())
        names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in links}
        for msg in links:
            link = self._link(msg, names)
            state.objects[link.key()] = link
            state.link_index[link.name] = msg["index"]
        if Address in kinds:
            for msg in self.ipr.get_addr(family=socket.AF_INET):
                dev = names.get(msg["index"])
                addr = _attr(msg, "IFA_LOCAL") or _attr(msg, "IFA_ADDRESS")
                if dev and addr:
                    obj = Address(dev=dev, cidr=f"{addr}/{msg['prefixlen']}", netns=self.netns)
                    state.objects[obj.key()] = obj
        if Neighbour in kinds:
            for msg in self.ipr.get_neighbours(family=socket.AF_INET):
                dev = names.get(msg["ifindex"])
                dst = _attr(msg, "NDA_DST")
                if dev and dst:
                    obj = Neighbour(dev=dev, dst=dst, mac=_attr(msg, "NDA_LLADDR"),
                                    permanent=bool(msg["state"] & NUD_PERMANENT), netns=self.netns)
                    state.objects[obj.key()] = obj
        if FdbEntry in kinds:
            vxlan_indexes = {state.link_index[o.name] for o in state.of_type(Link) if o.kind == "vxlan"}
            for msg in self.ipr.fdb("dump"):
                if msg["ifindex"] not in vxlan_indexes or not msg["flags"] & NTF_SELF:
                    continue
                mac = _attr(msg, "NDA_LLADDR")
                if mac:
                    obj = FdbEntry(dev=names[msg["ifindex"]], mac=mac, dst=_attr(msg, "NDA_DST"), netns=self.netns)
                    state.objects[obj.key()] = obj
        if Route in kinds:
            for msg in self.ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
                route = self._route(msg, names)
                if route is not None:
                    state.objects[route.key()] = route
        return state

    def _link(self, msg, names: dict[int, str]) -> Link:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        vxlan = None
        if kind == "vxlan":
            data = info.get_attr("IFLA_INFO_DATA")
            vxlan = VxlanInfo(vni=data.get_attr("IFLA_VXLAN_ID"), port=data.get_attr("IFLA_VXLAN_PORT"),
                              local=data.get_attr("IFLA_VXLAN_LOCAL"),
                              underlay=names.get(data.get_attr("IFLA_VXLAN_LINK") or 0),
                              learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")))
        master = msg.get_attr("IFLA_MASTER")
        return Link(name=msg.get_attr("IFLA_IFNAME"), kind=kind or "device", mtu=msg.get_attr("IFLA_MTU"),
                    mac=msg.get_attr("IFLA_ADDRESS"), up=bool(msg["flags"] & IFF_UP),
                    master=names.get(master) if master else None,
                    alias=read_alias(msg.get_attr("IFLA_IFALIAS"), msg.get_attr("IFLA_GROUP")),
                    vxlan=vxlan, netns=self.netns)

    def _route(self, msg, names: dict[int, str]) -> Route | None:
        if msg["type"] != RTN_UNICAST or msg.get_attr("RTA_MULTIPATH"):
            return None
        if (msg.get_attr("RTA_TABLE") or msg["table"]) != MAIN_TABLE:
            return None
        oif = msg.get_attr("RTA_OIF")
        return Route(dst=f"{msg.get_attr('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}", via=msg.get_attr("RTA_GATEWAY"),
                     dev=names.get(oif) if oif else None, onlink=bool(msg["flags"] & RTNH_F_ONLINK),
                     proto=msg["proto"], netns=self.netns)

    # ------------------------------------------------------------------------------------------ writing
    def index(self, name: str) -> int:
        return self.ipr.link_lookup(ifname=name)[0]

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            try:
                self.apply_one(change)
            except NetlinkError as exc:
                if not (change.op == "delete" and exc.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV)):
                    raise

    def apply_one(self, change: Change) -> None:
        obj, ipr = change.obj, self.ipr
        if isinstance(obj, Link):
            self._apply_link(change, obj)
        elif isinstance(obj, Address):
            iface = ipaddress.ip_interface(obj.cidr)
            ipr.addr("add" if change.op == "add" else "del", index=self.index(obj.dev), address=str(iface.ip),
                     prefixlen=iface.network.prefixlen)
        elif isinstance(obj, Neighbour):
            if change.op == "delete":
                ipr.neigh("del", dst=obj.dst, ifindex=self.index(obj.dev))
            else:
                ipr.neigh("replace", dst=obj.dst, lladdr=obj.mac, ifindex=self.index(obj.dev), state=NUD_PERMANENT)
        elif isinstance(obj, FdbEntry):
            index = self.index(obj.dev)
            stale = change.have if change.op != "add" else None
            if stale is not None:
                ipr.fdb("del", ifindex=index, lladdr=stale.mac, **({"dst": stale.dst} if stale.dst else {}))
            if change.op != "delete":
                ipr.fdb("add", ifindex=index, lladdr=obj.mac, dst=obj.dst, state=NUD_PERMANENT)
        elif isinstance(obj, Route):
            self._apply_route(change, obj)
        else:
            raise TypeError(f"no reference for {obj!r}")

    def _apply_route(self, change: Change, route: Route) -> None:
        spec: dict = {"dst": route.dst, "table": MAIN_TABLE}
        if change.op == "delete":
            if route.proto is not None:
                spec["proto"] = route.proto
            if route.dev:
                spec["oif"] = self.index(route.dev)
            spec["scope"] = RT_SCOPE_NOWHERE
            self.ipr.route("del", **spec)
            return
        if route.via:
            spec["gateway"] = route.via
        if route.dev:
            spec["oif"] = self.index(route.dev)
        spec["scope"] = RT_SCOPE_UNIVERSE if route.via else RT_SCOPE_LINK
        if route.onlink:
            spec["flags"] = RTNH_F_ONLINK
        if route.proto is not None:
            spec["proto"] = route.proto
        self.ipr.route("replace", **spec)

    def _apply_link(self, change: Change, link: Link) -> None:
        ipr = self.ipr
        if change.op == "delete":
            ipr.link("del", index=self.index(link.name))
            return
        if change.op == "add":
            spec: dict = {"ifname": link.name, "kind": link.kind, "group": PODNET_LINK_GROUP}
            if link.kind == "vxlan" and link.vxlan is not None:
                v = link.vxlan
                spec.update(vxlan_id=v.vni, vxlan_port=v.port, vxlan_learning=int(v.learning))
                if v.local:
                    spec["vxlan_local"] = v.local
                if v.underlay:
                    spec["vxlan_link"] = self.index(v.underlay)
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
            fields = ["alias", "master", "up"]
        else:
            fields = change.fields
        settings: dict = {}
        if "mac" in fields and link.mac:
            settings["address"] = link.mac
        if "mtu" in fields and link.mtu:
            settings["mtu"] = link.mtu
        if "master" in fields and link.master:
            settings["master"] = self.index(link.master)
        if "alias" in fields and link.alias is not None:
            settings["ifalias"] = link.alias
        if "up" in fields and link.up is not None:
            settings["state"] = "up" if link.up else "down"
        if settings:
            ipr.link("set", index=self.index(link.name), **settings)
