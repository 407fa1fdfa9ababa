"""Suite-wide setup: the collection importable as `ansible_collections.podnet.dataplane`, and the order
in which pytest-xdist hands out the test modules.

`make test` runs ``pytest -n 2 --dist loadfile --no-loadscope-reorder``: each test module runs whole, in
order, on one worker, because the tests of a module share its lab in sequence (check mode on the fresh
lab, converge, drift, reset). Modules are handed out in collection order (xdist would otherwise order them
by their number of tests), so the ones that take minutes come first: a long module started last would run
alone at the end while the other worker idles.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "collections"))

# Slowest first (seconds of one serial run on the 2-core machine: ten SIGKILLed backend switches on the
# machines lab ~700 and more under load, the QEMU guest 145 and more under load, five calico-style backends
# 268, the machines lab's two converges and reboots ~250, four policy labs 162, twenty killed runs 143, ...).
SLOW_FIRST = (
    "tests/integration/test_machines_sigkill.py",
    "tests/integration/test_ipip_vm.py",
    "tests/integration/test_calico.py",
    "tests/integration/test_machines_lab.py",
    "tests/integration/test_policy.py",
    "tests/integration/test_reliability.py",
    "tests/integration/test_flannel.py",
    "tests/integration/test_live_changes.py",
    "tests/integration/test_bad_input.py",
    "tests/integration/test_calico_bird.py",
    "tests/integration/test_render_exact.py",
    "tests/integration/test_canal_transports.py",
    "tests/integration/test_adopt.py",
    "tests/integration/test_upgrade.py",
    "tests/integration/test_molecule.py",
    "tests/integration/test_drift.py",
    "tests/integration/test_foreign_objects.py",
    "tests/integration/test_ssh.py",
    "tests/integration/test_crosssubnet.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    # A stable sort: within a module the order (and the grouping of a parametrized lab) stays pytest's.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
