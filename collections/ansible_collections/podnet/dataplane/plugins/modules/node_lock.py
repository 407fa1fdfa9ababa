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
  - A lock whose owner is gone is broken at once when the owner's process can be checked from the node
    (the same PID namespace of the same boot, as the lab's namespace nodes share with the controller) and
    no longer exists, and otherwise once it is older than I(stale_after) seconds, so a run killed with
    SIGKILL never blocks later runs forever. A node that merely has the controller's hostname cannot see
    its processes and never breaks its live lock.
  - Breaking a stale lock is atomic - runs that find the same stale lock at once serialize on a mutex file
    next to it (I(path)C(.break)), and only the first removes it; the others find the new owner's lock.
  - The lock records the owner; acquiring it again within the same run is a no-op.
  - Reports C(changed=false) - taking a lock is not a change to the node's network.
author:
  - podnet maintainers (@podnet)
options:
  owner:
    description: The run, as returned by the C(podnet.dataplane.run_owner) lookup (C(host), C(pid), C(pidns), C(run)).
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.node_lock import (
    LOCK_SPEC,
    LockTimeout,
    acquire,
    release,
)


def main() -> None:
    module = AnsibleModule(argument_spec={
        **LOCK_SPEC,
        "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
    }, supports_check_mode=True)
    p = module.params
    if module.check_mode and p["state"] == "acquired":
        module.exit_json(changed=False, waited=0.0, msg="check mode: lock not taken")
    if p["state"] == "released":
        if not module.check_mode:
            release(p["path"], p["owner"])
        module.exit_json(changed=False, waited=0.0)
    try:
        taken = acquire(p["path"], p["owner"], p["wait_timeout"], p["stale_after"])
    except LockTimeout as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **taken)


if __name__ == "__main__":
    main()
