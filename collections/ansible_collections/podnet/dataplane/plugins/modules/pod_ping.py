#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pod_ping
short_description: Ping from pods on this node to a list of pod addresses (connectivity matrix row)
version_added: "0.1.0"
description:
  - For every source pod (a network namespace on this node) and every target address, runs
    C(ping) inside the pod's namespace, all in parallel, and reports which pairs answered.
  - Read-only; never changes anything, so it reports C(changed=false) and runs in check mode.
author:
  - podnet maintainers (@podnet)
attributes:
  check_mode:
    support: full
    details: Read-only; it runs the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  sources:
    description: Pods on this node.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Label for the report.
        type: str
        required: true
      netns:
        description: The pod's network namespace.
        type: str
        required: true
  targets:
    description: Addresses to reach.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Label for the report.
        type: str
        required: true
      address:
        description: IPv4 address (a CIDR suffix is ignored).
        type: str
        required: true
  count:
    description: Echo requests per pair; a pair passes when any is answered.
    type: int
    default: 2
  timeout:
    description: Seconds to wait for each reply.
    type: int
    default: 2
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Reach every pod from this node's pods
  podnet.dataplane.pod_ping:
    sources: [{name: node1/pod1, netns: lab-node1-pod1}]
    targets: [{name: node2/pod1, address: 10.244.1.2}]
  register: matrix
"""

RETURN = r"""
results:
  description: One entry per (source, target) pair.
  returned: always
  type: list
  elements: dict
  sample: [{source: node1/pod1, target: node2/pod1, address: 10.244.1.2, ok: true}]
failed_pairs:
  description: Number of pairs without any answer.
  returned: always
  type: int
"""

import subprocess

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = {
    "sources": {"type": "list", "elements": "dict", "required": True,
                "options": {"name": {"type": "str", "required": True}, "netns": {"type": "str", "required": True}}},
    "targets": {"type": "list", "elements": "dict", "required": True,
                "options": {"name": {"type": "str", "required": True}, "address": {"type": "str", "required": True}}},
    "count": {"type": "int", "default": 2},
    "timeout": {"type": "int", "default": 2},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    ip = module.get_bin_path("ip", required=True)
    ping = module.get_bin_path("ping", required=True)
    running = []
    for source in p["sources"]:
        for target in p["targets"]:
            address = target["address"].split("/")[0]
            argv = [ip, "netns", "exec", source["netns"], ping, "-n", "-q", "-c", str(p["count"]),
                    "-i", "0.2", "-W", str(p["timeout"]), address]
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            running.append((source["name"], target["name"], address, proc))
    results = [{"source": s, "target": t, "address": a, "ok": proc.wait() == 0} for s, t, a, proc in running]
    module.exit_json(changed=False, results=results, failed_pairs=sum(not r["ok"] for r in results))


if __name__ == "__main__":
    main()
