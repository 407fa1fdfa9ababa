"""The node lock: an flock held by the process that changes the node, released by the kernel when that
process ends. What the lab cannot show by chance: holders on "other machines" (records naming another
controller, boot and PID), holders killed with SIGKILL, a race of many runs, a lock file replaced or removed
while runs wait, and daemons started under the lock (BIRD) that must not inherit it."""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.node import node_lock
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_lock import (
    LockError,
    LockTimeout,
    NodeLock,
)

COLLECTIONS = Path(__file__).resolve().parents[2] / "collections"
HOLDER = """
import sys, time
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_lock import NodeLock
lock = NodeLock(sys.argv[1], {"run": sys.argv[2], "host": "controller-elsewhere"})
lock.acquire(60)
print("held", flush=True)
time.sleep(600)
"""


def start_holder(path: Path, run: str) -> subprocess.Popen[str]:
    """Another run holding the node: a process of its own (as on another controller's SSH session)."""
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), run], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def free(path: Path) -> bool:
    """Whether a new process could take the lock now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_run_in_progress_blocks_and_the_message_names_it(tmp_path: Path) -> None:
    path = tmp_path / "node.lock"
    holder = start_holder(path, "run-a")
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout, match=r"locked by run run-a of controller controller-elsewhere "
                                               rf"\(process {holder.pid} on this node\)"):
            NodeLock(str(path), {"run": "run-b"}).acquire(1)
        assert time.monotonic() - started >= 1
        assert json.loads(path.read_text())["run"] == "run-a"  # the waiter wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_frees_the_node_at_once_and_is_named(tmp_path: Path) -> None:
    """SIGKILL mid-run: no release ran, the record is still there, and yet the next run takes the lock at
    once - the kernel let go with the process. No age, hostname or PID is judged."""
    path = tmp_path / "node.lock"
    holder = start_holder(path, "killed-run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with NodeLock(str(path), {"run": "next", "host": "here"}) as lock:
        taken = lock.acquire(600)
        assert time.monotonic() - started < 1
        assert taken["abandoned_by"]["run"] == "killed-run"
        assert taken["abandoned_by"]["pid"] == holder.pid
        assert json.loads(path.read_text())["run"] == "next"
    assert path.read_text() == ""  # a clean end empties the record: the run after this one finds no victim


def test_a_record_from_another_machine_means_nothing_without_a_holder(tmp_path: Path) -> None:
    """A lock file copied from elsewhere, or left by a node's previous boot: another controller, boot id and
    PID (which here would even name a live process: PID 1). Nobody holds the flock: it is free."""
    path = tmp_path / "node.lock"
    path.write_text(json.dumps({"run": "remote", "controller": "other-host", "pid": 1,
                                "boot_id": "00000000-0000-0000-0000-000000000000", "since": time.time()}))
    with NodeLock(str(path)) as lock:
        assert lock.acquire(0)["abandoned_by"]["controller"] == "other-host"


def worker(path: str, run: str, log: str) -> None:
    with NodeLock(path, {"run": run}) as lock:
        lock.acquire(120)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"in {run}\n")
        time.sleep(0.05)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"out {run}\n")


def test_many_runs_at_once_take_turns(tmp_path: Path) -> None:
    path, log = tmp_path / "node.lock", tmp_path / "log"
    runs = [multiprocessing.Process(target=worker, args=(str(path), f"r{i}", str(log))) for i in range(8)]
    for proc in runs:
        proc.start()
    for proc in runs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 16
    assert all(lines[i].startswith("in ") and lines[i + 1] == "out " + lines[i][3:] for i in range(0, 16, 2)), lines
    assert free(path) and path.read_text() == ""


def test_a_lock_file_replaced_while_taking_it_is_not_trusted(tmp_path: Path, monkeypatch) -> None:
    """Between our open and our flock, someone removed the file and another run made a new one and holds
    it: the old file's lock is worth nothing. The run lets go and waits for the new file's holder."""
    path = tmp_path / "node.lock"
    real_flock = fcntl.flock
    holders: list[subprocess.Popen[str]] = []

    def flock_after_replacement(fd: int, op: int) -> None:
        if not holders:
            path.unlink()
            holders.append(start_holder(path, "new-file"))
        real_flock(fd, op)

    monkeypatch.setattr(node_lock.fcntl, "flock", flock_after_replacement)
    try:
        with pytest.raises(LockTimeout, match="run new-file"):
            NodeLock(str(path), {"run": "late"}).acquire(1)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_record_is_read_through_the_open_file(tmp_path: Path) -> None:
    """A waiter reads the holder's record from its own descriptor: the file vanishing meanwhile (reset, a
    tmpfs cleaned) is no crash."""
    path = tmp_path / "node.lock"
    path.write_text(json.dumps({"run": "gone"}))
    fd = os.open(path, os.O_RDONLY)
    try:
        path.unlink()
        assert node_lock.read_record(fd) == {"run": "gone"}
    finally:
        os.close(fd)
    assert node_lock.describe({"unreadable": "{half"}).startswith("a process whose record is unreadable")


def test_a_link_planted_at_the_lock_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    (tmp_path / "node.lock").symlink_to(target)
    with pytest.raises(LockError, match="symbolic link"):
        NodeLock(str(tmp_path / "node.lock")).acquire(1)
    assert target.read_text() == "precious\n"


def test_a_daemon_started_under_the_lock_does_not_keep_it(tmp_path: Path) -> None:
    """BIRD is started by the run that holds the lock and outlives it: it must not inherit the lock."""
    path = tmp_path / "node.lock"
    lock = NodeLock(str(path), {"run": "starts-a-daemon"})
    lock.acquire(5)
    daemon = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        lock.release()
        assert free(path)
    finally:
        daemon.kill()
        daemon.wait()
