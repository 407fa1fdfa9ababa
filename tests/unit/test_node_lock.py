"""The node lock's rules that a lab cannot show by chance: breaking a stale lock is atomic, and a process
is judged dead only where it can be seen (same PID namespace of the same boot), not by hostname."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from pathlib import Path

from ansible_collections.podnet.dataplane.plugins.module_utils import node_lock


def dead_pid() -> int:
    proc = multiprocessing.Process(target=int)
    proc.start()
    proc.join()
    return proc.pid


def write_lock(path: Path, owner: dict) -> None:
    path.write_text(json.dumps({"owner": owner, "since": time.time()}))


def test_two_runs_that_judged_the_same_lock_stale_do_not_both_hold_it(tmp_path: Path) -> None:
    path = tmp_path / "node.lock"
    write_lock(path, {"host": socket.gethostname(), "pidns": node_lock.pid_namespace(), "pid": dead_pid(),
                      "run": "killed"})
    judged_by_a = node_lock.read_lock(str(path))["identity"]
    judged_by_b = node_lock.read_lock(str(path))["identity"]  # B read the same stale lock meanwhile
    assert node_lock.break_stale(str(path), judged_by_a)  # A breaks it ...
    assert node_lock.try_create(str(path), {"run": "a"})  # ... and takes the node
    assert not node_lock.break_stale(str(path), judged_by_b)  # B must not break A's fresh lock
    assert json.loads(path.read_text())["owner"] == {"run": "a"}


def worker(path: str, run: str, log: str) -> None:
    owner = {"host": socket.gethostname(), "pidns": node_lock.pid_namespace(), "pid": os.getpid(), "run": run}
    node_lock.acquire(path, owner, wait_timeout=60, stale_after=900)
    with open(log, "a") as handle:
        handle.write(f"in {run}\n")
    time.sleep(0.05)
    with open(log, "a") as handle:
        handle.write(f"out {run}\n")
    node_lock.release(path, owner)


def test_runs_that_find_a_stale_lock_at_once_still_take_turns(tmp_path: Path) -> None:
    path, log = tmp_path / "node.lock", tmp_path / "log"
    write_lock(path, {"host": socket.gethostname(), "pidns": node_lock.pid_namespace(), "pid": dead_pid(),
                      "run": "killed"})
    runs = [multiprocessing.Process(target=worker, args=(str(path), f"r{i}", str(log))) for i in range(6)]
    for proc in runs:
        proc.start()
    for proc in runs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 12
    assert all(lines[i].startswith("in ") and lines[i + 1] == "out " + lines[i][3:] for i in range(0, 12, 2)), lines


def test_a_live_process_of_another_pid_namespace_is_never_judged_dead(tmp_path: Path) -> None:
    # the controller's run, seen from a node that happens to share its hostname: the pid means nothing here
    owner = {"host": socket.gethostname(), "pidns": "another-boot:4026531836", "pid": dead_pid(), "run": "x"}
    assert node_lock.owner_alive(owner) is None
    path = tmp_path / "node.lock"
    write_lock(path, owner)
    started = time.monotonic()
    try:
        node_lock.acquire(str(path), {"run": "y"}, wait_timeout=1, stale_after=900)
    except node_lock.LockTimeout:
        pass
    else:
        raise AssertionError("a live lock of another machine was broken")
    assert time.monotonic() - started >= 1 and json.loads(path.read_text())["owner"]["run"] == "x"


def test_an_owner_in_this_namespace_is_checked_by_pid() -> None:
    here = node_lock.pid_namespace()
    assert here and ":" in here
    assert node_lock.owner_alive({"pidns": here, "pid": os.getpid()}) is True
    assert node_lock.owner_alive({"pidns": here, "pid": dead_pid()}) is False
    # an owner recorded by an earlier release (no pidns): the hostname rule, as before
    assert node_lock.owner_alive({"host": socket.gethostname(), "pid": dead_pid()}) is False
    assert node_lock.owner_alive({"host": "elsewhere", "pid": os.getpid()}) is None
