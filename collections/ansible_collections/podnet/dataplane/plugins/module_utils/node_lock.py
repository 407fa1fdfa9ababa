# Copyright: podnet contributors
# Apache License 2.0
"""The node lock (podnet.dataplane.node_lock, and podnet.dataplane.preflight's I(lock)): a lock file
that serializes podnet runs on a node and that a killed run cannot wedge."""
from __future__ import annotations

import fcntl
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
    """The lock's content, its age and its identity (inode and mtime: which lock file this was)."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise ValueError("not a lock record")
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        data = {"owner": {}}  # torn write: judge by age
    data["age"] = time.time() - info.st_mtime
    data["identity"] = (info.st_ino, info.st_mtime_ns)
    return data


def pid_namespace() -> str | None:
    """This process's PID namespace, unique on the machine and in time (boot id + namespace inode): a pid
    recorded by a run can be checked from here only when both are the same. Hostnames are not enough: a
    controller and a node (or two containers) may share one."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def owner_alive(owner: dict) -> bool | None:
    """True/False when the owner's process can be checked from here; None when it cannot (another machine
    or container): then only the lock's age tells."""
    if not isinstance(owner.get("pid"), int):
        return None
    if "pidns" in owner:
        if owner["pidns"] is None or owner["pidns"] != pid_namespace():
            return None
    elif owner.get("host") != socket.gethostname():  # an owner recorded by an earlier release
        return None
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def break_stale(path: str, judged: tuple[int, int]) -> bool:
    """Remove the lock file judged stale, if it is still that file. Runs that judge the same lock stale at
    once serialize on a mutex file next to it: the first removes it (and takes the lock anew), the others
    find another lock file there and leave it alone. Without this, the second run removed the first one's
    fresh lock and both held the node."""
    with open(f"{path}.break", "a", encoding="utf-8") as mutex:
        fcntl.flock(mutex.fileno(), fcntl.LOCK_EX)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return False
        if (info.st_ino, info.st_mtime_ns) != judged:
            return False
        os.unlink(path)
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
            if break_stale(path, current["identity"]):
                broke = holder
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
