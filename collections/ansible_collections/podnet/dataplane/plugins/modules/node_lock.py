#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_lock
short_description: Serialize podnet runs on a node with a lock file that a killed run cannot wedge
version_added: "0.1.0"
description:
  - C(state=acquired) waits until no other live run holds the node's lock, then takes it; C(released)
    gives it back (site.yml does that in an C(always) section).
  - A lock whose owner is gone is broken at once when the owner ran on this same machine (its
    process id no longer exists) and otherwise once it is older than I(stale_after) seconds, so a run
    killed with SIGKILL never blocks later runs forever.
  - The lock records the owner; acquiring it again within the same run is a no-op.
  - Reports C(changed=false) - taking a lock is not a change to the node's network.
author:
  - podnet maintainers (@podnet)
options:
  owner:
    description: The run, as returned by the C(podnet.dataplane.run_owner) lookup (C(host), C(pid), C(run)).
    type: dict
    required: true
  path:
    description: Lock file on the node.
    type: path
    default: /run/podnet/node.lock
  state:
    description: Take or give back the lock.
    type: str
    choices: [acquired, released]
    default: acquired
  wait_timeout:
    description: Seconds to wait for a live run's lock before failing.
    type: int
    default: 600
  stale_after:
    description: Seconds after which a lock whose owner cannot be checked counts as abandoned.
    type: int
    default: 900
"""

EXAMPLES = r"""
- name: Take the node lock
  podnet.dataplane.node_lock:
    owner: "{{ podnet_run }}"
"""

RETURN = r"""
waited:
  description: Seconds spent waiting for another run.
  returned: always
  type: float
broke_stale:
  description: The abandoned lock that was broken, if any.
  returned: when a stale lock was broken
  type: dict
"""

import json
import os
import socket
import time

from ansible.module_utils.basic import AnsibleModule

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


def main() -> None:
    module = AnsibleModule(argument_spec={
        "owner": {"type": "dict", "required": True},
        "path": {"type": "path", "default": "/run/podnet/node.lock"},
        "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
        "wait_timeout": {"type": "int", "default": 600},
        "stale_after": {"type": "int", "default": 900},
    }, supports_check_mode=True)
    p = module.params
    path, owner = p["path"], p["owner"]
    if module.check_mode and p["state"] == "acquired":
        module.exit_json(changed=False, waited=0.0, msg="check mode: lock not taken")
    if p["state"] == "released":
        current = read_lock(path)
        if current and current.get("owner", {}).get("run") == owner.get("run") and not module.check_mode:
            os.unlink(path)
        module.exit_json(changed=False, waited=0.0)

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
        if alive is False or (alive is None and current["age"] > p["stale_after"]):
            broke = holder
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        if time.monotonic() - start > p["wait_timeout"]:
            module.fail_json(msg=f"podnet: node is locked by run {holder.get('run')} of {holder.get('host')} "
                                 f"(pid {holder.get('pid')}) for {current['age']:.0f} s; waited {p['wait_timeout']} s")
        time.sleep(POLL)
    result = {"changed": False, "waited": round(time.monotonic() - start, 3)}
    if broke is not None:
        result["broke_stale"] = broke
    module.exit_json(**result)


if __name__ == "__main__":
    main()
