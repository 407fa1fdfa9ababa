# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
name: run_owner
short_description: Identify this ansible-playbook run (controller host, process id, random run id)
version_added: "0.1.0"
description:
  - Returns one mapping C({host, pid, pidns, run}) naming the controller, the ansible-playbook process and
    its PID namespace (boot id and namespace inode), so M(podnet.dataplane.node_lock) can tell a live run's
    lock from one a killed run left behind, and checks the process only where it can see it (not on a node
    that merely has the same hostname).
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
from ansible_collections.podnet.dataplane.plugins.module_utils.node_lock import pid_namespace


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        # Lookups run in a worker forked from the ansible-playbook process: its parent is the run.
        return [{"host": socket.gethostname(), "pid": os.getppid(), "pidns": pid_namespace(),
                 "run": secrets.token_hex(8)}]
