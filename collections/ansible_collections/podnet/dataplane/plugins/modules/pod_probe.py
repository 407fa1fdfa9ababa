#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pod_probe
short_description: Measure lost packets between pods while something changes the network
version_added: "0.1.0"
description:
  - C(started) starts one prober in each source pod's network namespace on this node, listening on I(port). Start
    them on every node before any node's are C(sending), so that no probe goes to a prober not there yet.
  - C(sending) makes this node's probers send, every I(interval_ms), a numbered UDP datagram to each target; each
    records which numbers arrived from which source. A prober runs at most I(bound) seconds, then ends by itself.
  - C(quiet) makes this node's probers stop sending (they keep listening). Quiet every node before any node is
    C(stopped), so that a datagram still in flight is not counted lost.
  - C(sending), C(quiet) and C(stopped) touch only the probers of I(sources) when it is given (nodes that share a
    I(state_dir), as the namespace lab's do), all of I(state_dir)'s otherwise.
  - C(stopped) ends the probers (after half a second more of listening), returns their reports and removes their
    files. P(podnet.dataplane.probe_loss#filter) turns every node's reports into lost probes per pod pair.
  - The probers are this node's processes under I(state_dir); podnet signals only a process whose PID and start
    time its own record names, and removes only files it wrote there.
author:
  - podnet maintainers (@podnet)
attributes:
  check_mode:
    support: none
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  state:
    description: Start the probers (listening), make them send, make them stop sending, or stop them and read
      their reports - in this order, each on every node before the next on any.
    type: str
    choices: [started, sending, quiet, stopped]
    required: true
  sources:
    description: Pods on this node (P(podnet.dataplane.pod_sources#filter) gives them). Needed to start.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The pod's name in the reports (C(<host>/<pod>)).
        type: str
        required: true
      netns:
        description: The pod's network namespace.
        type: str
        required: true
  targets:
    description: The pods every source probes (P(podnet.dataplane.pod_targets#filter) gives them).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The pod's name in the reports.
        type: str
        required: true
      address:
        description: Its IPv4 address (a CIDR suffix is ignored).
        type: str
        required: true
  port:
    description: The UDP port every prober listens on and sends to.
    type: int
    default: 9797
  interval_ms:
    description: Milliseconds between two probes to a target (one lost probe is this long an outage).
    type: int
    default: 10
  bound:
    description: Seconds a prober runs at most.
    type: int
    default: 900
  state_dir:
    description: The folder of the probers' program, records and reports on this node (made 0700 if missing).
    type: path
    default: /run/podnet/probe
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Start probing every pod on the other nodes
  podnet.dataplane.pod_probe:
    state: started
    sources: "{{ podnet_cluster | podnet.dataplane.pod_sources(inventory_hostname) }}"
    targets: "{{ podnet_cluster | podnet.dataplane.pod_targets(inventory_hostname) }}"
"""

RETURN = r"""
probes:
  description: The probers running on this node (C(started)).
  returned: when state is started
  type: list
  elements: dict
  sample: [{name: node1/pod1, netns: lab-node1-pod1, pid: 4242}]
reports:
  description: Every prober's report (C(stopped)) - its name, interval, probes sent per target, and the numbers
    received per source as inclusive ranges.
  returned: when state is stopped
  type: list
  elements: dict
  sample: [{name: node1/pod1, interval_ms: 10, sent: {node2/pod1: 500}, received: {node2/pod1: [[0, 499]]}}]
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.node import files, loss_probe

ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["started", "sending", "quiet", "stopped"], "required": True},
    "sources": {"type": "list", "elements": "dict", "default": [],
                "options": {"name": {"type": "str", "required": True}, "netns": {"type": "str", "required": True}}},
    "targets": {"type": "list", "elements": "dict", "default": [],
                "options": {"name": {"type": "str", "required": True}, "address": {"type": "str", "required": True}}},
    "port": {"type": "int", "default": 9797},
    "interval_ms": {"type": "int", "default": 10},
    "bound": {"type": "int", "default": 900},
    "state_dir": {"type": "path", "default": "/run/podnet/probe"},
}
RECORD_MARK = "pod_probe"
PROGRAM = "loss_probe.py"
_NETNS = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_IPV4 = re.compile(r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}")
REPORT_WAIT = 30.0


def problems(p: dict) -> list[str]:
    found = []
    for at, source in enumerate(p["sources"]):
        if not _NETNS.fullmatch(source["netns"]) or source["netns"] in (".", ".."):
            found.append(f"sources[{at}].netns: {source['netns']!r} is not a network namespace name")
        if "=" in source["name"] or not source["name"].isprintable():
            found.append(f"sources[{at}].name: {source['name']!r} must be printable, without '='")
    for at, target in enumerate(p["targets"]):
        if not _IPV4.fullmatch(target["address"].split("/")[0]):
            found.append(f"targets[{at}].address: {target['address']!r} is not an IPv4 address")
        if "=" in target["name"] or not target["name"].isprintable():
            found.append(f"targets[{at}].name: {target['name']!r} must be printable, without '='")
    for key, low, high in (("port", 1, 65535), ("interval_ms", 1, 60000), ("bound", 1, 86400)):
        if not low <= p[key] <= high:
            found.append(f"{key}: {p[key]} is out of range {low}..{high}")
    if p["state"] == "started" and not p["sources"]:
        found.append("sources: at least one pod is needed to start probing")
    return found


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def records(state_dir: str) -> dict[str, dict]:
    """podnet's prober records in state_dir by file name (anything else there is left alone)."""
    found = {}
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return {}
    for name in names:
        if not name.endswith(".probe.json"):
            continue
        try:
            with open(os.path.join(state_dir, name), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("podnet") == RECORD_MARK:
            found[name] = record
    return found


def alive(record: dict) -> bool:
    return start_time(record["pid"]) == record["start_time"]


def start(module: AnsibleModule, p: dict) -> dict:
    folder = p["state_dir"]
    files.make_folder(folder, 0o700)
    program = os.path.join(folder, PROGRAM)
    source = loss_probe.__loader__.get_source(loss_probe.__name__)
    files.converge(program, source, 0o600)
    running = records(folder)
    ip = module.get_bin_path("ip", required=True)
    probes, changed = [], False
    for pod in p["sources"]:
        record_name = f"{pod['netns']}.probe.json"
        record = running.get(record_name)
        if record and alive(record):
            probes.append({"name": record["name"], "netns": record["netns"], "pid": record["pid"]})
            continue
        report = os.path.join(folder, f"{pod['netns']}.report.json")
        files.remove(report)
        targets = [f"{t['name']}={t['address'].split('/')[0]}" for t in p["targets"] if t["name"] != pod["name"]]
        argv = [ip, "netns", "exec", pod["netns"], sys.executable, program, "--name", pod["name"], "--port",
                str(p["port"]), "--interval-ms", str(p["interval_ms"]), "--bound", str(p["bound"]), "--report",
                report, *targets]
        # its own session, no terminal and no pipes back to this module: it outlives the module's run
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
        started = None
        for _attempt in range(100):
            started = start_time(proc.pid)
            if started:
                break
            time.sleep(0.01)
        if proc.poll() is not None or started is None:
            module.fail_json(msg=f"the prober in {pod['netns']} ended at once (exit {proc.returncode}): "
                                 f"{' '.join(argv)}")
        files.atomic_write(os.path.join(folder, record_name), json.dumps(
            {"podnet": RECORD_MARK, "name": pod["name"], "netns": pod["netns"], "pid": proc.pid,
             "start_time": started, "report": report}), 0o600)
        probes.append({"name": pod["name"], "netns": pod["netns"], "pid": proc.pid})
        changed = True
    return {"changed": changed, "probes": probes}


def mine(p: dict) -> dict[str, dict]:
    """The records of the given sources' probers (all of state_dir's without sources): nodes that share a folder,
    as the namespace lab's do, each touch only their own pods' probers."""
    found = records(p["state_dir"])
    if not p["sources"]:
        return found
    wanted = {f"{pod['netns']}.probe.json" for pod in p["sources"]}
    return {name: record for name, record in found.items() if name in wanted}


def signal_mine(p: dict, signum: int) -> dict:
    changed = False
    for record in mine(p).values():
        if alive(record):
            os.kill(record["pid"], signum)
            changed = True
    return {"changed": changed}


def stop(module: AnsibleModule, p: dict) -> dict:
    folder = p["state_dir"]
    found = mine(p)
    for record in found.values():
        if alive(record):
            os.kill(record["pid"], signal.SIGTERM)
    reports, missing = [], []
    deadline = time.monotonic() + REPORT_WAIT
    for name, record in found.items():
        report = os.path.join(folder, f"{record['netns']}.report.json")
        while alive(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            with open(report, encoding="utf-8") as handle:
                content = json.load(handle)
        except (OSError, ValueError):
            content = None
        if isinstance(content, dict) and content.get("podnet") == loss_probe.REPORT_MARK:
            reports.append(content)
        else:
            missing.append(record["name"])
        files.remove(report)
        files.remove(os.path.join(folder, name))
    if missing:
        module.fail_json(msg=f"no report from the probers of {', '.join(missing)}", reports=reports)
    return {"changed": bool(found), "reports": reports}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=False)
    p = module.params
    found = problems(p)
    if found:
        module.fail_json(msg="; ".join(found))
    if p["state"] == "started":
        module.exit_json(**start(module, p))
    if p["state"] in ("sending", "quiet"):
        module.exit_json(**signal_mine(p, signal.SIGUSR2 if p["state"] == "sending" else signal.SIGUSR1))
    module.exit_json(**stop(module, p))


if __name__ == "__main__":
    main()
