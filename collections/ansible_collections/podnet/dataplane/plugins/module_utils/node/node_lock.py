# Copyright: podnet contributors
# Apache License 2.0
"""The node lock (podnet.dataplane.node_apply's I(lock)): serializes podnet runs on a node.

The lock is an exclusive ``flock`` on the lock file, held by the node-side process that changes the node,
for exactly as long as that process runs. The kernel releases it when the process ends, however it ends
(SIGKILL, an out-of-memory kill, the SSH connection cut, the node rebooting), so there is nothing to judge
stale and no owner to check by hostname or PID: a lock that can be taken is free. Nothing holds the lock
across tasks: a holder that outlived its process could only be judged by guessing.

The file's content is only a record, for messages and for the next run: who holds the lock now (run id,
controller, the holder's PID and boot id on the node), emptied on a clean release. A record found in a
lock that could be taken names a run that died holding it.

The lock file is never removed: a run that opened the old file while another removed it and made a new
one would hold a lock on a file nobody else sees. A run that finds the path replaced after taking the lock
(someone removed or replaced it meanwhile) lets go and takes the new file's lock instead.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from typing import Any

LOCK_SPEC = {
    "owner": {"type": "dict", "default": {}},
    "path": {"type": "path", "default": "/run/podnet/node.lock"},
    "wait_timeout": {"type": "int", "default": 600},
}
POLL = 0.2
RECORD_LIMIT = 4096  # a record is one short JSON line; more is not a record of podnet's


class LockTimeout(Exception):
    pass


class LockError(Exception):
    pass


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def read_record(fd: int) -> dict[str, Any] | None:
    """The record in the open lock file (read through the descriptor: a file removed meanwhile is still
    readable, and nothing is opened by name twice). Empty: None; not a record: {"unreadable": ...}."""
    raw = os.pread(fd, RECORD_LIMIT, 0)
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {"unreadable": raw[:200].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"unreadable": str(data)[:200]}


def describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "a process that left no record"
    if "unreadable" in record:
        return f"a process whose record is unreadable ({record['unreadable']!r})"
    since = record.get("since")
    age = f" for {time.time() - since:.0f} s" if isinstance(since, (int, float)) else ""
    return (f"run {record.get('run')} of controller {record.get('controller')} (process {record.get('pid')} "
            f"on this node){age}")


def _open(path: str) -> int:
    try:
        # O_NOFOLLOW: a link planted at the lock's path is refused, not followed
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(f"podnet: the node lock {path} is a symbolic link: refused") from exc
        raise LockError(f"podnet: cannot open the node lock {path}: {exc.strerror}") from exc


def _still_at(path: str, fd: int) -> bool:
    """The locked descriptor is the file at path (not one removed or replaced since it was opened)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


class NodeLock:
    """The node lock, held by this process. Use as a context manager, or acquire() and release()."""

    def __init__(self, path: str, owner: dict[str, Any] | None = None):
        self.path = path
        self.owner = owner or {}
        self.fd: int | None = None

    def acquire(self, wait_timeout: float) -> dict[str, Any]:
        """Wait until no other process holds the lock, then take it: {"waited": s} and, when the last holder
        died holding it, {"abandoned_by": its record}."""
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        start = time.monotonic()
        while True:
            fd = _open(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_record(fd)
                os.close(fd)
                waited = time.monotonic() - start
                if waited >= wait_timeout:
                    raise LockTimeout(f"podnet: the node is locked by {describe(holder)}; waited {waited:.0f} s "
                                      "(a run in progress: it ends when its process ends)") from None
                time.sleep(POLL)
                continue
            if _still_at(self.path, fd):
                break
            os.close(fd)  # the file was removed or replaced while we took its lock: take the new one's
        self.fd = fd
        previous = read_record(fd)
        record = {"run": self.owner.get("run"), "controller": self.owner.get("host"), "pid": os.getpid(),
                  "boot_id": boot_id(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)
        result: dict[str, Any] = {"waited": round(time.monotonic() - start, 3)}
        if previous:
            result["abandoned_by"] = previous
        return result

    def release(self) -> None:
        """Empty the record (a clean end) and let go. The kernel does the same, minus the emptying, when
        the process dies."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def __enter__(self) -> NodeLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
