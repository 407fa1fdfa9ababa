# Copyright: podnet contributors
# Apache License 2.0
"""The node lock (podnet.dataplane.node_lock, and podnet.dataplane.preflight's I(lock)): a lock file
that serializes podnet runs on a node and that a killed run cannot wedge."""
from __future__ import annotations

import json
import os
import socket
import time

LOCK_SPEC = {
    "owner": {"type": "dict", "required": True},
    "path": {"type": "path", "default": "/run/podnet/node.lock"},
    "wait_timeout": {"type": "int", "default": 600},
    "stale_after": {"type": "int", "default": 900},
}


class LockTimeout(Exception):
    pass


POLL = 0.25


def read_lock(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        data["age"] = time.time() - os.stat(path).st_mtime
        return data
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {"owner": {}, "age": time.time() - os.stat(path).st_mtime}  # torn write: judge by age


def owner_alive(owner: dict) -> bool | None:
    """True/False when the owner ran on this machine; None when that cannot be checked from here."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return None
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def try_create(path: str, owner: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"owner": owner, "since": time.time()}, handle)
    return True


def acquire(path: str, owner: dict, wait_timeout: int, stale_after: int) -> dict:
    """Wait until no other live run holds the lock, then take it: {"waited": s[, "broke_stale": owner]}."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    start = time.monotonic()
    broke = None
    while True:
        if try_create(path, owner):
            break
        current = read_lock(path)
        if current is None:
            continue  # released between our attempt and the read
        holder = current.get("owner", {})
        if holder.get("run") == owner.get("run"):
            break  # ours already
        alive = owner_alive(holder)
        if alive is False or (alive is None and current["age"] > stale_after):
            broke = holder
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        if time.monotonic() - start > wait_timeout:
            raise LockTimeout(f"podnet: node is locked by run {holder.get('run')} of {holder.get('host')} "
                              f"(pid {holder.get('pid')}) for {current['age']:.0f} s; waited {wait_timeout} s")
        time.sleep(POLL)
    result: dict = {"waited": round(time.monotonic() - start, 3)}
    if broke is not None:
        result["broke_stale"] = broke
    return result


def release(path: str, owner: dict) -> None:
    """Give the lock back if this run holds it."""
    current = read_lock(path)
    if current and current.get("owner", {}).get("run") == owner.get("run"):
        os.unlink(path)
