"""Lost probes while one site.yml run changes the backend of a converged 3-node namespace lab (2 pods per node,
every pod probing every pod on the other nodes every 10 ms; playbooks/probe.yml). Prints one row per transition:
lost probes in all, the worst pair's lost probes and its longest outage. Not a timed test: a measurement.

    .venv/bin/python -m bench.loss_during_switch [from>to ...]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.labkit import Lab  # noqa: E402

TRANSITIONS = ("flannel-vxlan>flannel-vxlan", "flannel-vxlan>flannel-host-gw", "flannel-host-gw>flannel-vxlan",
               "flannel-vxlan>calico-bgp", "calico-bgp>canal")


def run(lab: Lab, playbook: str, **extra) -> None:
    result = lab.run(playbook, extra_vars=extra)
    if result.rc != 0:
        raise SystemExit(result.output[-4000:])


def main(transitions: list[str]) -> None:
    lab = Lab(extra_vars={"podnet_backend": transitions[0].split(">")[0]})
    with lab, tempfile.TemporaryDirectory() as tmp:
        current = None
        print(f"{'operation':40} {'lost':>6} {'worst pair':>10} {'longest gap':>12}")
        for at, transition in enumerate(transitions):
            before, after = transition.split(">")
            if current != before:
                run(lab, "playbooks/site.yml", podnet_backend=before)
            report = Path(tmp) / f"{at}.json"
            run(lab, "playbooks/probe.yml", podnet_backend=before, podnet_probe="start")
            run(lab, "playbooks/site.yml", podnet_backend=after)
            run(lab, "playbooks/probe.yml", podnet_backend=after, podnet_probe="stop", podnet_probe_report=str(report))
            current = after
            rows = json.loads(report.read_text())
            worst = max(rows, key=lambda r: r["lost"])
            name = "no-op re-run" if before == after else f"{before} -> {after}"
            print(f"{name:40} {sum(r['lost'] for r in rows):>6} {worst['lost']:>10} {worst['longest_gap_ms']:>9} ms",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(TRANSITIONS))
