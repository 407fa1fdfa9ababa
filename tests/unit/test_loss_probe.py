"""The loss probe's arithmetic: received ticks as ranges, lost probes and the longest outage per pair."""
from __future__ import annotations

from ansible_collections.podnet.dataplane.plugins.module_utils.node.loss_probe import lost_runs, merge, ranges


def test_ticks_become_inclusive_runs():
    assert ranges(set()) == []
    assert ranges({5, 0, 1, 2, 7, 8}) == [[0, 2], [5, 5], [7, 8]]


def test_lost_probes_and_the_longest_run_of_them():
    assert lost_runs(10, [[0, 9]]) == (0, 0)
    assert lost_runs(10, []) == (10, 10)
    assert lost_runs(10, [[0, 2], [6, 9]]) == (3, 3)  # 3, 4, 5
    assert lost_runs(10, [[1, 4], [6, 7]]) == (4, 2)  # 0; 5; 8, 9
    # ticks the target heard beyond what the source counted (a report read mid-tick) do not hide a loss
    assert lost_runs(5, [[0, 1], [3, 20]]) == (1, 1)


def test_merge_joins_each_source_with_its_targets_reports():
    reports = [
        {"name": "n1/p1", "interval_ms": 10, "sent": {"n2/p1": 100, "n3/p1": 100},
         "received": {"n2/p1": [[0, 99]]}},
        {"name": "n2/p1", "interval_ms": 10, "sent": {"n1/p1": 100}, "received": {"n1/p1": [[0, 39], [60, 99]]}},
    ]
    rows = {(r["source"], r["target"]): r for r in merge(reports)}
    assert rows["n1/p1", "n2/p1"] | {} == {"source": "n1/p1", "target": "n2/p1", "sent": 100, "received": 80,
                                         "lost": 20, "longest_gap_ms": 200, "target_reported": True}
    assert rows["n2/p1", "n1/p1"]["lost"] == 0
    # n3/p1 never reported: everything sent to it counts lost
    assert rows["n1/p1", "n3/p1"]["lost"] == 100 and not rows["n1/p1", "n3/p1"]["target_reported"]
