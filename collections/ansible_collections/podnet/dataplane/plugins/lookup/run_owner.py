# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
name: run_owner
short_description: Identify this ansible-playbook run (controller host, process id, random run id)
version_added: "0.1.0"
description:
  - Returns one mapping C({host, pid, run}) naming the controller, the ansible-playbook process and a
    random run id. M(podnet.dataplane.node_apply) records it in the node lock it holds, so a run that has
    to wait, or the run after one that was killed, can say which run held the node. The lock's liveness
    never rests on it - the kernel releases the lock with the process that holds it on the node.
  - Evaluate it once per play (C(set_fact) with C(run_once)); every call makes a new run id.
author:
  - podnet maintainers (@podnet)
"""

EXAMPLES = r"""
- ansible.builtin.set_fact:
    podnet_run: "{{ lookup('podnet.dataplane.run_owner') }}"
  run_once: true
"""

RETURN = r"""
_raw:
  description: The owner mapping.
  type: list
  elements: dict
"""

import os
import secrets
import socket

from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        # Lookups run in a worker forked from the ansible-playbook process: its parent is the run.
        return [{"host": socket.gethostname(), "pid": os.getppid(), "run": secrets.token_hex(8)}]
