# Copyright: podnet contributors
# Apache License 2.0
"""The one engine: read kernel state (one dump per object kind), diff it against wanted objects, and
apply only the difference over netlink.

Every module — and every backend — reaches the kernel through `Engine`.  Check mode, `--diff` and
the `rendered` state use `plan()` and never call `apply()`.

Every object kind (links, addresses, neighbours, fdb entries, routes) is read and written over one bare
NETLINK_ROUTE socket per namespace: dumps decoded with `struct`, reading only the fields podnet compares
(`_parse_links` and `Engine.gather`), writes encoded by one function per kind (`_encode`, `_link_messages`)
and packed into batches (many messages per sendmsg, one acknowledgement per batch, failures mapped back to
their change by sequence number).  Sysctls are files under /proc/sys.  Foo-over-UDP ports live in the
generic netlink family "fou" (`_fou_*`), WireGuard settings and peers in the family "wireguard" (`_wg_*`), read
and written over one NETLINK_GENERIC socket of the namespace (`_Generic`).

pyroute2 is not used here: one synchronous pyroute2 call per entry costs ~16x `ip -batch`, its dump parsing
~20x `ip -j`, and importing it ~0.3 s per run.  It serves as the reference instead:
tests/integration/test_engine_batch.py checks the encoded messages against the bytes pyroute2 sends for
the same call, the decoded dumps against what pyroute2 reads, and links made here against links made by
pyroute2.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    IPIP_FALLBACK,
    MAIN_TABLE,
    NUD_PERMANENT,
    PODNET_LINK_GROUP,
    PODNET_RTPROTO,
    RTNH_F_ONLINK,
    Address,
    FdbEntry,
    FouPort,
    IpipInfo,
    KObject,
    Link,
    Neighbour,
    Route,
    Sysctl,
    VxlanInfo,
    WireguardDevice,
    WireguardPeer,
    read_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.ownership import (
    TakeOver,
    foreign_conflicts,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.wireguard_keys import (
    decode_key,
    encode_key,
    read_private_key,
)


class NetlinkError(Exception):
    """The kernel refused a request; shown as "(17, 'File exists')"."""

    def __init__(self, code: int, msg: str | None = None):
        super().__init__(code, msg or os.strerror(code))
        self.code = code


AF_BRIDGE = 7
IFF_UP = 0x1
NTF_SELF = 0x02
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a delete: match the route whatever its scope (as `ip route del` does)
RTN_UNICAST = 1
RTPROT_STATIC = 4  # the protocol of a route given without one (as pyroute2 and `ip route` write it)
NUD_NOARP = 0x40

# Apply order: removals innermost-first, then creation outermost-first, so every object's
# dependencies (device, address for onlink/nexthop reachability) exist when it is written.
_PHASES = {
    ("delete", Route): 0,
    ("delete", FdbEntry): 1,
    ("delete", Neighbour): 1,
    ("delete", Address): 2,
    ("delete", FouPort): 2,  # before its IPIP device: a run stopped between leaves a device, never a port alone
    ("delete", WireguardPeer): 1,
    ("delete", WireguardDevice): 2,  # nothing to send: the settings go with the device
    ("delete", Link): 3,
    ("add", Link): 4,
    ("update", Link): 4,
    ("add", Sysctl): 5,
    ("update", Sysctl): 5,
    ("add", FouPort): 5,  # after the IPIP device that sends to it, for the same reason
    ("update", FouPort): 5,
    ("add", WireguardDevice): 5,  # the key and port first: a peer's handshake needs them
    ("update", WireguardDevice): 5,
    ("add", WireguardPeer): 6,
    ("update", WireguardPeer): 6,
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
    # the protocols of every main-table route to a destination, by the route's key: a destination can have
    # routes at several metrics (BIRD's at 32 beside podnet's at 0 while a node changes over), of which
    # objects holds podnet's own
    route_protos: dict[tuple, set[int]] = field(default_factory=dict)

    def of_type(self, kind: type) -> list[KObject]:
        return [o for o in self.objects.values() if isinstance(o, kind)]

    def device_holding(self, ip: str) -> Link | None:
        """The link that has `ip` as one of its addresses (needs an Address dump)."""
        for address in self.of_type(Address):
            if address.cidr.split("/")[0] == ip:
                return self.objects.get(("link", address.netns, address.dev))
        return None


class ForeignObjectError(EngineError):
    """A device or route podnet wants exists and is someone else's: nothing was changed."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def plan(want: Iterable[KObject], have: KernelState,
         purge: Callable[[KObject], bool] | None = None,
         take_over: Collection[str] | TakeOver | None = ()) -> list[Change]:
    """Compare wanted objects with the kernel; `purge` selects existing objects to remove when they
    are not wanted (only ever podnet-owned ones — the callers' predicates guarantee that).
    Raises ForeignObjectError, before anything is changed, when a wanted device or route of the node's
    namespace exists without podnet's marker and `take_over` does not hand it over."""
    changes: list[Change] = []
    wanted: dict[tuple, KObject] = {}
    for obj in want:
        wanted[obj.key()] = obj
    objects = have.objects
    foreign = foreign_conflicts(wanted.values(), objects, take_over)
    if foreign:
        raise ForeignObjectError(foreign)
    for key, obj in wanted.items():
        existing = objects.get(key)
        if existing is None:
            changes.append(Change("add", obj, None))
            continue
        if existing == obj:  # the common case on a re-run: identical, nothing to compare field by field
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


# ---------------------------------------------------------------- bare netlink (rtnetlink) layer
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
CLONE_NEWNET = 0x40000000
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ACK_TLVS = 0x200  # on an NLMSG_ERROR: extended-ack attributes follow
NLM_F_CAPPED = 0x100  # on an NLMSG_ERROR: only the header of the failed request is echoed
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_GROUP, IFLA_EXT_MASK = (
    1, 3, 4, 10, 18, 20, 27, 29)
IFLA_NET_NS_FD = 28
IFLA_OPERSTATE, IF_OPER_UP = 16, 6
OPERATIONAL_WAIT = 1.0  # seconds; the link watcher takes milliseconds, a pod's unanswered ARP costs a second
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 3, 4, 7, 15
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
NDA_DST, NDA_LLADDR = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
IFLA_IPTUN_LINK, IFLA_IPTUN_LOCAL = 1, 2
IFLA_IPTUN_ENCAP_TYPE, IFLA_IPTUN_ENCAP_FLAGS, IFLA_IPTUN_ENCAP_SPORT, IFLA_IPTUN_ENCAP_DPORT = 15, 16, 17, 18
TUNNEL_ENCAP_FOU, TUNNEL_ENCAP_FLAG_CSUM = 1, 1
NETLINK_GENERIC = 16
GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
FOU_GENL_NAME, FOU_GENL_VERSION = "fou", 1
FOU_CMD_ADD, FOU_CMD_DEL, FOU_CMD_GET = 1, 2, 3
FOU_ATTR_PORT, FOU_ATTR_AF, FOU_ATTR_IPPROTO, FOU_ATTR_TYPE = 1, 2, 3, 4
FOU_ENCAP_DIRECT = 1
WG_GENL_NAME, WG_GENL_VERSION = "wireguard", 1
WG_CMD_GET_DEVICE, WG_CMD_SET_DEVICE = 0, 1
WGDEVICE_A_IFINDEX, WGDEVICE_A_PRIVATE_KEY, WGDEVICE_A_PUBLIC_KEY, WGDEVICE_A_LISTEN_PORT, WGDEVICE_A_PEERS = (
    1, 3, 4, 6, 8)
WGPEER_A_PUBLIC_KEY, WGPEER_A_FLAGS, WGPEER_A_ENDPOINT, WGPEER_A_ALLOWEDIPS = 1, 3, 4, 9
WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS = 1, 2
WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK = 1, 2, 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
NETNS_DIR = "/run/netns"

_NLMSGHDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_BE16 = struct.Struct("!H")
_U16 = struct.Struct("=H")
_GENLMSGHDR = struct.Struct("=BBxx")  # cmd, version
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags

# Writes go out in chunks of this many messages per sendmsg: small enough that the error replies of a
# chunk in which everything fails still fit the receive buffer (set to _RCVBUF below).
_CHUNK = 256
_RCVBUF = 4 << 20
_RECV_SIZE = 1 << 17


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length & 3)


def _nla_text(kind: int, text: str) -> bytes:
    return _nla(kind, text.encode() + b"\0")


def _nla_u32(kind: int, value: int) -> bytes:
    return _NLA.pack(8, kind) + _U32.pack(value)


def _nla_ip4(kind: int, address: str) -> bytes:
    return _NLA.pack(8, kind) + socket.inet_aton(address)


def _nla_mac(kind: int, mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac}")
    return _NLA.pack(10, kind) + raw + b"\0\0"


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    """The attributes of one message (or nested attribute) as {type: payload}."""
    out = {}
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = buf[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _ip_text(raw: bytes) -> str:
    return socket.inet_ntoa(raw) if len(raw) == 4 else socket.inet_ntop(socket.AF_INET6, raw)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _u32(raw: bytes | None) -> int | None:
    return None if raw is None else _U32.unpack_from(raw)[0]


_setns_libc = None


def _setns(fd: int) -> None:
    global _setns_libc
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    if _setns_libc is None:
        _setns_libc = ctypes.CDLL(None, use_errno=True)
    if _setns_libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def netns_path(netns: str) -> str:
    """The file of a network namespace given by name (under NETNS_DIR, as `ip netns` keeps them) or path."""
    return netns if "/" in netns else os.path.join(NETNS_DIR, netns)


def _netlink_socket(netns: str | None, protocol: int = NETLINK_ROUTE) -> socket.socket:
    """A netlink socket (NETLINK_ROUTE unless `protocol` says) bound to `netns` (a name under /run/netns or a
    path; None = ours).

    A socket keeps the namespace it was created in, so this thread enters the namespace just long
    enough to create it and returns at once (setns only changes the calling thread)."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                # Never let a silent failure leave the socket in the caller's namespace.
                if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(target).st_ino:
                    raise OSError(errno.EINVAL, f"could not enter network namespace {netns}")
                return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
            finally:
                try:
                    _setns(home)
                except OSError as exc:  # the thread would stay in the wrong namespace: stop hard
                    raise SystemExit(f"podnet: cannot return to the original network namespace: {exc}") \
                        from exc
        finally:
            os.close(home)
    finally:
        os.close(target)


class _Netlink:
    """A bare rtnetlink (or generic netlink) socket: dumps decoded by the caller, batched writes with failures
    mapped back."""

    def __init__(self, netns: str | None, protocol: int = NETLINK_ROUTE):
        self.sock = _netlink_socket(netns, protocol)
        try:
            self.sock.bind((0, 0))
            for option, value in ((NETLINK_CAP_ACK, 1), (NETLINK_EXT_ACK, 1)):
                try:
                    self.sock.setsockopt(SOL_NETLINK, option, value)
                except OSError:
                    pass  # older kernels: full echoes, no extended messages
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, _RCVBUF)  # SO_RCVBUFFORCE (needs CAP_NET_ADMIN)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _next(self) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        return self.seq

    @staticmethod
    def _error(buf: bytes, off: int, end: int, flags: int) -> NetlinkError | None:
        code = -_I32.unpack_from(buf, off + 16)[0]
        if not code:
            return None
        text = None
        if flags & NLM_F_ACK_TLVS:
            echoed = 16 if flags & NLM_F_CAPPED else _U32.unpack_from(buf, off + 20)[0]
            text = _text(_attrs(buf, off + 20 + ((echoed + 3) & ~3), end).get(NLMSGERR_ATTR_MSG))
        return NetlinkError(code, f"{os.strerror(code)} ({text})" if text else None)

    def dump(self, msgtype: int, body: bytes):
        """Yield (buffer, payload offset, message end) for every message of a dump."""
        seq = self._next()
        self.sock.send(_NLMSGHDR.pack(16 + len(body), msgtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        for buf, off, length, kind, flags, mseq in self._incoming():
            if mseq == seq:
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    failure = self._error(buf, off, off + length, flags)
                    if failure is not None:
                        raise failure
                    return
                yield buf, off + 16, off + length

    def _incoming(self):
        """Every message the socket receives, as (buffer, offset, length, type, flags, sequence)."""
        unpack = _NLMSGHDR.unpack_from
        while True:
            buf = self.sock.recv(_RECV_SIZE)
            off, size = 0, len(buf)
            while off + 16 <= size:
                length, kind, flags, mseq, _unused = unpack(buf, off)
                if length < 16:
                    raise NetlinkError(errno.EBADMSG)
                yield buf, off, length, kind, flags, mseq
                off += (length + 3) & ~3

    def request(self, msgtype: int, body: bytes) -> tuple[bytes, int, int]:
        """One request, one answer: (buffer, payload offset, end) of the reply message."""
        seq = self._next()
        self.sock.send(_NLMSGHDR.pack(16 + len(body), msgtype, NLM_F_REQUEST, seq, 0) + body)
        for buf, off, length, kind, flags, mseq in self._incoming():
            if mseq == seq:
                if kind == NLMSG_ERROR:
                    raise self._error(buf, off, off + length, flags) or NetlinkError(errno.ENODATA)
                return buf, off + 16, off + length
        raise NetlinkError(errno.ENODATA)  # unreachable: _incoming never ends

    def write(self, items: list[tuple[int, int, bytes, object]], fatal: Callable[[object, int], bool]):
        """Send (type, flags, body, tag) messages in chunks, many per sendmsg.

        Only the last message of a chunk asks for an acknowledgement: the kernel handles a chunk's
        messages in order and answers every failure anyway, so once that acknowledgement is in, every
        failure of the chunk is too.  Returns [(tag, NetlinkError)] in message order; stops after the
        first chunk with a failure `fatal` calls fatal (later chunks are not sent)."""
        failures: list[tuple[object, NetlinkError]] = []
        pack = _NLMSGHDR.pack
        for start in range(0, len(items), _CHUNK):
            chunk = items[start:start + _CHUNK]
            parts = []
            owners: dict[int, object] = {}
            last = 0
            for i, (kind, flags, body, tag) in enumerate(chunk):
                last = self._next()
                owners[last] = tag
                if i == len(chunk) - 1:
                    flags |= NLM_F_ACK
                parts.append(pack(16 + len(body), kind, flags, last, 0))
                parts.append(body)
            self.sock.send(b"".join(parts))
            found = self._collect(owners, last)
            failures += found
            if any(fatal(tag, exc.code) for tag, exc in found):
                break
        return failures

    def _collect(self, owners: dict[int, object], last: int) -> list[tuple[object, NetlinkError]]:
        found: list[tuple[int, object, NetlinkError]] = []
        for buf, off, length, kind, flags, mseq in self._incoming():
            if kind == NLMSG_ERROR and mseq in owners:
                failure = self._error(buf, off, off + length, flags)
                if failure is not None:
                    found.append((mseq, owners[mseq], failure))
                if mseq == last:
                    found.sort(key=lambda item: item[0])
                    return [(tag, exc) for _unused, tag, exc in found]
        raise NetlinkError(errno.ENODATA)  # unreachable: _incoming never ends


def _neigh_dst_lladdr(buf: bytes, at: int, end: int) -> tuple[bytes | None, bytes | None]:
    """NDA_DST and NDA_LLADDR of one neighbour/fdb message (attributes from `at` to `end`)."""
    dst = mac = None
    while at + 4 <= end:
        length, kind = _NLA.unpack_from(buf, at)
        if length < 4:
            break
        if kind == NDA_DST:
            dst = buf[at + 4:at + length]
        elif kind == NDA_LLADDR:
            mac = buf[at + 4:at + length]
        at += (length + 3) & ~3
    return dst, mac


def _make(cls, **values):
    """A frozen dataclass instance built without its generated __init__ (which sets every field through
    object.__setattr__, about twice as slow); only used with every field given."""
    obj = object.__new__(cls)
    obj.__dict__.update(values)
    return obj


def _link_rows(nl: _Netlink) -> list[tuple[int, int, dict[int, bytes]]]:
    """Every link of the socket's namespace, without statistics: (index, flags, attributes)."""
    rows = []
    for buf, off, end in nl.dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                                 + _nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)):
        _unused, _unused, index, flags, _unused = _IFINFOMSG.unpack_from(buf, off)
        rows.append((index, flags, _attrs(buf, off + _IFINFOMSG.size, end)))
    return rows


def _parse_links(nl: _Netlink, netns: str | None) -> tuple[dict[tuple, KObject], dict[str, int]]:
    rows = _link_rows(nl)
    names = {index: _text(attrs.get(IFLA_IFNAME)) for index, _unused, attrs in rows}
    objects: dict[tuple, KObject] = {}
    link_index: dict[str, int] = {}
    for index, flags, attrs in rows:
        kind = None
        vxlan = ipip = None
        info = attrs.get(IFLA_LINKINFO)
        if info is not None:
            info_attrs = _attrs(info, 0, len(info))
            kind = _text(info_attrs.get(IFLA_INFO_KIND))
            data = info_attrs.get(IFLA_INFO_DATA)
            if kind == "vxlan" and data is not None:
                v = _attrs(data, 0, len(data))
                port = v.get(IFLA_VXLAN_PORT)
                local = v.get(IFLA_VXLAN_LOCAL)
                learning = v.get(IFLA_VXLAN_LEARNING)
                vxlan = VxlanInfo(
                    vni=_u32(v.get(IFLA_VXLAN_ID)),
                    port=_BE16.unpack_from(port)[0] if port is not None else None,
                    local=_ip_text(local) if local is not None else None,
                    underlay=names.get(_u32(v.get(IFLA_VXLAN_LINK)) or 0),
                    learning=bool(learning and learning[0]),
                )
            elif kind == "ipip" and data is not None:
                ipip = _ipip_info(_attrs(data, 0, len(data)), names)
        master = _u32(attrs.get(IFLA_MASTER))
        mac = attrs.get(IFLA_ADDRESS)
        link = Link(
            name=names[index],
            kind=kind or "device",
            mtu=_u32(attrs.get(IFLA_MTU)),
            mac=mac.hex(":") if mac is not None else None,
            up=bool(flags & IFF_UP),
            master=names.get(master) if master else None,
            alias=read_alias(_text(attrs.get(IFLA_IFALIAS)), _u32(attrs.get(IFLA_GROUP))),
            vxlan=vxlan,
            ipip=ipip,
            netns=netns,
        )
        objects[link.key()] = link
        link_index[link.name] = index
    return objects, link_index


def _ipip_info(data: dict[int, bytes], names: dict[int, str | None]) -> IpipInfo:
    """An IPIP device's tunnel settings as podnet sets them (0.0.0.0 / index 0 / port 0: not set)."""
    local = data.get(IFLA_IPTUN_LOCAL)
    encap = data.get(IFLA_IPTUN_ENCAP_TYPE)
    fou = encap is not None and _U16.unpack_from(encap)[0] == TUNNEL_ENCAP_FOU
    sport = data.get(IFLA_IPTUN_ENCAP_SPORT)
    dport = data.get(IFLA_IPTUN_ENCAP_DPORT)
    flags = data.get(IFLA_IPTUN_ENCAP_FLAGS)
    return IpipInfo(
        local=_ip_text(local) if local and local != b"\0\0\0\0" else None,
        underlay=names.get(_u32(data.get(IFLA_IPTUN_LINK)) or 0),
        encap_dport=(_BE16.unpack_from(dport)[0] or None) if fou and dport else None,
        encap_sport=(_BE16.unpack_from(sport)[0] or None) if fou and sport else None,
        encap_csum=bool(fou and flags and _U16.unpack_from(flags)[0] & TUNNEL_ENCAP_FLAG_CSUM),
    )


RTM_GETNSID = 90
NETNSA_NSID, NETNSA_FD = 1, 3
IFLA_LINK, IFLA_LINK_NETNSID = 5, 37
_RTGENMSG = struct.Struct("=Bxxx")  # family, padded to 4


def _netns_ids(nl: _Netlink) -> dict[int, str]:
    """The id this namespace gives each named namespace (NETNS_DIR) it has one for: id -> name. Asking
    assigns none (RTM_GETNSID), and a namespace holding the other end of one of our veths has one."""
    ids: dict[int, str] = {}
    for name in sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else []:
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile, or not a namespace file
        try:
            buf, off, end = nl.request(RTM_GETNSID, _RTGENMSG.pack(socket.AF_UNSPEC) + _nla_u32(NETNSA_FD, fd))
        except NetlinkError:
            continue
        finally:
            os.close(fd)
        nsid = _attrs(buf, off + _RTGENMSG.size, end).get(NETNSA_NSID)
        if nsid is not None and _I32.unpack_from(nsid)[0] >= 0:
            ids[_I32.unpack_from(nsid)[0]] = name
    return ids


def veth_peers(netns: str | None = None) -> dict[str, tuple[str, str]]:
    """Where the other end of each veth of `netns` is, when it is in a named namespace: veth name ->
    (that namespace's name, the other end's name there). What a gather does not read: only `gathered`
    states that give pods back by namespace need it."""
    nl = _Netlink(netns)
    try:
        rows = [(_text(attrs.get(IFLA_IFNAME)), _I32.unpack_from(attrs[IFLA_LINK_NETNSID])[0], _u32(attrs[IFLA_LINK]))
                for _index, _flags, attrs in _link_rows(nl) if IFLA_LINK_NETNSID in attrs and IFLA_LINK in attrs]
        names = _netns_ids(nl) if rows else {}
    finally:
        nl.close()
    peers: dict[str, tuple[str, str]] = {}
    for other in {names[nsid] for _name, nsid, _index in rows if nsid in names}:
        remote = _Netlink(other)
        try:
            by_index = {index: _text(attrs.get(IFLA_IFNAME)) for index, _flags, attrs in _link_rows(remote)}
        finally:
            remote.close()
        for name, nsid, index in rows:
            if names.get(nsid) == other and index in by_index:
                peers[name] = (other, by_index[index])
    return peers


def _fatal(change, code: int) -> bool:
    """Deletes of what is already gone are not failures (routes go with their device, for one)."""
    return not (change.op == "delete" and code in (errno.ENOENT, errno.ESRCH, errno.ENODEV))


_NEW = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL  # `add`
_REPLACE = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE  # `replace`


def _encode(change: Change, obj: KObject, index: int) -> list[tuple[int, int, bytes]]:
    """The netlink messages (type, flags, body) for one address, neighbour, fdb or route change: exactly
    what pyroute2 sends for the same call (checked by tests/integration/test_engine_batch.py), except that
    route deletes match any scope, as `ip route del` does.  ValueError: not IPv4/MAC text."""
    if isinstance(obj, Neighbour):
        body = _NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0) + _nla_ip4(NDA_DST, obj.dst)
        if change.op == "delete":
            return [(RTM_DELNEIGH, NLM_F_REQUEST, body)]
        return [(RTM_NEWNEIGH, _REPLACE, body + (_nla_mac(NDA_LLADDR, obj.mac) if obj.mac else b""))]
    if isinstance(obj, FdbEntry):
        # A VXLAN fdb entry can hold several remotes ("append"); podnet wants exactly one, so a
        # changed destination is a delete of the old remote followed by an add.
        head = _NDMSG.pack(AF_BRIDGE, index, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
        out = []
        stale = change.have if change.op != "add" else None
        if stale is not None:
            out.append((RTM_DELNEIGH, NLM_F_REQUEST, head + _nla_mac(NDA_LLADDR, stale.mac)
                        + (_nla_ip4(NDA_DST, stale.dst) if stale.dst else b"")))
        if change.op != "delete":
            out.append((RTM_NEWNEIGH, _NEW, head + _nla_mac(NDA_LLADDR, obj.mac)
                        + (_nla_ip4(NDA_DST, obj.dst) if obj.dst else b"")))
        return out
    if isinstance(obj, Route):
        dst, _unused, length = ("0.0.0.0/0" if obj.dst == "default" else obj.dst).partition("/")
        dst_len = int(length or 32)  # a bare address is a host route, as in `ip route`
        attrs = (_nla_ip4(RTA_DST, dst) if dst_len else b"") + _nla_u32(RTA_TABLE, MAIN_TABLE)
        if change.op == "delete":
            proto = obj.proto if obj.proto is not None else 0
            attrs += _nla_u32(RTA_OIF, index) if obj.dev else b""
            return [(RTM_DELROUTE, NLM_F_REQUEST,
                     _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, MAIN_TABLE, proto, RT_SCOPE_NOWHERE, 0, 0)
                     + attrs)]
        proto = obj.proto if obj.proto is not None else RTPROT_STATIC
        scope = RT_SCOPE_UNIVERSE if obj.via else RT_SCOPE_LINK
        flags = RTNH_F_ONLINK if obj.onlink else 0
        if obj.via:
            attrs += _nla_ip4(RTA_GATEWAY, obj.via)
        if obj.dev:
            attrs += _nla_u32(RTA_OIF, index)
        return [(RTM_NEWROUTE, _REPLACE,
                 _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, MAIN_TABLE, proto, scope, RTN_UNICAST, flags) + attrs)]
    if isinstance(obj, Address):
        address, _unused, length = obj.cidr.partition("/")
        body = (_IFADDRMSG.pack(socket.AF_INET, int(length or 32), 0, 0, index)
                + _nla_ip4(IFA_ADDRESS, address) + _nla_ip4(IFA_LOCAL, address))
        if change.op == "delete":
            return [(RTM_DELADDR, NLM_F_REQUEST, body)]
        if change.op == "add":
            return [(RTM_NEWADDR, _NEW, body)]
        raise ValueError("an address has no attributes to update")
    raise ValueError(f"{type(obj).__name__} is not sent in batches")


def _link_messages(change: Change, link: Link, index: int, index_of: Callable[[str], int],
                   peer_netns_fd: int | None = None) -> list[tuple[int, int, bytes]]:
    """The netlink messages for one link change (`ip link add/set/del`). `index`: the link's own (0 for an
    add); `index_of`: the index of another device (master, VXLAN underlay); `peer_netns_fd`: an open
    namespace file a veth's peer is created in. An add creates the device in podnet's group
    (PODNET_LINK_GROUP) with its name, kind, MAC, MTU and kind data; its alias, master and up state follow
    in an update (the kernel sets no alias at creation)."""
    if change.op == "delete":
        return [(RTM_DELLINK, NLM_F_REQUEST, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))]
    if change.op == "add":
        attrs = _nla_text(IFLA_IFNAME, link.name)
        if link.mac:
            attrs += _nla_mac(IFLA_ADDRESS, link.mac)
        if link.mtu:
            attrs += _nla_u32(IFLA_MTU, link.mtu)
        # ipip's fallback tunl0 is the module's, made as it loads (the add loads it): it is configured, not
        # created (no NLM_F_EXCL), and it stays out of podnet's group, as when it was there already
        fallback = link.kind == "ipip" and link.name == IPIP_FALLBACK
        if not fallback:
            attrs += _nla_u32(IFLA_GROUP, PODNET_LINK_GROUP)
        data = b""
        if link.kind == "vxlan" and link.vxlan is not None:
            v = link.vxlan
            data = _nla_u32(IFLA_VXLAN_ID, v.vni)
            if v.local:
                data += _nla_ip4(IFLA_VXLAN_LOCAL, v.local)
            if v.underlay:
                data += _nla_u32(IFLA_VXLAN_LINK, index_of(v.underlay))
            data += _nla(IFLA_VXLAN_LEARNING, bytes([int(v.learning)])) + _nla(IFLA_VXLAN_PORT, _BE16.pack(v.port))
        elif link.kind == "ipip" and link.ipip is not None:
            t = link.ipip
            data = _nla_ip4(IFLA_IPTUN_LOCAL, t.local) if t.local else b""
            if t.underlay:
                data += _nla_u32(IFLA_IPTUN_LINK, index_of(t.underlay))
            if t.encap_dport:
                data += (_nla(IFLA_IPTUN_ENCAP_TYPE, _U16.pack(TUNNEL_ENCAP_FOU))
                         + _nla(IFLA_IPTUN_ENCAP_FLAGS, _U16.pack(TUNNEL_ENCAP_FLAG_CSUM if t.encap_csum else 0))
                         + _nla(IFLA_IPTUN_ENCAP_SPORT, _BE16.pack(t.encap_sport or 0))
                         + _nla(IFLA_IPTUN_ENCAP_DPORT, _BE16.pack(t.encap_dport)))
        elif link.kind == "veth" and link.peer:
            peer = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _nla_text(IFLA_IFNAME, link.peer)
            if link.mtu:
                peer += _nla_u32(IFLA_MTU, link.mtu)
            if peer_netns_fd is not None:
                peer += _nla_u32(IFLA_NET_NS_FD, peer_netns_fd)
            data = _nla(VETH_INFO_PEER, peer)
        info = _nla_text(IFLA_INFO_KIND, link.kind) + (_nla(IFLA_INFO_DATA, data) if data else b"")
        attrs += _nla(IFLA_LINKINFO, info)
        return [(RTM_NEWLINK, _NEW & ~NLM_F_EXCL if fallback else _NEW,
                 _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attrs)]
    fields = change.fields
    attrs = b""
    if "mac" in fields and link.mac:
        attrs += _nla_mac(IFLA_ADDRESS, link.mac)
    if "mtu" in fields and link.mtu:
        attrs += _nla_u32(IFLA_MTU, link.mtu)
    if "master" in fields and link.master:
        attrs += _nla_u32(IFLA_MASTER, index_of(link.master))
    if "alias" in fields and link.alias is not None:
        attrs += _nla(IFLA_IFALIAS, link.alias.encode())  # as `ip link set alias`: no NUL; empty clears it
    flags = change_mask = 0
    if "up" in fields and link.up is not None:
        flags, change_mask = (IFF_UP if link.up else 0), IFF_UP
    if not attrs and not change_mask:
        return []
    return [(RTM_NEWLINK, NLM_F_REQUEST, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change_mask) + attrs)]


ALL_KINDS = frozenset({Address, Neighbour, FdbEntry, Route, FouPort, WireguardDevice, WireguardPeer})
# read over generic netlink, in the node's own namespace only: podnet makes none of them in pods
GENERIC_KINDS = frozenset({FouPort, WireguardDevice, WireguardPeer})


class _Generic:
    """A NETLINK_GENERIC socket of one namespace and the ids of the families it has looked up, read from the
    list of families (one dump per socket; asking for one family by name would make the kernel try to load
    a module)."""

    def __init__(self, netns: str | None):
        self.netns = netns
        self.nl = _Netlink(netns, NETLINK_GENERIC)
        self.families: dict[str, int] | None = None

    def family(self, name: str, fresh: bool = False) -> int | None:
        """The family's id; None when its module is not loaded."""
        if self.families is None or fresh:
            self.families = {}
            for buf, off, end in self.nl.dump(GENL_ID_CTRL, _GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, 1)):
                attrs = _attrs(buf, off + _GENLMSGHDR.size, end)
                name_of, id_of = _text(attrs.get(CTRL_ATTR_FAMILY_NAME)), attrs.get(CTRL_ATTR_FAMILY_ID)
                if name_of and id_of is not None:
                    self.families[name_of] = _U16.unpack_from(id_of)[0]
        return self.families.get(name)

    def loaded(self, module: str, name: str) -> int:
        """The family's id, once `modprobe <module>` (as the rendered script does) has loaded it where it was
        missing: the kernel refuses an IPIP device with FOU encapsulation (EINVAL) and FOU ports (ENOENT) until
        fou is loaded, and no request loads it (the module declares no alias a request could name)."""
        family = self.family(name)
        if family is not None:
            return family
        modprobe = shutil.which("modprobe") or next((p for p in ("/usr/sbin/modprobe", "/sbin/modprobe")
                                                    if os.access(p, os.X_OK)), None)
        if modprobe is None:
            raise NetlinkError(errno.EOPNOTSUPP, f"the {module} module is not loaded, and there is no modprobe to "
                                                 f"load it")
        done = subprocess.run([modprobe, module], capture_output=True, text=True, check=False, timeout=120)
        family = self.family(name, fresh=True)
        if done.returncode != 0 or family is None:
            raise NetlinkError(errno.EOPNOTSUPP, f"the {module} module is not loaded and `modprobe {module}` could "
                                                 f"not load it (exit {done.returncode}: {done.stderr.strip()})")
        return family

    def close(self) -> None:
        self.nl.close()


def _fou_ports(genl: _Generic) -> dict[tuple, KObject]:
    """The namespace's IPv4 FOU receive ports of the direct kind (GUE ports are not podnet's kind)."""
    family = genl.family(FOU_GENL_NAME)
    if family is None:
        return {}
    found: dict[tuple, KObject] = {}
    for buf, off, end in genl.nl.dump(family, _GENLMSGHDR.pack(FOU_CMD_GET, FOU_GENL_VERSION)):
        attrs = _attrs(buf, off + _GENLMSGHDR.size, end)
        port, af, proto = attrs.get(FOU_ATTR_PORT), attrs.get(FOU_ATTR_AF), attrs.get(FOU_ATTR_IPPROTO)
        kind = attrs.get(FOU_ATTR_TYPE)
        if port is None or (af and af[0] != socket.AF_INET) or (kind and kind[0] != FOU_ENCAP_DIRECT):
            continue
        obj = FouPort(port=_BE16.unpack_from(port)[0], ipproto=proto[0] if proto else 0, netns=genl.netns)
        found[obj.key()] = obj
    return found


def _fou_write(genl: _Generic, change: Change) -> None:
    """A FOU port added or removed (an update: removed, then added with its new settings)."""
    port: FouPort = change.obj  # type: ignore[assignment]
    if change.op == "delete":
        family = genl.family(FOU_GENL_NAME)
        if family is None:
            return  # no fou module, so no port
    else:
        family = genl.loaded("fou", FOU_GENL_NAME)
    key = _nla(FOU_ATTR_PORT, _BE16.pack(port.port)) + _nla(FOU_ATTR_AF, bytes([socket.AF_INET]))
    messages = []
    if change.op != "add":
        messages.append((family, NLM_F_REQUEST, _GENLMSGHDR.pack(FOU_CMD_DEL, FOU_GENL_VERSION) + key, change))
    if change.op != "delete":
        messages.append((family, NLM_F_REQUEST, _GENLMSGHDR.pack(FOU_CMD_ADD, FOU_GENL_VERSION) + key
                         + _nla(FOU_ATTR_IPPROTO, bytes([port.ipproto]))
                         + _nla(FOU_ATTR_TYPE, bytes([FOU_ENCAP_DIRECT])), change))
    for _unused, exc in genl.nl.write(messages, _fatal):
        if _fatal(change, exc.code):
            raise exc


def _nested(kind: int, payload: bytes) -> bytes:
    return _nla(kind | NLA_F_NESTED, payload)


def _sockaddr_in(raw: bytes) -> str | None:
    """"address:port" of an IPv4 struct sockaddr_in (the only endpoints podnet sets)."""
    if len(raw) < 8 or _U16.unpack_from(raw)[0] != socket.AF_INET:
        return None
    return f"{socket.inet_ntoa(raw[4:8])}:{_BE16.unpack_from(raw, 2)[0]}"


def _allowed_ip(raw: bytes) -> str | None:
    attrs = _attrs(raw, 0, len(raw))
    family, address, mask = (attrs.get(a) for a in (WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK))
    if family is None or address is None or mask is None:
        return None
    return f"{_ip_text(address)}/{mask[0]}"


def _wg_read(genl: _Generic, dev: str, index: int) -> dict[tuple, KObject]:
    """A WireGuard device's port, public key and peers. A dump may spread one device over several messages,
    and one peer's allowed IPs over several of them: the parts are joined by public key. The private key the
    kernel reports is skipped unread."""
    # a cached list may predate the device (creating it loaded the module): then it is read again
    family = genl.family(WG_GENL_NAME) or genl.family(WG_GENL_NAME, fresh=True)
    if family is None:
        return {}
    port = public = None
    peers: dict[bytes, dict] = {}
    request = _GENLMSGHDR.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION) + _nla_u32(WGDEVICE_A_IFINDEX, index)
    for buf, off, end in genl.nl.dump(family, request):
        attrs = _attrs(buf, off + _GENLMSGHDR.size, end)
        if WGDEVICE_A_LISTEN_PORT in attrs:
            port = _U16.unpack_from(attrs[WGDEVICE_A_LISTEN_PORT])[0]
        if WGDEVICE_A_PUBLIC_KEY in attrs:
            public = attrs[WGDEVICE_A_PUBLIC_KEY]
        raw = attrs.get(WGDEVICE_A_PEERS, b"")
        for peer_raw in _list_nested(raw):  # every peer is attribute 0
            peer = _attrs(peer_raw, 0, len(peer_raw))
            key = peer.get(WGPEER_A_PUBLIC_KEY)
            if key is None:
                continue
            entry = peers.setdefault(key, {"endpoint": None, "allowed": []})
            if WGPEER_A_ENDPOINT in peer:
                entry["endpoint"] = _sockaddr_in(peer[WGPEER_A_ENDPOINT])
            allowed = peer.get(WGPEER_A_ALLOWEDIPS, b"")
            entry["allowed"] += [ip for ip in map(_allowed_ip, _list_nested(allowed)) if ip]
    found: dict[tuple, KObject] = {}
    settings = WireguardDevice(dev=dev, listen_port=port, netns=genl.netns,
                               public_key=encode_key(public) if public and any(public) else None)
    found[settings.key()] = settings
    for key, entry in peers.items():
        obj = WireguardPeer(dev=dev, public_key=encode_key(key), endpoint=entry["endpoint"],
                            allowed_ips=tuple(entry["allowed"]), netns=genl.netns)
        found[obj.key()] = obj
    return found


def _list_nested(raw: bytes) -> list[bytes]:
    """The payloads of a nested list (attributes numbered 0, 1, ... that `_attrs` would fold into one key)."""
    out, at = [], 0
    while at + 4 <= len(raw):
        length, _kind = _NLA.unpack_from(raw, at)
        if length < 4:
            break
        out.append(raw[at + 4:at + length])
        at += (length + 3) & ~3
    return out


def _wg_messages(change: Change, index: int) -> list[tuple[int, bytes]]:
    """The WG_CMD_SET_DEVICE bodies (flags, body) of one change; a device's private key is read from its file
    here, the one place it is, and goes nowhere but into the message."""
    head = _GENLMSGHDR.pack(WG_CMD_SET_DEVICE, WG_GENL_VERSION) + _nla_u32(WGDEVICE_A_IFINDEX, index)
    obj = change.obj
    if isinstance(obj, WireguardDevice):
        if change.op == "delete":
            return []
        body = head
        if obj.private_key_file:
            body += _nla(WGDEVICE_A_PRIVATE_KEY, _private_key(obj.private_key_file))
        if obj.listen_port is not None:
            body += _nla(WGDEVICE_A_LISTEN_PORT, _U16.pack(obj.listen_port))
        return [(NLM_F_REQUEST, body)]
    peer: WireguardPeer = obj  # type: ignore[assignment]
    attrs = _nla(WGPEER_A_PUBLIC_KEY, decode_key(peer.public_key))
    if change.op == "delete":
        attrs += _nla_u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME)
    else:
        attrs += _nla_u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS if peer.allowed_ips is not None else 0)
        if peer.endpoint:
            address, _unused, port = peer.endpoint.rpartition(":")
            attrs += _nla(WGPEER_A_ENDPOINT, _U16.pack(socket.AF_INET) + _BE16.pack(int(port))
                          + socket.inet_aton(address) + bytes(8))
        if peer.allowed_ips is not None:
            listed = b""
            for position, network in enumerate(peer.allowed_ips):
                address, _unused, length = network.partition("/")
                listed += _nested(position, _nla(WGALLOWEDIP_A_FAMILY, _U16.pack(socket.AF_INET))
                                  + _nla(WGALLOWEDIP_A_IPADDR, socket.inet_aton(address))
                                  + _nla(WGALLOWEDIP_A_CIDR_MASK, bytes([int(length)])))
            attrs += _nested(WGPEER_A_ALLOWEDIPS, listed)
    return [(NLM_F_REQUEST, head + _nested(WGDEVICE_A_PEERS, _nested(0, attrs)))]


def _private_key(path: str) -> bytes:
    """The 32 bytes of a private key file in `wg genkey`'s format. The message never holds the key."""
    try:
        return read_private_key(path)
    except (OSError, ValueError) as exc:
        raise NetlinkError(errno.EINVAL, f"{path} holds no WireGuard private key podnet can read "
                                         f"({type(exc).__name__})") from None


class SharedReads:
    """One kernel read per namespace for a run of many steps (node_apply's): while active, every Engine of
    a namespace shares one socket and one dump of every object kind, until an Engine writes there (a write
    has effects beyond its own objects: a device deleted takes its routes along, a veth appears in another
    namespace). Then the namespaces the write touched are read again at their next gather. Sysctls are
    read fresh each time (files, not dumps)."""

    def __init__(self) -> None:
        self.states: dict[str | None, KernelState] = {}
        self.sockets: dict[str | None, _Netlink] = {}
        self.generic: dict[str | None, _Generic] = {}
        self.reads: dict[str, int] = {}  # dumps of every kind, per namespace ("" = the node's own)

    def socket(self, netns: str | None) -> _Netlink:
        if netns not in self.sockets:
            self.sockets[netns] = _Netlink(netns)
        return self.sockets[netns]

    def generic_socket(self, netns: str | None) -> _Generic:
        if netns not in self.generic:
            self.generic[netns] = _Generic(netns)
        return self.generic[netns]

    def forget(self, *namespaces: str | None) -> None:
        for netns in namespaces:
            self.states.pop(netns, None)

    def close(self) -> None:
        for nl in [*self.sockets.values(), *self.generic.values()]:
            nl.close()
        self.sockets.clear()
        self.generic.clear()
        self.states.clear()


_SHARED: SharedReads | None = None


@contextlib.contextmanager
def shared_reads():
    """Engines created inside share their reads (SharedReads); yields it, for its `reads` count."""
    global _SHARED
    if _SHARED is not None:  # already inside one: the outer one serves
        yield _SHARED
        return
    _SHARED = SharedReads()
    try:
        yield _SHARED
    finally:
        shared, _SHARED = _SHARED, None
        shared.close()


def written_elsewhere() -> None:
    """Something other than an Engine changed the kernel (BIRD started or stopped, and with it its routes):
    inside shared_reads(), every namespace is read again at its next gather."""
    if _SHARED is not None:
        _SHARED.states.clear()


def _copy(state: KernelState) -> KernelState:
    """A caller's own view of a shared read (callers and apply() change link_index; objects are frozen)."""
    return KernelState(objects=dict(state.objects), link_index=dict(state.link_index),
                       route_protos={key: set(protos) for key, protos in state.route_protos.items()})


class Engine:
    """Reads and writes one network namespace (None = the one this process runs in) over one bare
    rtnetlink socket (shared with the other Engines of the namespace inside shared_reads())."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._pending: list[tuple[int, int, bytes, Change]] = []
        self._pending_phase: int | None = None
        self._shared = _SHARED
        try:
            self._nl = self._shared.socket(netns) if self._shared is not None else _Netlink(netns)
        except OSError as exc:
            where = f"network namespace {netns}" if netns else "this network namespace"
            raise EngineError(f"cannot open a netlink socket in {where}: {exc}") from exc

        self._own_generic: _Generic | None = None

    @property
    def _genl(self) -> _Generic:
        """The namespace's generic netlink socket, opened when first needed (most namespaces never need it)."""
        if self._shared is not None:
            return self._shared.generic_socket(self.netns)
        if self._own_generic is None:
            self._own_generic = _Generic(self.netns)
        return self._own_generic

    def close(self) -> None:
        if self._shared is None:
            self._nl.close()
        if self._own_generic is not None:
            self._own_generic.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- reading
    def gather(self, kinds: set[type], sysctls: Iterable[str] = ()) -> KernelState:
        """One dump per requested object kind.  Links are always read (names <-> indexes).  Inside
        shared_reads(): every kind, once per namespace until a write there."""
        if self._shared is None:
            return self._gather(kinds, sysctls)
        state = self._shared.states.get(self.netns)
        if state is None:
            every = ALL_KINDS if self.netns is None else ALL_KINDS - GENERIC_KINDS
            state = self._shared.states[self.netns] = self._gather(every)
            key = self.netns or ""
            self._shared.reads[key] = self._shared.reads.get(key, 0) + 1
        mine = _copy(state)
        mine.objects.update(read_sysctls(sysctls, self.netns))
        return mine

    def _gather(self, kinds: Collection[type], sysctls: Iterable[str] = ()) -> KernelState:
        nl, netns = self._nl, self.netns
        state = KernelState()
        objects, state.link_index = _parse_links(nl, netns)
        names = {index: name for name, index in state.link_index.items()}
        if Address in kinds:
            head = _IFADDRMSG.size
            for buf, off, end in nl.dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)):
                _unused, prefixlen, _unused, _unused, index = _IFADDRMSG.unpack_from(buf, off)
                attrs = _attrs(buf, off + head, end)
                raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
                dev = names.get(index)
                if dev and raw:
                    obj = Address(dev=dev, cidr=f"{_ip_text(raw)}/{prefixlen}", netns=netns)
                    objects[obj.key()] = obj
        # The three big dumps are decoded inline (no per-message attribute dict, no frozen-dataclass
        # __init__): at thousands of entries this is most of a no-op run's time.
        ntoa = socket.inet_ntoa
        if Neighbour in kinds:
            ndmsg = _NDMSG.unpack_from
            for buf, off, end in nl.dump(RTM_GETNEIGH, _NDMSG.pack(socket.AF_INET, 0, 0, 0, 0)):
                _unused, index, nud, _unused, _unused = ndmsg(buf, off)
                dev = names.get(index)
                if not dev:
                    continue
                dst, mac = _neigh_dst_lladdr(buf, off + 12, end)
                if dst:
                    dst = ntoa(dst) if len(dst) == 4 else _ip_text(dst)
                    objects[("neigh", netns, dev, dst)] = _make(
                        Neighbour, dev=dev, dst=dst, mac=mac.hex(":") if mac else None,
                        permanent=bool(nud & NUD_PERMANENT), netns=netns)
        if FdbEntry in kinds:
            vxlan_indexes = {state.link_index[o.name] for o in objects.values()
                             if isinstance(o, Link) and o.kind == "vxlan"}
            ndmsg = _NDMSG.unpack_from
            for buf, off, end in nl.dump(RTM_GETNEIGH, _NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0)):
                _unused, index, _unused, flags, _unused = ndmsg(buf, off)
                if index not in vxlan_indexes or not flags & NTF_SELF:
                    continue
                dst, mac = _neigh_dst_lladdr(buf, off + 12, end)
                if not mac:
                    continue
                dev, mac = names[index], mac.hex(":")
                objects[("fdb", netns, dev, mac)] = _make(
                    FdbEntry, dev=dev, mac=mac, dst=(ntoa(dst) if len(dst) == 4 else _ip_text(dst)) if dst else None,
                    netns=netns)
        if Route in kinds:
            rtmsg = _RTMSG.unpack_from
            u32 = _U32.unpack_from
            for buf, off, end in nl.dump(RTM_GETROUTE, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
                _unused, dst_len, _unused, _unused, table, proto, _unused, rtype, flags = rtmsg(buf, off)
                if rtype != RTN_UNICAST:
                    continue
                dst = gateway = oif = None
                multipath = False
                at = off + 12
                while at + 4 <= end:
                    length, kind = _NLA.unpack_from(buf, at)
                    if length < 4:
                        break
                    kind &= NLA_TYPE_MASK
                    if kind == RTA_DST:
                        dst = ntoa(buf[at + 4:at + 8])
                    elif kind == RTA_GATEWAY:
                        gateway = ntoa(buf[at + 4:at + 8])
                    elif kind == RTA_OIF:
                        oif = u32(buf, at + 4)[0]
                    elif kind == RTA_TABLE:
                        table = u32(buf, at + 4)[0]
                    elif kind == RTA_MULTIPATH:
                        multipath = length > 4
                    at += (length + 3) & ~3
                if table != MAIN_TABLE or multipath:
                    continue
                dst = f"{dst or '0.0.0.0'}/{dst_len}"
                key = ("route", netns, dst)
                state.route_protos.setdefault(key, set()).add(proto)
                kept = objects.get(key)
                if kept is not None and kept.proto == PODNET_RTPROTO:
                    continue
                objects[key] = _make(
                    Route, dst=dst, via=gateway, dev=names.get(oif) if oif else None,
                    onlink=bool(flags & RTNH_F_ONLINK), proto=proto, netns=netns)
        if FouPort in kinds:
            objects.update(_fou_ports(self._genl))
        if WireguardDevice in kinds or WireguardPeer in kinds:
            for link in [o for o in objects.values() if isinstance(o, Link) and o.kind == "wireguard"]:
                objects.update(_wg_read(self._genl, link.name, state.link_index[link.name]))
        state.objects = objects
        objects.update(read_sysctls(sysctls, netns))
        return state

    def apply(self, changes: list[Change], state: KernelState) -> None:
        """Write the changes in order; a failure names the object and the equivalent command.

        Addresses, neighbours, fdb entries and routes are queued and sent in batches; a batch is sent
        (and its acknowledgements collected) before any link or sysctl change, before a device index
        has to be looked up, and whenever the planner's phase changes, so no batch crosses a
        dependency.  Entries before a failing one have been applied when the error is raised."""
        if changes and self._shared is not None:  # what the next gather sees must be the kernel's
            if any(isinstance(c.obj, Link) and (c.op == "delete" or c.obj.peer_netns) for c in changes):
                self._shared.states.clear()  # a veth's other end is in another namespace, unknown to a dump
            else:
                self._shared.forget(self.netns)
        try:
            for change in changes:
                if self._queue(change, state):
                    continue
                self._flush()
                try:
                    self._apply_one(change, state)
                except NetlinkError as exc:
                    if not _fatal(change, exc.code):
                        continue  # already gone (e.g. routes removed together with their device)
                    raise EngineError(f"{'; '.join(change.commands)}: {exc}") from exc
                except OSError as exc:
                    raise EngineError(f"{'; '.join(change.commands)}: {exc}") from exc
            self._flush()
        finally:
            self._pending = []
            self._pending_phase = None

    def _flush(self) -> None:
        pending, self._pending, self._pending_phase = self._pending, [], None
        if not pending:
            return
        try:
            failures = self._nl.write(pending, _fatal)  # type: ignore[union-attr]
        except (OSError, NetlinkError) as exc:  # the socket failed (e.g. ENOBUFS): name the whole batch
            first, last = pending[0][3], pending[-1][3]
            raise EngineError(f"{'; '.join(first.commands)} ... {'; '.join(last.commands)} "
                              f"({len(pending)} messages): {exc}") from exc
        fatal = [(change, exc) for change, exc in failures if _fatal(change, exc.code)]
        if fatal:
            change, exc = fatal[0]
            more = f" (and {len(fatal) - 1} more failed in the same batch)" if len(fatal) > 1 else ""
            raise EngineError(f"{'; '.join(change.commands)}: {exc}{more}") from exc

    def wait_operational(self, name: str, timeout: float = OPERATIONAL_WAIT) -> bool:
        """Wait until the device's operational state is up; whether it came up within `timeout` seconds.

        A device brought up while it has no carrier (a veth end whose peer is still down) has its transmit
        queue attached only when the kernel's link watcher handles the carrier coming on, which waits for the
        rtnl lock: until then it drops every packet it sends. A pod answered by proxy ARP through such a veth
        loses that first answer and asks again a second later, its queued packets overflowing meanwhile; the
        operational state turns up in the same step that attaches the queue."""
        query = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _nla_text(IFLA_IFNAME, name)
        deadline = time.monotonic() + timeout
        while True:
            try:
                buf, off, end = self._nl.request(RTM_GETLINK, query)
            except NetlinkError:
                return False  # gone: nothing to wait for
            state = _attrs(buf, off + _IFINFOMSG.size, end).get(IFLA_OPERSTATE)
            if state is not None and state[0] == IF_OPER_UP:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def _index(self, state: KernelState, name: str) -> int:
        if name not in state.link_index:
            self._flush()  # whatever is queued goes first: the lookup must see the kernel as it is
            try:
                query = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _nla_text(IFLA_IFNAME, name)
                buf, off, _unused = self._nl.request(RTM_GETLINK, query)
                found = [_IFINFOMSG.unpack_from(buf, off)[2]]
            except NetlinkError:
                found = []
            if not found:
                raise EngineError(f"device {name} does not exist")
            state.link_index[name] = found[0]
        return state.link_index[name]

    def _queue(self, change: Change, state: KernelState) -> bool:
        """Encode an address/neighbour/fdb/route change into the pending batch; False: a link or sysctl."""
        obj = change.obj
        kind = type(obj)
        if kind not in (Address, Neighbour, FdbEntry, Route):
            return False
        phase = _PHASES[(change.op, kind)]
        if self._pending and phase != self._pending_phase:
            self._flush()
        dev = getattr(obj, "dev", None)
        index = self._index(state, dev) if dev else 0
        try:
            messages = _encode(change, obj, index)
        except (ValueError, OSError) as exc:  # validated input never gets here: say what could not be sent
            raise EngineError(f"{'; '.join(change.commands)}: cannot be sent over netlink: {exc}") from exc
        self._pending_phase = phase
        self._pending += [(msgtype, flags, body, change) for msgtype, flags, body in messages]
        return True

    def _apply_one(self, change: Change, state: KernelState) -> None:
        obj = change.obj
        if isinstance(obj, Link):
            self._apply_link(change, obj, state)
        elif isinstance(obj, FouPort):
            _fou_write(self._genl, change)
        elif isinstance(obj, (WireguardDevice, WireguardPeer)):
            if change.op == "delete" and obj.dev not in state.link_index:
                return  # gone with its device
            messages = _wg_messages(change, self._index(state, obj.dev))
            if messages:
                family = self._genl.loaded("wireguard", WG_GENL_NAME)
                for _unused, exc in self._genl.nl.write([(family, flags, body, change) for flags, body in messages],
                                                        _fatal):
                    raise exc
        elif isinstance(obj, Sysctl):
            write_sysctl(obj)
        else:
            raise EngineError(f"{'; '.join(change.commands)}: cannot be encoded (not IPv4)")

    def _send(self, messages: list[tuple[int, int, bytes]], change: Change) -> None:
        """Messages that must be acknowledged before the next step (a link's index is looked up next)."""
        failures = self._nl.write([(kind, flags, body, change) for kind, flags, body in messages], _fatal)
        for _unused, exc in failures:
            raise exc

    def _apply_link(self, change: Change, link: Link, state: KernelState) -> None:
        if change.op == "delete":
            self._send(_link_messages(change, link, self._index(state, link.name), lambda _name: 0), change)
            state.link_index.pop(link.name, None)
            return
        if change.op == "add":
            if link.ipip is not None and link.ipip.encap_dport:
                self._genl.loaded("fou", FOU_GENL_NAME)
            peer_fd = None
            if link.kind == "veth" and link.peer_netns:
                peer_fd = os.open(netns_path(link.peer_netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._send(_link_messages(change, link, 0, lambda name: self._index(state, name), peer_fd), change)
            finally:
                if peer_fd is not None:
                    os.close(peer_fd)
            state.link_index.pop(link.name, None)
            # the alias (and the master, and up) in a second message: the kernel sets no alias at creation
            change = Change("update", link, None, ["alias", "master", "up"])
        messages = _link_messages(change, link, self._index(state, link.name), lambda name: self._index(state, name))
        if messages:
            self._send(messages, change)
