"""Scale benchmark (issue 8, part 3): converge namespace labs of 10, 50 and 100 nodes with site.yml.

For each lab size and backend (flannel-vxlan, calico-bgp with static routes) a fresh lab is built, then
``site.yml`` converges it (timed), and runs again (timed no-op: every host must report changed=0). Each
node must then hold exactly one podnet route (proto 152) to every other node's pod subnet, of the
backend's kind. The table gives wall time per node, which should stay flat as the lab grows, and the
slowest tasks (from a small timing callback) show what dominates.

    python bench/bench_scale.py [--quick] [--sizes 10,50,100] [--backends flannel-vxlan,calico-bgp]
                                [--cfg defaults.forks=100 ...] [--pods 1]

Exits non-zero when a run fails or a check does not hold. Labs are always torn down.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import labgen  # noqa: E402
from labgen import labkit  # noqa: E402

SITE = labgen.REPO_ROOT / "playbooks" / "site.yml"
BACKENDS = ("flannel-vxlan", "calico-bgp")
SIZES = (10, 50, 100)
QUICK_SIZES = (10, 30)
PODNET_PROTO = "152"


def parse_cfg(items: list[str]) -> dict[str, dict[str, str]]:
    """["defaults.forks=100", ...] -> {"defaults": {"forks": "100"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, option = key.partition(".")
        if not option or not _:
            raise SystemExit(f"--cfg wants section.option=value, not {item!r}")
        out.setdefault(section, {})[option] = value
    return out


def check_routes(lab: labkit.Lab, hosts: list[str], backend: str) -> list[str]:
    """Every node has exactly one podnet route to each other node's subnet (and none to its own)."""
    leases_file = Path(f"/run/podnet-lab/{lab.prefix}/leases.json")
    try:
        leases = json.loads(leases_file.read_text())
    except (OSError, ValueError) as exc:
        return [f"cannot read the subnet leases {leases_file}: {exc}"]
    ips = dict(zip(hosts, labgen.node_ips(len(hosts)), strict=True))
    problems = []
    for host in hosts:
        routes = lab.json(host, "route", "show", "proto", PODNET_PROTO)
        peers = {}
        for r in routes:
            dst = r.get("dst", "")
            if "/" in dst and ipaddress.IPv4Network(dst).prefixlen < 32:
                peers[dst] = r
        want = {leases[h] for h in hosts if h != host}
        if set(peers) != want:
            missing, extra = sorted(want - set(peers)), sorted(set(peers) - want)
            problems.append(f"{host}: peer routes wrong (missing {missing[:3]}…{len(missing)}, extra {extra[:3]})")
            continue
        by_subnet = {leases[h]: h for h in hosts}
        for dst, r in peers.items():
            peer = by_subnet[dst]
            if backend == "flannel-vxlan":
                ok = r.get("dev") == "flannel.1" and r.get("gateway") == dst.split("/")[0]
            else:
                ok = r.get("gateway") == ips[peer]
            if not ok:
                problems.append(f"{host}: route to {dst} ({peer}) is {r}")
                break
    return problems


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by finished child processes (ansible and its modules)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_one(n: int, backend: str, cfg: Path, tmp: Path, pods: int) -> dict[str, Any]:
    """Fresh lab of n nodes; converge + no-op re-run with `backend`; checks; teardown."""
    inv = labgen.write_inventory(tmp / f"{backend}-{n}", n, pods_per_node=pods,
                                 group_vars={"podnet_backend": backend})
    hosts = [labgen.node_name(i) for i in range(1, n + 1)]
    res: dict[str, Any] = {"nodes": n, "backend": backend, "problems": []}
    env_up = labgen.timing_env(cfg, tmp / "t-up.json")
    lab = labkit.Lab(inv)
    try:
        t0 = time.monotonic()
        up = lab.run(labkit.LAB_UP, env=env_up)
        res["up"] = time.monotonic() - t0
        if up.rc != 0:
            res["problems"].append(f"lab_up failed:\n{up.output[-3000:]}")
            return res
        for phase in ("converge", "rerun"):
            timings = tmp / f"t-{backend}-{n}-{phase}.json"
            cpu0 = children_cpu()
            r = lab.run(SITE, env=labgen.timing_env(cfg, timings))
            res[phase] = r.seconds
            res[f"{phase}_cpu"] = children_cpu() - cpu0
            res[f"{phase}_top"] = labgen.top_tasks(labgen.read_timings(timings), 6)
            res[f"{phase}_timings"] = labgen.read_timings(timings)
            if r.rc != 0 or r.failed():
                res["problems"].append(f"{phase}: site.yml failed (rc={r.rc}):\n{r.output[-3000:]}")
                return res
            if len(r.recap) != n:
                res["problems"].append(f"{phase}: recap lists {len(r.recap)} hosts, not {n}")
            if phase == "rerun" and r.changed():
                busy = {h: c["changed"] for h, c in r.recap.items() if c["changed"]}
                res["problems"].append(f"re-run changed something: {dict(list(busy.items())[:5])}")
        res["problems"] += check_routes(lab, hosts, backend)
    finally:
        t0 = time.monotonic()
        try:
            lab.down()
        except Exception as exc:  # noqa: BLE001  (reported, the safety net in down() has run)
            res["problems"].append(f"teardown: {exc}")
        res["down"] = time.monotonic() - t0
    return res


def fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="labs of 10 and 30 nodes")
    ap.add_argument("--sizes", help="comma-separated lab sizes (default 10,50,100)")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--pods", type=int, default=1, help="pods per node (default 1)")
    ap.add_argument("--cfg", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                    help="ansible.cfg override for this run (repeatable), e.g. defaults.forks=100")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    backends = [b for b in args.backends.split(",") if b]

    results = []
    with labgen.tempdir("scale") as tmpname:
        tmp = Path(tmpname)
        cfg = labgen.write_ansible_cfg(tmp, parse_cfg(args.cfg))
        for backend in backends:
            for n in sizes:
                print(f"# {backend}: {n} nodes ...", file=sys.stderr, flush=True)
                res = run_one(n, backend, cfg, tmp, args.pods)
                results.append(res)
                print(f"#   up {fmt(res.get('up'), 1)} s, converge {fmt(res.get('converge'), 1)} s "
                      f"({fmt(res.get('converge_cpu'), 1)} cpu s), no-op {fmt(res.get('rerun'), 1)} s "
                      f"({fmt(res.get('rerun_cpu'), 1)} cpu s)", file=sys.stderr, flush=True)
                for p in res["problems"]:
                    print(f"FAIL {backend} n={n}: {p}", file=sys.stderr)

    print(f"\nScale: site.yml on namespace labs ({args.pods} pod/node; config overrides: {args.cfg or 'none'})")
    rows = []
    base: dict[str, float] = {}
    for r in results:
        conv, rerun = r.get("converge"), r.get("rerun")
        per = conv / r["nodes"] if conv else None
        if per and r["backend"] not in base:
            base[r["backend"]] = per
        cpu, rcpu = r.get("converge_cpu"), r.get("rerun_cpu")
        rows.append([
            r["backend"], r["nodes"], fmt(r.get("up"), 1), fmt(conv, 1), fmt(per, 3),
            fmt(per / base[r["backend"]] if per and r["backend"] in base else None),
            fmt(cpu / r["nodes"] if cpu else None, 3),
            fmt(rerun, 1), fmt(rerun / r["nodes"] if rerun else None, 3),
            fmt(rcpu / r["nodes"] if rcpu else None, 3),
            "ok" if not r["problems"] else "FAIL",
        ])
    labgen.print_table(
        ["backend", "nodes", "lab_up s", "converge s", "s/node", "vs smallest", "cpu s/node",
         "no-op s", "no-op s/node", "no-op cpu s/node", "check"],
        rows,
    )
    print("(wall s/node is the target metric; cpu s/node = CPU seconds of ansible and its modules per node,")
    print(" which stays meaningful when other jobs load the machine)")
    print("\nSlowest tasks of each converge (seconds, all hosts):")
    for r in results:
        top = ", ".join(f"{name} {s:.1f}" for name, s in r.get("converge_top", [])[:4])
        print(f"  {r['backend']} n={r['nodes']}: {top}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
