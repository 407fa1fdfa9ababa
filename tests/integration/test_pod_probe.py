"""The loss probe (playbooks/probe.yml, podnet.dataplane.pod_probe, the probe_loss filter) on a converged
flannel-vxlan lab: nothing lost while nothing changes; exactly the pairs whose route is taken away for a while lose
probes, and only while it is away; the probers are gone afterwards."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .labkit import Lab, converged_lab

pytestmark = pytest.mark.integration

PROBE = "playbooks/probe.yml"
HOSTS = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def lab():
    with converged_lab("flannel-vxlan") as lab:
        yield lab


def probe(lab: Lab, action: str, report: Path | None = None) -> list[dict]:
    extra = {"podnet_probe": action} | ({"podnet_probe_report": str(report)} if report else {})
    result = lab.run(PROBE, extra_vars=extra)
    assert result.rc == 0, result.output
    return json.loads(report.read_text()) if report else []


def probers(lab: Lab) -> list[Path]:
    return sorted(Path(f"/run/podnet-lab/{lab.prefix}").glob("*/probe/*.probe.json"))


def test_nothing_is_lost_while_nothing_changes(lab, tmp_path):
    probe(lab, "start")
    assert len(probers(lab)) == 6  # one per pod
    time.sleep(2)
    rows = probe(lab, "stop", tmp_path / "loss.json")
    assert len(rows) == 6 * 4  # each pod probes the four pods of the other nodes
    assert all(r["target_reported"] and r["sent"] >= 100 for r in rows), rows
    assert [r for r in rows if r["lost"]] == []
    assert probers(lab) == []


def test_only_the_pairs_whose_route_is_gone_lose_probes_and_only_meanwhile(lab, tmp_path):
    subnet = lab.json("node2", "route", "show", "dev", "cni0")[0]["dst"]  # node2's pod subnet
    route = lab.exec("node1", ["ip", "route", "show", subnet], check=True).stdout.strip()
    probe(lab, "start")
    time.sleep(1)
    lab.exec("node1", ["ip", "route", "del", subnet], check=True)
    time.sleep(0.5)
    lab.exec("node1", ["ip", "route", "add", *route.split()], check=True)
    time.sleep(1)
    rows = probe(lab, "stop", tmp_path / "loss.json")
    lost = {(r["source"], r["target"]): r for r in rows if r["lost"]}
    # node1's pods lost what they sent to node2's pods while the route was away: at least the half second
    assert sorted(lost) == sorted((f"node1/{s}", f"node2/{t}") for s in ("pod1", "pod2") for t in ("pod1", "pod2")), lost
    assert all(r["lost"] >= 40 and r["longest_gap_ms"] >= 400 for r in lost.values()), lost
    # and not the whole run: probes went through before and after
    assert all(r["received"] >= 100 for r in lost.values()), lost
