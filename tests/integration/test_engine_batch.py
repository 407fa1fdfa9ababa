"""The engine's netlink path against a real kernel, in namespaces of the test's own, with pyroute2 as the
reference (pyroute2_reference.py).

Batched writes must leave exactly the state one pyroute2 call per object would, map a failure in the
middle of a batch back to the object that caused it (earlier entries applied), ignore deletes of what
is already gone, and a re-run must plan (and write) nothing.  The bare-socket dumps must read what
pyroute2 reads, the encoded messages must be the ones pyroute2 sends, and links made, changed and
deleted by the engine must be the links pyroute2 makes; the engine never imports pyroute2.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import select
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel import netlink
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import vxlan_peer_objects
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    Engine,
    EngineError,
    plan,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    Address,
    FdbEntry,
    Link,
    Neighbour,
    Route,
    VxlanInfo,
)

from tests.integration.pyroute2_reference import Reference

pytestmark = pytest.mark.integration


DEVICE = "flannel.1"
LOCAL = "172.30.0.11"
KINDS = {Address, Neighbour, FdbEntry, Route}


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"ptest{secrets.token_hex(3)}-eb"
    sh("ip", "netns", "add", name)
    try:
        for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                    ["link", "set", "eth0p", "up"],
                    ["addr", "add", f"{LOCAL}/16", "dev", "eth0"],
                    ["link", "set", "eth0", "up"],
                    ["link", "add", DEVICE, "type", "vxlan", "id", "1", "local", LOCAL, "dev", "eth0",
                     "dstport", "8472", "nolearning"],
                    ["link", "set", DEVICE, "up"]):
            sh("ip", "-n", name, *cmd)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def peers(n: int, start: int = 1) -> list[dict]:
    return [{"vtep_ip": f"10.{160 + i // 256}.{i % 256}.0", "mac": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
             "node_ip": f"172.30.{1 + i // 256}.{i % 256}"} for i in range(start, start + n)]


def wanted(ns: str, items: list[dict], dev: str = DEVICE) -> list:
    objs = [dataclasses.replace(o, netns=ns) for o in vxlan_peer_objects(dev, items)]
    return objs + [Route(dst=f"{p['vtep_ip']}/24", via=p["vtep_ip"], dev=dev, onlink=True, netns=ns)
                   for p in items]


def kernel_state(ns: str, dev: str = DEVICE) -> tuple[set, set, set]:
    fdb = {(e["mac"], e.get("dst")) for e in json.loads(sh("bridge", "-n", ns, "-j", "fdb", "show", "dev", dev))
           if e.get("dst") and e["mac"] != "00:00:00:00:00:00"}
    neigh = {(e["dst"], e.get("lladdr")) for e in json.loads(sh("ip", "-n", ns, "-j", "neigh", "show", "dev", dev))
             if "PERMANENT" in e.get("state", [])}
    routes = {(r["dst"], r.get("gateway"), r.get("dev"), "onlink" in r.get("flags", []))
              for r in json.loads(sh("ip", "-n", ns, "-j", "route", "show", "proto", "152"))}
    return fdb, neigh, routes


def expected(items: list[dict], dev: str = DEVICE) -> tuple[set, set, set]:
    return ({(p["mac"], p["node_ip"]) for p in items},
            {(p["vtep_ip"], p["mac"]) for p in items},
            {(f"{p['vtep_ip']}/24", p["vtep_ip"], dev, True) for p in items})


def converge(ns: str, want: list) -> list[Change]:
    with Engine(ns) as engine:
        have = engine.gather(KINDS)
        changes = plan(want, have)
        engine.apply(changes, have)
    return changes


def converge_reference(ns: str, want: list) -> list[Change]:
    """The same plan, written by pyroute2, one call per object."""
    with Reference(ns) as reference:
        changes = plan(want, reference.gather(KINDS))
        reference.apply(changes)
    return changes


class Monitor:
    """Listens for link/address/route/neighbour notifications in the namespace."""

    def __init__(self, ns: str):
        self.sock = netlink._netlink_socket(ns)
        self.sock.bind((0, 0x1 | 0x4 | 0x10 | 0x40))

    def count(self) -> int:
        seen = 0
        while select.select([self.sock], [], [], 0.1)[0]:
            buf = self.sock.recv(1 << 17)
            off = 0
            while off + 16 <= len(buf):
                length, kind = struct.unpack_from("=IH", buf, off)
                seen += kind in (16, 17, 20, 21, 24, 25, 28, 29)
                off += (length + 3) & ~3
        return seen


def test_batched_apply_gives_exact_state_and_noop_rerun(ns):
    items = peers(300)  # > 256: more than one chunk per phase
    want = wanted(ns, items) + [Address(dev=DEVICE, cidr="10.160.0.0/32", netns=ns)]
    changes = converge(ns, want)
    assert len(changes) == 3 * len(items) + 1
    assert kernel_state(ns) == expected(items)
    assert "10.160.0.0/32" in sh("ip", "-n", ns, "-br", "addr", "show", "dev", DEVICE)

    monitor = Monitor(ns)
    monitor.count()
    with Engine(ns) as engine:
        have = engine.gather(KINDS)
        for obj in want:
            assert have.objects[obj.key()] == obj
        assert plan(want, have) == []
        engine.apply([], have)
    assert monitor.count() == 0, "a no-op run wrote to the kernel"
    monitor.sock.close()


def test_bare_dumps_read_what_pyroute2_reads(ns):
    sh("ip", "-n", ns, "link", "add", "cni0", "type", "bridge")
    sh("ip", "-n", ns, "link", "set", "cni0", "up", "alias", "podnet:bridge", "mtu", "1400")
    sh("ip", "-n", ns, "link", "set", "eth0p", "master", "cni0")
    sh("ip", "-n", ns, "addr", "add", "10.244.0.1/24", "dev", "cni0")
    sh("ip", "-n", ns, "route", "add", "10.244.9.9/32", "dev", "cni0", "proto", "152")
    sh("ip", "-n", ns, "route", "add", "default", "via", "172.30.0.1")
    sh("ip", "-n", ns, "route", "add", "10.99.0.0/16", "via", "172.30.0.1", "table", "100")
    converge(ns, wanted(ns, peers(20)))
    with Engine(ns) as fast, Reference(ns) as slow:
        a, b = fast.gather(KINDS), slow.gather(KINDS)

    def stable(state):  # kernel-made multicast/incomplete neighbours come and go between two dumps
        return {k: v for k, v in state.objects.items() if not (isinstance(v, Neighbour) and not v.permanent)}

    assert a.link_index == b.link_index
    assert stable(a) == stable(b)
    assert a.objects[("link", ns, DEVICE)].vxlan == VxlanInfo(vni=1, port=8472, local=LOCAL, underlay="eth0",
                                                             learning=False)
    assert a.objects[("link", ns, "cni0")].alias == "podnet:bridge"
    assert a.objects[("link", ns, "eth0p")].master == "cni0"


def test_error_mid_batch_names_the_route_and_keeps_earlier_entries(ns):
    items = peers(40)
    with Engine(ns) as engine:
        have = engine.gather(KINDS)
        have.link_index["ghost"] = 999999  # a device index the kernel does not have
        bad = Route(dst="10.200.0.0/24", via="10.200.0.0", dev="ghost", onlink=True, netns=ns)
        want = wanted(ns, items)
        want.insert(len(want) - 10, bad)  # among the routes, with 30 before and 10 after it
        changes = plan(want, have)
        with pytest.raises(EngineError) as caught:
            engine.apply(changes, have)
    message = str(caught.value)
    assert message.startswith(f"ip netns exec {ns} ip route add 10.200.0.0/24 via 10.200.0.0 dev ghost onlink proto 152: ")
    assert "No such device" in message
    fdb, neigh, routes = kernel_state(ns)
    want_fdb, want_neigh, want_routes = expected(items)
    assert fdb == want_fdb and neigh == want_neigh  # earlier phases went through
    earlier = {r for r in want_routes if r[0] in {f"{p['vtep_ip']}/24" for p in items[:30]}}
    assert earlier <= routes  # earlier routes of the same batch were applied


def test_error_on_deleted_device_names_the_neighbour(ns):
    sh("ip", "-n", ns, "link", "add", "gone", "type", "veth", "peer", "name", "gone-p")
    with Engine(ns) as engine:
        have = engine.gather(KINDS)
        assert "gone" in have.link_index
        sh("ip", "-n", ns, "link", "del", "gone")
        good = [Neighbour(dev=DEVICE, dst=f"10.170.0.{i}", mac=f"02:00:00:00:aa:{i:02x}", netns=ns)
                for i in range(1, 6)]
        bad = Neighbour(dev="gone", dst="10.171.0.1", mac="02:00:00:00:bb:01", netns=ns)
        with pytest.raises(EngineError) as caught:
            engine.apply([Change("add", o, None) for o in [*good, bad]], have)
    assert str(caught.value).startswith(
        f"ip netns exec {ns} ip neigh add 10.171.0.1 dev gone lladdr 02:00:00:00:bb:01: ")
    _, neigh, _ = kernel_state(ns)
    assert {(o.dst, o.mac) for o in good} <= neigh


def test_delete_of_missing_objects_is_ignored(ns):
    items = peers(10)
    converge(ns, wanted(ns, items))
    missing = wanted(ns, peers(5, start=100))  # never programmed
    present = [o for o in wanted(ns, items[:3])]
    with Engine(ns) as engine:
        have = engine.gather(KINDS)
        engine.apply(sorted([Change("delete", None, o) for o in missing + present], key=Change.sort_key), have)
    assert kernel_state(ns) == expected(items[3:])
    with Engine(ns) as engine:  # deleting again: everything is already gone, still no error
        have = engine.gather(KINDS)
        engine.apply(sorted([Change("delete", None, o) for o in present], key=Change.sort_key), have)


def test_device_route_delete_matches_any_scope(ns):
    route = Route(dst="10.180.0.5/32", dev=DEVICE, netns=ns)
    converge(ns, [route])
    assert "10.180.0.5 dev flannel.1" in sh("ip", "-n", ns, "route", "show", "proto", "152")
    with Engine(ns) as engine:
        have = engine.gather(KINDS)
        engine.apply([Change("delete", None, have.objects[route.key()])], have)
    assert "10.180.0.5" not in sh("ip", "-n", ns, "route", "show")


def test_fdb_update_moves_the_remote_and_matches_the_per_call_path(ns):
    items = peers(5)
    converge(ns, wanted(ns, items))
    moved = [dict(p, node_ip=f"172.30.9.{i + 1}") for i, p in enumerate(items)]
    changes = converge(ns, wanted(ns, moved))
    assert [c.op for c in changes] == ["update"] * 5
    assert all(isinstance(c.obj, FdbEntry) for c in changes)
    assert kernel_state(ns) == expected(moved)  # exactly one remote per MAC
    back = converge_reference(ns, wanted(ns, items))
    assert len(back) == 5 and kernel_state(ns) == expected(items)


def test_links_and_batched_entries_in_one_apply(ns):
    vtep = Link(name="vx2", kind="vxlan", mtu=1400, up=True, alias="podnet:test", netns=ns,
                vxlan=VxlanInfo(vni=2, port=4789, local=LOCAL, underlay="eth0"))
    items = peers(30)
    changes = converge(ns, [vtep, *wanted(ns, items, dev="vx2"), Address(dev="vx2", cidr="10.250.0.0/32", netns=ns)])
    assert changes[0].obj == vtep
    assert kernel_state(ns, "vx2") == expected(items, "vx2")
    assert converge(ns, [vtep, *wanted(ns, items, dev="vx2")]) == []


def _capture(calls) -> list[tuple[int, int, bytes]]:
    """(type, flags, body) of every netlink message pyroute2 sends while running `calls`."""
    sent: list[bytes] = []
    originals = socket.socket.send, socket.socket.sendto

    def send(self, data, *args):
        sent.append(bytes(data))
        return originals[0](self, data, *args)

    def sendto(self, data, *args):
        sent.append(bytes(data))
        return originals[1](self, data, *args)

    socket.socket.send, socket.socket.sendto = send, sendto
    try:
        calls()
    finally:
        socket.socket.send, socket.socket.sendto = originals
    out = []
    for data in sent:
        length, kind, flags, _, _ = struct.unpack_from("=IHHII", data)
        out.append((kind, flags, data[16:length]))
    return out


def test_encoded_messages_are_the_ones_pyroute2_sends(ns):
    """Same bytes as the per-call path, except route deletes (scope 'nowhere', as `ip route del`)."""
    with Engine(ns) as engine, Reference(ns) as slow:
        have = engine.gather(KINDS)
        index = have.link_index[DEVICE]
        neigh = Neighbour(dev=DEVICE, dst="10.190.0.1", mac="02:00:00:00:cc:01", netns=ns)
        fdb = FdbEntry(dev=DEVICE, mac="02:00:00:00:cc:01", dst="172.30.5.5", netns=ns)
        fdb_moved = dataclasses.replace(fdb, dst="172.30.5.6")
        route = Route(dst="10.190.0.0/24", via="10.190.0.1", dev=DEVICE, onlink=True, netns=ns)
        address = Address(dev=DEVICE, cidr="10.190.0.0/32", netns=ns)
        cases = [Change("add", address, None), Change("add", neigh, None), Change("add", fdb, None),
                 Change("update", fdb_moved, fdb, ["dst"]), Change("add", route, None),
                 Change("delete", None, neigh), Change("delete", None, fdb_moved), Change("delete", None, address)]
        for change in cases:
            theirs = _capture(lambda change=change: slow.apply([change]))
            theirs = [m for m in theirs if m[0] not in (netlink.RTM_GETLINK,)]
            ours = [(kind, flags | netlink.NLM_F_ACK, body)
                    for kind, flags, body in netlink._encode(change, change.obj, index)]
            assert ours == theirs, change.commands


# ------------------------------------------------------------------------------------------------ links

_LINK_NOISE = {"ifindex", "link_index", "link_netnsid", "stats", "stats64", "address", "broadcast", "link"}


def link_state(ns: str, names: list[str]) -> dict:
    """What `ip -d -j link` shows of these devices, without kernel numbering and random MACs; bridge and
    bridge-port timers run down from creation and are dropped too."""
    out = {}
    for link in json.loads(sh("ip", "-n", ns, "-d", "-j", "link", "show")):
        if link["ifname"] not in names:
            continue
        kept = {k: v for k, v in link.items() if k not in _LINK_NOISE}
        info = dict(kept.get("linkinfo") or {})
        info.pop("info_data", None) if info.get("info_kind") == "bridge" else None
        info.pop("info_slave_data", None)
        kept["linkinfo"] = info
        kept["fixed_mac"] = link["address"] if link["ifname"] in FIXED_MACS else None
        out[link["ifname"]] = kept
    return out


FIXED_MACS = {"vx9", "br9"}


def links_for(ns: str, pod_ns: str) -> list:
    return [
        Link(name="br9", kind="bridge", mtu=1400, mac="02:00:00:00:99:01", up=True, alias="podnet:bridge", netns=ns),
        Link(name="vx9", kind="vxlan", mtu=1450, mac="02:00:00:00:99:02", up=True, alias="podnet:vtep", netns=ns,
             vxlan=VxlanInfo(vni=9, port=4789, local=LOCAL, underlay="eth0", learning=False)),
        Link(name="veth9", kind="veth", peer="eth9", peer_netns=pod_ns, mtu=1400, up=True, master="br9",
             alias="podnet:pod", netns=ns),
    ]


@pytest.fixture
def twin() -> Iterator[tuple[str, str, str, str]]:
    """Two namespaces set up alike (eth0 with LOCAL), each with a pod namespace: (ns, pod, ns, pod)."""
    names = [f"ptest{secrets.token_hex(3)}-{s}" for s in ("la", "lp", "ra", "rp")]
    try:
        for name in names:
            sh("ip", "netns", "add", name)
        for name in names[0::2]:
            sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
            sh("ip", "-n", name, "addr", "add", f"{LOCAL}/16", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
        yield names[0], names[1], names[2], names[3]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_links_made_changed_and_deleted_by_the_engine_are_pyroute2s(twin):
    ours, our_pod, theirs, their_pod = twin
    names = ["br9", "vx9", "veth9"]

    def both(step) -> None:
        """Plan against each side's own kernel, apply with the engine on one and pyroute2 on the other."""
        with Engine(ours) as engine:
            have = engine.gather(set())
            engine.apply(step(ours, our_pod, have), have)
        with Reference(theirs) as reference:
            reference.apply(step(theirs, their_pod, reference.gather(set())))
        assert link_state(ours, names) == link_state(theirs, names)
        assert link_state(our_pod, ["eth9"]) == link_state(their_pod, ["eth9"])

    both(lambda ns, pod, have: plan(links_for(ns, pod), have))
    made = link_state(ours, names)
    assert made["vx9"]["group"] == "152" and made["veth9"]["master"] == "br9" and made["vx9"]["ifalias"] == "podnet:vtep"
    assert made["vx9"]["linkinfo"]["info_data"]["port"] == 4789 and made["vx9"]["fixed_mac"] == "02:00:00:00:99:02"
    assert link_state(our_pod, ["eth9"])["eth9"]["mtu"] == 1400
    with Engine(ours) as engine:
        assert plan(links_for(ours, our_pod), engine.gather(set())) == []  # read back exactly as wanted

    def changed(ns, pod, have):
        want = [dataclasses.replace(o, mtu=1300, up=o.name != "vx9", alias="" if o.name == "br9" else o.alias)
                for o in links_for(ns, pod)]
        return plan(want, have)
    both(changed)
    after = link_state(ours, names)
    assert after["vx9"]["mtu"] == 1300 and "UP" not in after["vx9"]["flags"] and "ifalias" not in after["br9"]

    both(lambda ns, pod, have: [Change("delete", None, have.objects[("link", ns, name)]) for name in ("veth9", "vx9")])
    assert set(link_state(ours, names)) == {"br9"} and link_state(our_pod, ["eth9"]) == {}


def test_the_engine_runs_without_pyroute2(ns):
    """A whole apply (links, entries, routes, a sysctl) in a Python that cannot import pyroute2."""
    code = f"""
import sys
class NoPyroute2:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pyroute2":
            raise ImportError("pyroute2 is not installed here")
sys.meta_path.insert(0, NoPyroute2())
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import Engine, plan
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import Link, Route, Address
want = [Link(name="br8", kind="bridge", mtu=1400, up=True, alias="podnet:bridge", netns={ns!r}),
        Address(dev="br8", cidr="10.88.0.1/24", netns={ns!r}),
        Route(dst="10.89.0.0/24", via="10.88.0.2", dev="br8", proto=152, netns={ns!r})]
with Engine({ns!r}) as engine:
    have = engine.gather({{Address, Route}})
    engine.apply(plan(want, have), have)
print(sorted(m for m in sys.modules if m.startswith("pyroute2")))
"""
    import os
    import sys
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "10.89.0.0/24 via 10.88.0.2 dev br8 proto 152" in sh("ip", "-n", ns, "route", "show")
    assert json.loads(sh("ip", "-n", ns, "-j", "link", "show", "br8"))[0]["ifalias"] == "podnet:bridge"


def test_wait_operational_returns_once_a_veth_end_can_send(ns):
    """A veth end brought up before its peer has no carrier; once the peer comes up, the kernel's link watcher
    turns its operational state up (and only then attaches its transmit queue): wait_operational waits for that,
    gives up after its timeout, and finds nothing to wait for on a device that is not there."""
    sh("ip", "-n", ns, "link", "add", "host9", "type", "veth", "peer", "name", "pod9")
    sh("ip", "-n", ns, "link", "set", "host9", "up")
    with Engine(ns) as engine:
        assert engine.wait_operational("host9", timeout=0.2) is False
        assert json.loads(sh("ip", "-n", ns, "-j", "link", "show", "host9"))[0]["operstate"] != "UP"
        sh("ip", "-n", ns, "link", "set", "pod9", "up")
        assert engine.wait_operational("host9") is True
        assert json.loads(sh("ip", "-n", ns, "-j", "link", "show", "host9"))[0]["operstate"] == "UP"
        assert engine.wait_operational("nosuch9", timeout=0.2) is False
