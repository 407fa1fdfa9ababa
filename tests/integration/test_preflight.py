"""podnet.dataplane.preflight answers the node IP check from one `ip -j -d address show` (its action plugin,
no module process on the node) exactly as the module does over netlink, fails the same way, and runs
the module for anything more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .labkit import Lab
from .test_module_runs import NODES, counting_interpreter, runs_per_node

pytestmark = pytest.mark.integration

PLAYBOOK = """
- hosts: podnet_nodes
  gather_facts: false
  tasks:
    - name: Only the node IP check (action plugin, no module)
      podnet.dataplane.preflight:
        node_ip: "{{{{ podnet_node_ip }}}}"
      register: fast
    - name: The same on the named underlay, and on one that does not hold it
      podnet.dataplane.preflight:
        node_ip: "{{{{ podnet_node_ip }}}}"
        underlay_interface: "{{{{ item }}}}"
      loop: [eth0, lo]
      register: named
      ignore_errors: true
    - name: A node IP the node does not have
      podnet.dataplane.preflight:
        node_ip: 172.30.0.250
      register: missing
      ignore_errors: true
    - name: More than the node IP check (the module)
      podnet.dataplane.preflight:
        node_ip: "{{{{ podnet_node_ip }}}}"
        iptables_prefix: PODNET-
      register: full
    - name: Keep what each answered
      ansible.builtin.copy:
        content: "{{{{ {{'fast': fast, 'named': named.results, 'missing': missing, 'full': full}} | to_json }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0600"
      delegate_to: localhost
"""
FACTS = ("underlay_interface", "underlay_mtu", "links", "owned_links")


def test_address_check_without_a_module_run_answers_as_the_module(lab: Lab, tmp_path: Path) -> None:
    lab.exec("node1", ["ip", "link", "add", "podnettest0", "type", "bridge"], check=True)
    lab.exec("node1", ["ip", "link", "set", "podnettest0", "alias", "podnet"], check=True)
    lab.exec("node2", ["ip", "link", "set", "eth0", "mtu", "1400"], check=True)
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(PLAYBOOK.format(out=tmp_path))
    wrapper, log = counting_interpreter(tmp_path)

    result = lab.run(playbook, extra_vars={"ansible_python_interpreter": str(wrapper)})

    assert result.rc == 0, result.output
    assert runs_per_node(lab, log) == {h: 1 for h in NODES}  # the last task only
    for host in NODES:
        seen = json.loads((tmp_path / f"{host}.json").read_text())
        fast, full = seen["fast"], seen["full"]
        assert {k: fast[k] for k in FACTS} == {k: full[k] for k in FACTS}, host
        assert fast["underlay_interface"] == "eth0" and not fast["changed"]
        assert fast["paths"] == {} and fast["persisted"] == [] and fast["iptables_prefix_present"] is None
        assert isinstance(full["iptables_prefix_present"], bool)
        on_eth0, on_lo = seen["named"]
        assert not on_eth0.get("failed") and on_eth0["underlay_mtu"] == fast["underlay_mtu"]
        assert on_lo["failed"] and "podnet_underlay_interface lo does not hold podnet_node_ip" in on_lo["msg"]
        assert seen["missing"]["failed"]
        assert "podnet_node_ip 172.30.0.250 is not configured on any interface" in seen["missing"]["msg"]
    node1 = json.loads((tmp_path / "node1.json").read_text())["fast"]
    assert node1["owned_links"] == ["podnettest0"] and "podnettest0" in node1["links"]
    assert json.loads((tmp_path / "node2.json").read_text())["fast"]["underlay_mtu"] == 1400
