"""How many module processes site.yml starts on each node (issue 8, part 3: per-node cost is per
module run, ~0.3 CPU-s of Python and Ansible's imports on the node). The plan play's look at every node
is one `ip -j -d address show` (the preflight action plugin), and the whole apply of a node - lock, backend
with every cleanup, network policy, unlock - is one podnet.dataplane.node_apply run; backend switches
still clean up (the other tests check the kernel).

Module runs are counted with a Python interpreter wrapper that logs the network namespace each
module process starts in.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest

from .labkit import Lab, netns_exec

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")
# Module runs per node on a no-op re-run: podnet.dataplane.node_apply and nothing else; the bound
# leaves no room for a separate lock, look or cleanup module.
NOOP_MAX = {"flannel-vxlan": 1, "calico-bgp": 1}


def counting_interpreter(tmp: Path) -> tuple[Path, Path]:
    log = tmp / "module_runs.log"
    wrapper = tmp / "python"
    wrapper.write_text(f"#!/bin/sh\nreadlink /proc/self/ns/net >> {log}\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper, log


def runs_per_node(lab: Lab, log: Path) -> dict[str, int]:
    inodes = {netns_exec(lab.node_ns(h), ["readlink", "/proc/self/ns/net"]).stdout.strip(): h for h in NODES}
    counts = collections.Counter(inodes.get(line.strip(), "other") for line in log.read_text().splitlines())
    log.write_text("")
    return {h: counts[h] for h in NODES}


def counted_run(lab: Lab, wrapper: Path, log: Path, backend: str, playbook: str = "playbooks/site.yml"):
    log.write_text("")
    result = lab.run(playbook, extra_vars={"podnet_backend": backend, "ansible_python_interpreter": str(wrapper)})
    assert result.rc == 0, result.output
    return result, runs_per_node(lab, log)


def test_noop_rerun_starts_only_the_needed_modules(lab, tmp_path):
    wrapper, log = counting_interpreter(tmp_path)
    for backend in ("flannel-vxlan", "calico-bgp", "flannel-vxlan"):
        _, converge = counted_run(lab, wrapper, log, backend)
        again, noop = counted_run(lab, wrapper, log, backend)
        print(f"{backend}: module runs per node, converge {converge}, no-op re-run {noop}")
        assert again.changed() == 0, again.recap
        assert all(n <= NOOP_MAX[backend] for n in noop.values()), (backend, noop)
        assert all(noop[h] <= converge[h] for h in NODES), (backend, converge, noop)
        verify, _ = counted_run(lab, wrapper, log, backend, "playbooks/verify.yml")
        assert verify.rc == 0, verify.output


def test_reset_is_one_module_run_per_node(lab, tmp_path):
    """reset.yml removes a node's whole state in one node_apply run (state deleted); the lab's nodes have
    no boot unit, whose removal would be the second."""
    wrapper, log = counting_interpreter(tmp_path)
    counted_run(lab, wrapper, log, "calico-bgp")
    result, reset = counted_run(lab, wrapper, log, "calico-bgp", "playbooks/reset.yml")
    print(f"reset.yml: module runs per node {reset}")
    assert all(n == 1 for n in reset.values()), reset
    for host in NODES:
        assert [link["ifname"] for link in lab.json(host, "link", "show")] == ["lo", "eth0"]
        assert lab.json(host, "route", "show", "proto", "152") == []
        assert not Path(f"/run/podnet-lab/{lab.prefix}/{host}/state").exists()  # the boot records went
    again, _ = counted_run(lab, wrapper, log, "calico-bgp", "playbooks/reset.yml")
    assert again.changed() == 0, again.recap
