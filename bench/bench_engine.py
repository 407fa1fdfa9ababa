"""Engine benchmark (issue 8, parts 1 and 2): program N VXLAN peers, and re-run with nothing to do.

Each peer is one static fdb entry, one permanent neighbour and one onlink route on a VXLAN device, in
a network namespace of our own (``pbench<random>-...``, always deleted afterwards). For N = 100,
1,000 and 5,000 (``--quick``: 100 and 1,000) it times, in the same run:

- engine: podnet's engine in-process (Engine + gather + plan + apply, imports excluded);
- ip-batch: ``ip -batch`` + ``bridge -batch`` of the same commands (the floor);
- module: the whole ``podnet.dataplane.vxlan_fdb`` + ``podnet.dataplane.pod_route`` modules run by
  ``ansible-playbook`` through the repo's netns connection plugin;
- loop (N = 100 only): a per-item loop of ``ansible.builtin.command`` tasks, what roles usually do;
- no-op: engine gather + plan on state that is already right vs ``ip -j route`` + ``ip -j neigh`` +
  ``bridge -j fdb``; it must plan nothing and write nothing (a netlink monitor listens);
- per-call (N = 100): pyroute2, one synchronous call per object (the old engine; now the reference the
  tests hold the engine to, tests/integration/pyroute2_reference.py).

Times are the best of ``--repeat`` runs. Every run's end state is checked (counts of fdb entries,
neighbours and routes); the script exits non-zero when a check fails. Targets (N = 1,000): engine
<= 2x ip-batch, module run per peer >= 50x faster than the loop per peer, no-op <= 3x the dumps.

    python bench/bench_engine.py [--quick] [--sizes 100,1000] [--repeat 5] [--no-ansible]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import re
import resource
import secrets
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "collections"))
sys.path.insert(0, str(REPO))

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel import netlink  # noqa: E402
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import vxlan_peer_objects  # noqa: E402
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (  # noqa: E402
    Address,
    FdbEntry,
    Neighbour,
    Route,
)

DEVICE = "flannel.1"
LOCAL = "172.30.0.11"
PROTO = 152
BIN = Path(sys.executable).parent
SIZES = (100, 1000, 5000)
QUICK_SIZES = (100, 1000)
LOOP_N = 100


class CheckFailed(Exception):
    pass


def peers_for(n: int) -> list[dict]:
    """Peer i: VTEP 10.(160+)... /24 subnets of 10.160.0.0/11, node IPs in 172.30.0.0/16."""
    base = int(ipaddress.ip_address("10.160.0.0"))
    nodes = int(ipaddress.ip_address("172.30.1.0"))
    return [{"vtep_ip": str(ipaddress.ip_address(base + i * 256)),
             "mac": f"02:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01",
             "node_ip": str(ipaddress.ip_address(nodes + i))} for i in range(1, n + 1)]


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)


@contextmanager
def namespace(tag: str, with_vtep: bool = True):
    """A fresh namespace with eth0 (a veth whose peer stays inside) and, optionally, the VTEP."""
    name = f"pbench{secrets.token_hex(3)}-{tag}"
    run("ip", "netns", "add", name)
    try:
        for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                    ["link", "set", "eth0p", "up"],
                    ["addr", "add", f"{LOCAL}/16", "dev", "eth0"],
                    ["link", "set", "eth0", "up"]):
            run("ip", "-n", name, *cmd)
        if with_vtep:
            run("ip", "-n", name, "link", "add", DEVICE, "type", "vxlan", "id", "1", "local", LOCAL,
                "dev", "eth0", "dstport", "8472", "nolearning")
            run("ip", "-n", name, "link", "set", DEVICE, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def wanted(ns: str, peers: list[dict]) -> list:
    objs = [dataclasses.replace(o, netns=ns) for o in vxlan_peer_objects(DEVICE, peers)]
    return objs + [Route(dst=f"{p['vtep_ip']}/24", via=p["vtep_ip"], dev=DEVICE, onlink=True, netns=ns)
                   for p in peers]


def check_state(ns: str, peers: list[dict], what: str) -> None:
    """The namespace holds exactly the peers' fdb entries, neighbours and routes."""
    fdb = json.loads(run("bridge", "-n", ns, "-j", "fdb", "show", "dev", DEVICE).stdout)
    fdb = {(e["mac"], e.get("dst")) for e in fdb if e.get("dst") and e["mac"] != "00:00:00:00:00:00"}
    neigh = json.loads(run("ip", "-n", ns, "-j", "neigh", "show", "dev", DEVICE).stdout)
    neigh = {(e["dst"], e.get("lladdr")) for e in neigh if "PERMANENT" in e.get("state", [])}
    routes = json.loads(run("ip", "-n", ns, "-j", "route", "show", "proto", str(PROTO)).stdout)
    routes = {(r["dst"], r.get("gateway"), r.get("dev"), "onlink" in r.get("flags", [])) for r in routes}
    want_fdb = {(p["mac"], p["node_ip"]) for p in peers}
    want_neigh = {(p["vtep_ip"], p["mac"]) for p in peers}
    want_routes = {(f"{p['vtep_ip']}/24", p["vtep_ip"], DEVICE, True) for p in peers}
    problems = []
    for label, have, want in (("fdb", fdb, want_fdb), ("neigh", neigh, want_neigh), ("routes", routes, want_routes)):
        if have != want:
            problems.append(f"{label}: {len(have)} present, {len(want)} wanted, "
                            f"{len(want - have)} missing, {len(have - want)} unexpected")
    if problems:
        raise CheckFailed(f"{what} (N={len(peers)}): " + "; ".join(problems))


class Monitor:
    """Counts podnet-relevant netlink notifications in a namespace (writes during a no-op run)."""

    GROUPS = 0x1 | 0x4 | 0x10 | 0x40  # RTMGRP_LINK | NEIGH | IPV4_IFADDR | IPV4_ROUTE

    def __init__(self, ns: str):
        self.sock = netlink._netlink_socket(ns)
        self.sock.bind((0, self.GROUPS))

    def events(self) -> int:
        count = 0
        while select.select([self.sock], [], [], 0.05)[0]:
            buf = self.sock.recv(1 << 17)
            off = 0
            while off + 16 <= len(buf):
                length, kind = struct.unpack_from("=IH", buf, off)
                if kind in (20, 21, 24, 25, 28, 29):  # addr, route and neighbour/fdb add/delete
                    count += 1
                elif kind in (16, 17):  # link changes only count when they are not just stats
                    count += 1
                off += (length + 3) & ~3
        return count

    def close(self) -> None:
        self.sock.close()


class Clock:
    """Wall time and CPU time (this process + finished children: user + system, which includes the
    kernel's work in our syscalls).  On a loaded machine CPU time is the steadier of the two."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.cpu = self._cpu()

    @staticmethod
    def _cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


def best(repeat: int, measure: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """Best wall time and best CPU time of `repeat` runs."""
    runs = [measure() for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


# ------------------------------------------------------------------------------ measurements
def engine_apply(peers: list[dict], per_call: bool = False) -> tuple[float, float]:
    """The engine, or (per_call) pyroute2 one call per object, planned and applied in-process."""
    from tests.integration.pyroute2_reference import Reference

    with namespace("eng") as ns:
        want = wanted(ns, peers)
        clock = Clock()
        with (Reference if per_call else netlink.Engine)(ns) as engine:
            have = engine.gather({Address, Neighbour, FdbEntry, Route})
            changes = netlink.plan(want, have)
            engine.apply(changes) if per_call else engine.apply(changes, have)
        elapsed = clock.stop()
        if len(changes) != 3 * len(peers):
            raise CheckFailed(f"engine planned {len(changes)} changes for {len(peers)} peers")
        check_state(ns, peers, f"engine{' per-call' if per_call else ''}")
    return elapsed


def ip_batch(peers: list[dict]) -> tuple[float, float]:
    with namespace("ipb") as ns, tempfile.TemporaryDirectory(prefix="pbench") as tmp:
        ip_file, bridge_file = Path(tmp, "ip.batch"), Path(tmp, "bridge.batch")
        ip_file.write_text("".join(
            f"neigh add {p['vtep_ip']} dev {DEVICE} lladdr {p['mac']} nud permanent\n" for p in peers) + "".join(
            f"route add {p['vtep_ip']}/24 via {p['vtep_ip']} dev {DEVICE} onlink proto {PROTO}\n" for p in peers))
        bridge_file.write_text("".join(f"fdb add {p['mac']} dst {p['node_ip']} dev {DEVICE}\n" for p in peers))
        clock = Clock()
        run("bridge", "-n", ns, "-batch", str(bridge_file))
        run("ip", "-n", ns, "-batch", str(ip_file))
        elapsed = clock.stop()
        check_state(ns, peers, "ip -batch")
    return elapsed


def noop(peers: list[dict], repeat: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(engine gather + plan, ip/bridge -j dumps) on a namespace that already holds the peers."""
    with namespace("noop") as ns:
        want = wanted(ns, peers)
        with netlink.Engine(ns) as engine:
            have = engine.gather({Address, Neighbour, FdbEntry, Route})
            engine.apply(netlink.plan(want, have), have)
        check_state(ns, peers, "no-op setup")
        monitor = Monitor(ns)
        try:
            monitor.events()  # drain anything left from the setup

            def engine_run() -> tuple[float, float]:
                clock = Clock()
                with netlink.Engine(ns) as engine:
                    have = engine.gather({Address, Neighbour, FdbEntry, Route})
                    changes = netlink.plan(want, have)
                    engine.apply(changes, have)
                elapsed = clock.stop()
                if changes:
                    raise CheckFailed(f"no-op run planned {len(changes)} changes: {changes[0].commands}")
                return elapsed

            engine_time = best(repeat, engine_run)
            written = monitor.events()
            if written:
                raise CheckFailed(f"no-op run wrote to the kernel ({written} netlink notifications)")
        finally:
            monitor.close()

        def dumps() -> tuple[float, float]:
            clock = Clock()
            run("ip", "-n", ns, "-j", "route")
            run("ip", "-n", ns, "-j", "neigh")
            run("bridge", "-n", ns, "-j", "fdb")
            return clock.stop()

        return engine_time, best(repeat, dumps)


# ------------------------------------------------------------------------------ ansible
def ansible_env() -> dict:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default",
               PATH=f"{BIN}:{env.get('PATH', '')}")
    return env


def playbook(ns: str, tmp: Path, tasks: list[dict], extra: dict) -> tuple[float, dict]:
    inventory = {"all": {"hosts": {"bench": {
        "ansible_connection": "podnet.lab.netns", "ansible_netns_name": ns,
        "ansible_python_interpreter": sys.executable}}}}
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "vars.json").write_text(json.dumps(extra))
    (tmp / "play.json").write_text(json.dumps([{"hosts": "bench", "gather_facts": False, "tasks": tasks}]))
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp / "inventory.json"),
                           "-e", f"@{tmp / 'vars.json'}", str(tmp / "play.json")],
                          capture_output=True, text=True, env=ansible_env(), cwd=REPO, check=False)
    elapsed = time.perf_counter() - start
    recap = re.search(r"^bench\s+:\s+(.*)$", proc.stdout, re.MULTILINE)
    if proc.returncode or recap is None:
        raise CheckFailed(f"ansible-playbook failed (rc {proc.returncode}): {proc.stdout[-1500:]} "
                          f"{proc.stderr[-800:]}")
    stats = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap.group(1))}
    return elapsed, stats


MODULE_TASKS = [
    {"name": "VTEP and peers", "podnet.dataplane.vxlan_fdb": {
        "name": DEVICE, "vni": 1, "port": 8472, "local": LOCAL, "underlay_interface": "eth0",
        "peers": "{{ bench_peers }}", "state": "merged"}},
    {"name": "Peer routes", "podnet.dataplane.pod_route": {"routes": "{{ bench_routes }}", "state": "merged"}},
]


def module_run(peers: list[dict]) -> tuple[float, float]:
    """(first run, no-op re-run) of the whole modules through ansible-playbook."""
    routes = [{"dst": f"{p['vtep_ip']}/24", "via": p["vtep_ip"], "dev": DEVICE, "onlink": True} for p in peers]
    with namespace("mod", with_vtep=False) as ns, tempfile.TemporaryDirectory(prefix="pbench") as tmp:
        extra = {"bench_peers": peers, "bench_routes": routes}
        first, stats = playbook(ns, Path(tmp), MODULE_TASKS, extra)
        if stats.get("changed") != 2:
            raise CheckFailed(f"module run: expected 2 changed tasks, got {stats}")
        check_state(ns, peers, "module run")
        again, stats = playbook(ns, Path(tmp), MODULE_TASKS, extra)
        if stats.get("changed"):
            raise CheckFailed(f"module re-run reported changes: {stats}")
        check_state(ns, peers, "module re-run")
    return first, again


def command_loop(peers: list[dict]) -> float:
    items = []
    for p in peers:
        items.append(f"ip neigh add {p['vtep_ip']} dev {DEVICE} lladdr {p['mac']} nud permanent")
        items.append(f"bridge fdb add {p['mac']} dst {p['node_ip']} dev {DEVICE}")
        items.append(f"ip route add {p['vtep_ip']}/24 via {p['vtep_ip']} dev {DEVICE} onlink proto {PROTO}")
    tasks = [{"name": "One command per entry", "ansible.builtin.command": "{{ item }}",
              "loop": "{{ bench_commands }}", "changed_when": True}]
    with namespace("loop") as ns, tempfile.TemporaryDirectory(prefix="pbench") as tmp:
        elapsed, _ = playbook(ns, Path(tmp), tasks, {"bench_commands": items})
        check_state(ns, peers, "command loop")
    return elapsed


# ------------------------------------------------------------------------------ main
def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1,000 only")
    parser.add_argument("--sizes", help="comma-separated N values")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs (engine, ip, no-op)")
    parser.add_argument("--no-ansible", action="store_true", help="skip the ansible-playbook runs")
    args, _ = parser.parse_known_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    if os.geteuid() != 0:
        print("bench_engine: needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"bench_engine: {os.uname().nodename}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          "engine: bare rtnetlink socket; per-call: pyroute2")
    rows = []
    failures = []
    loop_per_peer = None
    if not args.no_ansible:
        try:
            loop_per_peer = command_loop(peers_for(LOOP_N)) / LOOP_N
        except CheckFailed as exc:
            failures.append(str(exc))
    for n in sizes:
        peers = peers_for(n)
        row: dict = {"n": n}
        try:
            row["ip"] = best(args.repeat, lambda peers=peers: ip_batch(peers))
            row["engine"] = best(args.repeat if n <= 1000 else 1, lambda peers=peers: engine_apply(peers))
            if n <= 100:
                row["percall"] = engine_apply(peers, per_call=True)
            row["noop"], row["dumps"] = noop(peers, 2 * args.repeat)
            if not args.no_ansible:
                row["module"], row["module_noop"] = module_run(peers)
        except CheckFailed as exc:
            failures.append(str(exc))
        rows.append(row)
        print(f"  N={n}: " + ", ".join(f"{k} {fmt(v[0] if isinstance(v, tuple) else v)}"
                                      for k, v in row.items() if k != "n"), flush=True)

    def ratio(a, b) -> str:
        """wall ratio (CPU ratio)"""
        if a is None or b is None:
            return "-"
        return f"{a[0] / b[0]:.1f}x ({a[1] / b[1]:.1f}x)" if b[1] else f"{a[0] / b[0]:.1f}x"

    def wall(v) -> str:
        return fmt(v[0] if isinstance(v, tuple) else v)

    header = (f"{'N':>5} | {'engine':>9} {'ip-batch':>9} {'ratio (cpu)':>12} | {'per-call':>9} | "
              f"{'no-op':>9} {'dumps':>9} {'ratio (cpu)':>12} | {'module':>8} {'re-run':>8} {'ms/peer':>7} "
              f"{'vs loop':>7}")
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        module = row.get("module")
        per_peer = module / row["n"] if module else None
        speedup = f"{loop_per_peer / per_peer:.0f}x" if per_peer and loop_per_peer else "-"
        print(f"{row['n']:>5} | {wall(row.get('engine')):>9} {wall(row.get('ip')):>9} "
              f"{ratio(row.get('engine'), row.get('ip')):>12} | {wall(row.get('percall')):>9} | "
              f"{wall(row.get('noop')):>9} {wall(row.get('dumps')):>9} {ratio(row.get('noop'), row.get('dumps')):>12} | "
              f"{wall(module):>8} {wall(row.get('module_noop')):>8} "
              f"{(per_peer * 1000 if per_peer else 0):>7.2f} {speedup:>7}")
    print("times: best of the runs, wall clock; ratios: wall (CPU time, this process + children)")
    if loop_per_peer:
        print(f"command loop (ansible.builtin.command per entry, N={LOOP_N}): "
              f"{loop_per_peer * 1000:.0f} ms per peer (3 commands)")
    target = next((r for r in rows if r["n"] == 1000), None)
    if target and "engine" in target and "noop" in target:
        checks = [("engine <= 2x ip-batch", target["engine"], target["ip"], 2.0),
                  ("no-op <= 3x dumps", target["noop"], target["dumps"], 3.0)]
        parts = []
        for name, ours, base, limit in checks:
            by_wall, by_cpu = ours[0] / base[0], ours[1] / base[1] if base[1] else float("nan")
            verdict = "met" if by_wall <= limit else ("met by CPU time" if by_cpu <= limit else "MISSED")
            parts.append(f"{name}: {by_wall:.1f}x wall, {by_cpu:.1f}x CPU: {verdict}")
        if target.get("module") and loop_per_peer:
            speedup = loop_per_peer / (target["module"] / 1000)
            parts.append(f"module run per peer >= 50x faster than the loop: {speedup:.0f}x: "
                         f"{'met' if speedup >= 50 else 'MISSED'}")
        print("targets at N=1000: " + "; ".join(parts))
    for failure in failures:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
