"""Dataplane benchmark: throughput (iperf3) and TCP request/response latency between pods on two lab nodes.

Paths measured, each in its own two-node namespace lab converged by ``site.yml``:
  - ``veth (bare)``: two fresh namespaces joined by one veth pair, the baseline, measured in the same rounds
    as each lab's paths (bare, underlay, pods, in turn), so that a ratio compares runs made together,
  - ``underlay``: node to node over the lab's underlay bridge (no pod hop, no overlay), in every lab,
  - pod to pod with flannel-host-gw, flannel-vxlan, calico-bgp (static routes), calico-vxlan and canal.
Every figure is the median of ``--runs`` rounds (5 by default). The table gives Gbit/s and its ratio to the
bare veth path (and to the same lab's underlay), then the mean round trip of a 1-byte TCP request/response
(``bench/tcp_rr.py``) and its ratio to the bare veth's (lower is better). Checks, per backend: pods reach
each other with full-size unfragmentable packets (``ping -M do -s MTU-28``), one more byte does not pass
(``-s MTU-27``), and no namespace of the lab fragments anything during the iperf3 runs (``Ip: FragCreates``
of /proc/net/snmp unchanged in every node, pod and underlay namespace). The goals (throughput ratios) are
reported, not enforced: a noisy machine must not fail a correct dataplane.

    python bench/bench_dataplane.py [--quick] [--backends flannel-vxlan,...] [--seconds 3] [--runs 5]

Exits non-zero when a check fails. Labs and the baseline namespaces are always removed; iperf3 servers
are started by this script and stopped by their PID.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import labgen  # noqa: E402
from labgen import labkit  # noqa: E402

SITE = labgen.REPO_ROOT / "playbooks" / "site.yml"
BACKENDS = ("flannel-host-gw", "flannel-vxlan", "calico-bgp", "calico-vxlan", "canal")
# Throughput goals as ratios to the bare veth pair: routed paths close to it, overlays above 0.6.
GOALS = {"flannel-host-gw": 0.95, "calico-bgp": 0.95, "flannel-vxlan": 0.6, "calico-vxlan": 0.6, "canal": 0.6}
CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
PORT = 5201
RR_PORT = 5202
TCP_RR = Path(__file__).resolve().parent / "tcp_rr.py"
BARE_A, BARE_B = "10.99.0.1", "10.99.0.2"  # inside the baseline namespaces only


def sh(argv: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def nsx(ns: str, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return sh(["ip", "netns", "exec", ns, *argv], **kw)


def frag_creates(ns: str) -> int:
    """Ip FragCreates of a namespace (/proc/net/snmp is per network namespace)."""
    lines = [ln.split() for ln in nsx(ns, "cat", "/proc/net/snmp").stdout.splitlines() if ln.startswith("Ip:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("FragCreates")])


def with_server(server_ns: str, argv: list[str], port: int, client) -> Any:
    """Start a one-connection server (argv) in server_ns, wait until it listens on `port`, run client();
    the server is ours and is stopped by its PID should it outlive the client."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while f":{port} " not in nsx(server_ns, "ss", "-Hltn", check=False).stdout:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{argv[0]} server in {server_ns} did not start")
            time.sleep(0.05)
        return client()
    finally:
        if server.poll() is None:
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def iperf(client_ns: str, server_ns: str, address: str, seconds: float) -> float:
    """Gbit/s received by an iperf3 server in server_ns from a client in client_ns (one run)."""
    def client() -> float:
        out = nsx(client_ns, "iperf3", "-c", address, "-p", str(PORT), "-t", f"{seconds:g}", "-J",
                  timeout=seconds + 30)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9

    return with_server(server_ns, ["iperf3", "-s", "-1", "-p", str(PORT)], PORT, client)


def tcp_rr(client_ns: str, server_ns: str, address: str, seconds: float) -> float:
    """Mean round trip in microseconds of 1-byte TCP request/responses (one run of bench/tcp_rr.py)."""
    def client() -> float:
        out = nsx(client_ns, sys.executable, str(TCP_RR), "client", address, "--port", str(RR_PORT),
                  "--seconds", f"{seconds:g}", timeout=seconds + 30)
        return float(json.loads(out.stdout)["rtt_us"])

    return with_server(server_ns, [sys.executable, str(TCP_RR), "server", "--port", str(RR_PORT)], RR_PORT, client)


def create_bare_pair(prefix: str) -> tuple[str, str]:
    """Two fresh namespaces joined by one veth pair (the baseline path); removed by remove_netns(prefix)."""
    a, b = f"{prefix}-bare-a", f"{prefix}-bare-b"
    sh(["ip", "netns", "add", a])
    sh(["ip", "netns", "add", b])
    sh(["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b])
    for ns, addr in ((a, BARE_A), (b, BARE_B)):
        sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    return a, b


def pod_addr_mtu(ns: str) -> tuple[str, int, str]:
    """(address, MTU, interface) of the pod's interface holding a cluster address."""
    for link in labkit.netns_json(ns, "addr", "show"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet" and ipaddress.IPv4Address(a["local"]) in CLUSTER:
                return a["local"], int(link["mtu"]), link["ifname"]
    raise RuntimeError(f"no pod address in {ns}")


def ping_ok(ns: str, address: str, size: int) -> bool:
    """A don't-fragment ping of `size` payload bytes gets answers."""
    proc = nsx(ns, "ping", "-n", "-q", "-M", "do", "-c", "2", "-i", "0.2", "-W", "2", "-s", str(size), address,
               check=False, timeout=20)
    return proc.returncode == 0


def measure_backend(backend: str, tmp: Path, cfg: Path, bare: tuple[str, str], seconds: float, runs: int,
                    rr_seconds: float) -> dict[str, Any]:
    """Converge a two-node lab and measure it; the bare veth pair is measured in the same rounds, interleaved
    with the lab's paths, so that every ratio compares runs made at the same time on this shared machine."""
    inv = labgen.write_inventory(tmp / backend, 2, pods_per_node=1, group_vars={"podnet_backend": backend})
    res: dict[str, Any] = {"backend": backend, "problems": []}
    lab = labkit.Lab(inv)
    try:
        up = lab.run(labkit.LAB_UP, env={"ANSIBLE_CONFIG": str(cfg)})
        if up.rc != 0:
            res["problems"].append(f"lab_up failed:\n{up.output[-2000:]}")
            return res
        conv = lab.run(SITE, env={"ANSIBLE_CONFIG": str(cfg)})
        if conv.rc != 0 or conv.failed():
            res["problems"].append(f"site.yml failed:\n{conv.output[-3000:]}")
            return res
        n1, n2 = labgen.node_name(1), labgen.node_name(2)
        pod_a, pod_b = lab.pod_ns(n1, "pod1"), lab.pod_ns(n2, "pod1")
        addr_b, mtu, ifname = pod_addr_mtu(pod_b)
        _, mtu_a, _ = pod_addr_mtu(pod_a)
        res["mtu"] = mtu
        if mtu_a != mtu:
            res["problems"].append(f"pod MTUs differ: {mtu_a} vs {mtu}")
        if not ping_ok(pod_a, addr_b, mtu - 28):
            res["problems"].append(f"ping -M do -s {mtu - 28} (a full {mtu}-byte packet) does not pass")
        if ping_ok(pod_a, addr_b, mtu - 27):
            res["problems"].append(f"ping -M do -s {mtu - 27} passes: the pod MTU {mtu} is not the path MTU")
        node_ips = labgen.node_ips(2)
        watched = lab.namespaces()
        before = {ns: frag_creates(ns) for ns in watched}
        runs_of: dict[str, list[float]] = {"bare": [], "underlay": [], "gbps": [], "bare_rr": [], "rr_us": []}
        for _ in range(runs):
            runs_of["bare"].append(iperf(*bare, BARE_B, seconds))
            runs_of["underlay"].append(iperf(lab.node_ns(n1), lab.node_ns(n2), node_ips[1], seconds))
            runs_of["gbps"].append(iperf(pod_a, pod_b, addr_b, seconds))
            runs_of["bare_rr"].append(tcp_rr(*bare, BARE_B, rr_seconds))
            runs_of["rr_us"].append(tcp_rr(pod_a, pod_b, addr_b, rr_seconds))
        res.update({key: statistics.median(values) for key, values in runs_of.items()})
        res["runs"] = runs_of
        grew = {ns: frag_creates(ns) - n for ns, n in before.items() if frag_creates(ns) != n}
        res["frag"] = sum(grew.values())
        if grew:
            res["problems"].append(f"fragments created during iperf3: {grew}")
    except Exception as exc:  # noqa: BLE001  (reported as a failed check; the lab still goes)
        res["problems"].append(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            lab.down()
        except Exception as exc:  # noqa: BLE001
            res["problems"].append(f"teardown: {exc}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1-second runs, one run each")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--seconds", type=float, help="iperf3 -t (default 3, --quick 1)")
    ap.add_argument("--rr-seconds", type=float, help="length of one TCP request/response run (default 2, "
                                                     "--quick 1)")
    ap.add_argument("--runs", type=int, help="runs per path and measure, median kept (default 5, --quick 1)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (1 if args.quick else 3)
    rr_seconds = args.rr_seconds or (1 if args.quick else 2)
    runs = args.runs or (1 if args.quick else 5)
    backends = [b for b in args.backends.split(",") if b]

    prefix = labkit.unique_prefix()
    results: list[dict[str, Any]] = []
    problems = []
    with labgen.tempdir("dataplane") as tmpname:
        tmp = Path(tmpname)
        cfg = labgen.write_ansible_cfg(tmp)
        try:
            bare = create_bare_pair(prefix)
            for backend in backends:
                print(f"# {backend} ...", file=sys.stderr, flush=True)
                results.append(measure_backend(backend, tmp, cfg, bare, seconds, runs, rr_seconds))
        finally:
            labkit.remove_netns(prefix)  # the baseline namespaces

    print(f"\nDataplane: pod on node 1 -> pod on node 2; median of {runs} runs of iperf3 -t {seconds:g} and of "
          f"{rr_seconds:g} s of 1-byte TCP request/response; each path against the bare veth pair measured in "
          "the same rounds (interleaved)")
    rows = []
    goals = []
    for r in results:
        g, u, rr, base, base_rr = (r.get(k) for k in ("gbps", "underlay", "rr_us", "bare", "bare_rr"))
        rows.append([
            r["backend"], str(r.get("mtu", "-")), f"{g:.2f}" if g else "-", f"{base:.2f}" if base else "-",
            f"{g / base:.2f}" if g else "-", f"{u / base:.2f}" if u else "-", f"{g / u:.2f}" if g and u else "-",
            f"{rr:.1f}" if rr else "-", f"{base_rr:.1f}" if base_rr else "-", f"{rr / base_rr:.2f}" if rr else "-",
            str(r.get("frag", "-")), "ok" if not r["problems"] else "FAIL",
        ])
        problems += [f"{r['backend']}: {p}" for p in r["problems"]]
        if g and r["backend"] in GOALS:
            goal, ratio = GOALS[r["backend"]], g / base
            goals.append(f"{r['backend']} {ratio:.2f}x {'>=' if ratio >= goal else '<'} {goal}x "
                         f"({'met' if ratio >= goal else 'missed'})")
    labgen.print_table(["path", "pod MTU", "Gbit/s", "bare Gbit/s", "vs bare", "underlay vs bare", "vs underlay",
                        "RR us", "bare RR us", "RR vs bare", "frags", "check"], rows)
    if goals:
        print("goals (throughput vs bare veth): " + "; ".join(goals))
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
