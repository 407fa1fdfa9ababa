"""Lost probes while one site.yml run changes a converged 3-node namespace lab (2 pods per node: 24 pod pairs,
every pod probing every pod on the other nodes every 10 ms; playbooks/probe.yml). The baseline, measured in the
same run, is a re-run that changes nothing. One row per change: lost probes in all, the worst pair's lost probes
and its longest outage, over --repeat rounds (worst round shown, with the range over rounds).

    .venv/bin/python bench/bench_loss.py [--quick] [--repeat N] [FROM>TO ...]

Exits non-zero when a run fails or the probe reports a pair that sent nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.labkit import Lab, probed_runs  # noqa: E402

# In order, so each change starts from where the one before left the lab; the first is the baseline.
CHANGES = ("flannel-vxlan>flannel-vxlan", "flannel-vxlan>flannel-host-gw", "flannel-host-gw>flannel-vxlan",
           "flannel-vxlan>calico-bgp", "calico-bgp>calico-vxlan", "calico-vxlan>canal", "canal>calico-bgp",
           "calico-bgp>flannel-vxlan")
QUICK = CHANGES[:3]


def run(lab: Lab, playbook: str, **extra) -> None:
    result = lab.run(playbook, extra_vars=extra)
    if result.rc != 0:
        raise SystemExit(f"{playbook} {extra}: failed\n{result.output[-4000:]}")


def measure(lab: Lab, before: str, after: str, report: Path) -> list[dict]:
    results, rows = probed_runs(lab, report, [{"podnet_backend": after}], probe_vars={"podnet_backend": before})
    if results[0].rc != 0:
        raise SystemExit(f"{before} -> {after}: site.yml failed\n{results[0].output[-4000:]}")
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the baseline and the flannel transport changes only")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every change")
    parser.add_argument("changes", nargs="*", help="FROM>TO backends (default: all)")
    args = parser.parse_args(argv)
    changes = args.changes or list(QUICK if args.quick else CHANGES)
    totals: dict[str, list[tuple[int, int, int]]] = {change: [] for change in changes}
    lab = Lab(extra_vars={"podnet_backend": changes[0].split(">")[0]})
    with lab, tempfile.TemporaryDirectory() as tmp:
        current = None
        for round_ in range(args.repeat):
            for at, change in enumerate(changes):
                before, after = change.split(">")
                if current != before:
                    run(lab, "playbooks/site.yml", podnet_backend=before)
                rows = measure(lab, before, after, Path(tmp) / f"{round_}-{at}.json")
                current = after
                worst = max(rows, key=lambda r: (r["lost"], r["longest_gap_ms"]))
                totals[change].append((sum(r["lost"] for r in rows), worst["lost"], worst["longest_gap_ms"]))
    baseline = totals[changes[0]]
    print(f"{args.repeat} round(s); baseline ({changes[0].replace('>', ' -> ')}): "
          f"{max(t[0] for t in baseline)} lost in the worst round")
    print(f"{'change':36} {'lost (all pairs)':>18} {'worst pair':>12} {'longest gap':>14}")
    for change, rounds in totals.items():
        before, after = change.split(">")
        name = "re-run (no change)" if before == after else f"{before} -> {after}"
        lost = sorted(t[0] for t in rounds)
        pair = sorted(t[1] for t in rounds)
        gap = sorted(t[2] for t in rounds)
        print(f"{name:36} {lost[-1]:>8} ({lost[0]}-{lost[-1]}) {pair[-1]:>5} ({pair[0]}-{pair[-1]}) "
              f"{gap[-1]:>6} ms ({gap[0]}-{gap[-1]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
