"""The Galaxy artifact, installed into a clean directory, converges a lab by FQCN roles alone.

The playbook is the README's "in your own playbook" snippet; it runs from a directory with no
ansible.cfg, no roles/ and no collections/ next to it, with the installed collections as the only ones
on the collections path: podnet.dataplane, and podnet.lab for the lab's connection to its nodes. Whatever it applies must be what the repo's own verify.yml expects."""
from __future__ import annotations

import pytest

from tests.unit.test_galaxy import build_and_install

from .labkit import run_playbook

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")
USER_PLAYBOOK = """\
- hosts: podnet_nodes
  gather_facts: false
  roles:
    - podnet.dataplane.plan
    - podnet.dataplane.flannel
"""


def test_installed_collection_converges_the_lab_by_fqcn(lab, tmp_path):
    _artifact, env = build_and_install(tmp_path, ("dataplane", "lab"))
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env["ANSIBLE_CONFIG"] = str(tmp_path / "ansible.cfg")
    playbook = tmp_path / "podnet.yml"
    playbook.write_text(USER_PLAYBOOK)
    run = run_playbook(playbook, lab.inventory, lab.prefix, extra_vars=lab.extra_vars, env=env)
    assert run.rc == 0, run.output
    assert "/installed/ansible_collections/podnet/dataplane" in run_playbook(
        playbook, lab.inventory, lab.prefix, extra_vars=lab.extra_vars, env={**env, "ANSIBLE_VERBOSITY": "1"},
        limit="node1").stdout  # (-v names the role's path: the installed copy, not the repo's)
    for host in NODES:
        vtep = lab.json(host, "-d", "link", "show", "flannel.1")
        assert vtep and vtep[0]["linkinfo"]["info_data"]["id"] == 1
        assert len(lab.json(host, "fdb", "show", "dev", "flannel.1", tool="bridge")) == 2
        assert len([r for r in lab.json(host, "route", "show", "proto", "152") if "/" in r["dst"]]) == 2
    again = run_playbook(playbook, lab.inventory, lab.prefix, extra_vars=lab.extra_vars, env=env)
    assert again.rc == 0 and again.changed() == 0, again.output
    verify = lab.run("playbooks/verify.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert verify.rc == 0, verify.output  # no drift from the plan, every pod reaches every pod
