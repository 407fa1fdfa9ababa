"""Fixtures for integration tests: namespace labs that are always torn down.

- ``lab``: a fresh lab from inventories/lab with its own prefix, removed after the test.
- ``lab_factory``: ``lab_factory(inventory=..., prefix=None, extra_vars=None, up=True) -> Lab`` for
  other inventories, several labs, or a lab whose lab_up the test runs itself (``up=False``).
  Every lab it made is torn down after the test, in reverse order.
For a lab shared by a whole module, use ``with labkit.Lab(...) as lab: yield lab`` in a module fixture.
- ``guest_lab``: one lab for every test the QEMU guest runs (test_ipip_vm.py), built by the netns_lab module
  itself (modulekit.ModuleLab): a playbook costs about a minute there. Each module that uses it leaves its nodes
  reset (modulekit.shared_lab).

Every test in this folder is marked ``integration`` and skipped unless running as root with iproute2.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.labkit import LAB_INVENTORY, Lab, list_netns
from tests.integration.modulekit import ModuleLab

HERE = Path(__file__).resolve().parent


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests build network namespaces and need root"
    if shutil.which("ip") is None:
        return "integration tests need iproute2 (the 'ip' command)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    for item in items:
        if HERE not in item.path.parents:
            continue  # this hook sees the whole session; only this folder is ours
        item.add_marker(pytest.mark.integration)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    made: list[Lab] = []

    def make(
        inventory: str | os.PathLike[str] = LAB_INVENTORY,
        prefix: str | None = None,
        extra_vars: dict[str, Any] | None = None,
        up: bool = True,
    ) -> Lab:
        lab = Lab(inventory, prefix=prefix, extra_vars=extra_vars)
        made.append(lab)  # registered before lab_up so a half-built lab is removed too
        if up:
            lab.up()
        return lab

    yield make
    errors = []
    for lab in reversed(made):
        try:
            lab.down()
        except Exception as exc:  # tear the other labs down before reporting
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory()


@pytest.fixture(scope="session")
def guest_lab() -> Iterator[Lab]:
    with ModuleLab() as lab:
        yield lab
    assert list_netns(lab.prefix) == []
