"""Self-test of the namespace lab: lab_up/lab_down, the netns connection plugin and labkit itself."""

from __future__ import annotations

import ipaddress
import itertools
import json
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.labkit import (
    LAB_INVENTORY,
    LAB_UP,
    Lab,
    list_netns,
    netns_exec,
    netns_json,
    run_playbook,
)

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
PODS = ("pod1", "pod2")

# Runs a command and the raw module inside each node and saves what they saw on the shared filesystem.
PROBE_PLAYBOOK = """
- hosts: podnet_nodes
  gather_facts: false
  tasks:
    - ansible.builtin.command: ip -j addr show dev eth0
      register: probe
    - ansible.builtin.raw: ip -j addr show dev eth0
      register: probe_raw
    - ansible.builtin.copy:
        content: "{{ {'command': probe.stdout, 'raw': probe_raw.stdout} | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
"""


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[Lab]:
    """One lab for the tests that only look at it (building one takes a few seconds)."""
    with Lab(LAB_INVENTORY) as lab:
        yield lab


def addresses(links: list[dict]) -> set[str]:
    return {a["local"] for link in links for a in link.get("addr_info", []) if a.get("family") == "inet"}


def is_up(ns: str, ifname: str) -> bool:
    (link,) = netns_json(ns, "link", "show", "dev", ifname)
    return "UP" in link["flags"]


def test_lab_up_builds_namespaces(shared_lab: Lab) -> None:
    expected = (
        [shared_lab.underlay_ns]
        + [shared_lab.node_ns(h) for h in NODES]
        + [shared_lab.pod_ns(h, p) for h in NODES for p in PODS]
    )
    assert list_netns(shared_lab.prefix) == sorted(expected)
    ports = netns_json(shared_lab.underlay_ns, "link", "show", "master", "br0")
    assert sorted(p["ifname"] for p in ports) == ["v11", "v12", "v13"]
    assert addresses(netns_json(shared_lab.underlay_ns, "addr", "show", "dev", "br0")) == {"172.30.0.1"}
    for host, ip in NODES.items():
        assert addresses(shared_lab.json(host, "addr", "show", "dev", "eth0")) == {ip}
        assert is_up(shared_lab.node_ns(host), "eth0") and is_up(shared_lab.node_ns(host), "lo")
        (default,) = shared_lab.json(host, "route", "show", "default")
        assert default["gateway"] == "172.30.0.1" and default["dev"] == "eth0"
        for pod in PODS:
            assert [link["ifname"] for link in netns_json(shared_lab.pod_ns(host, pod), "link")] == ["lo"]
            assert is_up(shared_lab.pod_ns(host, pod), "lo")


def test_nodes_reach_each_other_over_the_underlay(shared_lab: Lab) -> None:
    for src, dst in itertools.permutations(NODES, 2):
        proc = shared_lab.exec(src, ["ping", "-c1", "-W1", NODES[dst]])
        assert proc.returncode == 0, f"{src} -> {dst}: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("pipelining", [False, True])
def test_connection_plugin_runs_inside_the_node(shared_lab: Lab, tmp_path: Path, pipelining: bool) -> None:
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PROBE_PLAYBOOK)
    result = shared_lab.run(
        playbook,
        extra_vars={"out_dir": str(tmp_path)},
        env={"ANSIBLE_PIPELINING": str(pipelining), "ANSIBLE_VERBOSITY": "3"},
    )
    assert result.rc == 0, result.output
    assert sorted(result.recap) == sorted(NODES) and result.failed() == 0
    # With pipelining modules are fed through stdin; without it they are copied to a temp file first.
    module_puts = [line for line in result.stdout.splitlines() if " PUT " in line and "AnsiballZ_" in line]
    assert bool(module_puts) is not pipelining, result.stdout
    for host, ip in NODES.items():
        seen = json.loads((tmp_path / f"{host}.json").read_text())
        assert addresses(json.loads(seen["command"])) == {ip}
        assert addresses(json.loads(seen["raw"])) == {ip}


def test_connection_plugin_reports_a_missing_namespace(shared_lab: Lab, tmp_path: Path) -> None:
    playbook = tmp_path / "ping.yml"
    playbook.write_text(
        "- hosts: podnet_nodes\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n"
    )
    result = shared_lab.run(playbook, extra_vars={"ansible_netns_name": f"{shared_lab.prefix}-nosuchnode"})
    assert result.rc != 0
    assert result.recap["node1"]["unreachable"] == 1
    assert (
        f"network namespace '{shared_lab.prefix}-nosuchnode' does not exist" in result.stdout + result.stderr
    )


def test_lab_up_is_idempotent(lab: Lab) -> None:
    again = lab.run(LAB_UP)
    assert again.rc == 0, again.output
    assert again.recap["localhost"]["changed"] == 0, again.output
    assert lab.up_result is not None and lab.up_result.recap["localhost"]["changed"] == 1
    checked = lab.run(LAB_UP, check=True)
    assert checked.rc == 0 and checked.changed() == 0, checked.output


def test_lab_up_check_mode_creates_nothing(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(up=False)
    checked = lab.run(LAB_UP, check=True)
    assert checked.rc == 0 and checked.changed("localhost") == 1, checked.output
    assert list_netns(lab.prefix) == []


def test_lab_up_repairs_a_broken_node(lab: Lab) -> None:
    lab.exec("node2", ["ip", "link", "del", "eth0"], check=True)
    lab.exec("node3", ["ip", "addr", "flush", "dev", "eth0"], check=True)
    checked = lab.run(LAB_UP, check=True)
    assert checked.rc == 0 and checked.changed("localhost") == 1, checked.output
    assert "eth0" not in {link["ifname"] for link in lab.json("node2", "link", "show")}  # not repaired
    repaired = lab.run(LAB_UP)
    assert repaired.rc == 0 and repaired.changed("localhost") == 1, repaired.output
    proc = lab.exec("node2", ["ping", "-c1", "-W1", NODES["node3"]])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def root_network() -> ipaddress.IPv4Network:
    """A network the root namespace really uses (the one of its first global IPv4 address)."""
    for link in json.loads(
        subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, check=True).stdout
    ):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                return ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
    pytest.skip("the root namespace has no global IPv4 address to collide with")


def test_lab_up_refuses_an_underlay_overlapping_the_root_namespace(lab_factory: Callable[..., Lab]) -> None:
    net = root_network()
    lab = lab_factory(up=False)
    result = lab.run(LAB_UP, extra_vars={"podnet_lab_underlay_cidr": str(net), "podnet_lab_gateway": None})
    assert result.rc != 0
    assert f"underlay_cidr {net} overlaps the root network namespace" in result.stdout + result.stderr
    assert list_netns(lab.prefix) == []


def test_lab_down_removes_everything(lab: Lab) -> None:
    down = lab.down()
    assert down.recap["localhost"]["changed"] == 1, down.output
    assert list_netns(lab.prefix) == []


def test_lab_down_works_when_the_inventory_lost_nodes(lab: Lab, tmp_path: Path) -> None:
    # An inventory that forgot node2 and node3, and a process left running in node3.
    shrunk = tmp_path / "inventory"
    shutil.copytree(LAB_INVENTORY / "group_vars", shrunk / "group_vars")
    (shrunk / "hosts.yml").write_text(
        "podnet_nodes:\n  hosts:\n    node1:\n      podnet_node_ip: 172.30.0.11\n"
    )
    sleeper = subprocess.Popen(["ip", "netns", "exec", lab.node_ns("node3"), "sleep", "300"])
    try:
        down = run_playbook("playbooks/lab_down.yml", shrunk, lab.prefix)
        assert down.rc == 0, down.output
        assert list_netns(lab.prefix) == []
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_labkit_helpers(shared_lab: Lab) -> None:
    assert netns_exec(shared_lab.node_ns("node1"), ["true"]).returncode == 0
    fdb = netns_json(shared_lab.underlay_ns, "fdb", "show", "br", "br0", tool="bridge")
    assert isinstance(fdb, list) and fdb
    assert netns_json(shared_lab.pod_ns("node1", "pod1"), "route") == []  # empty output parses as []
    with pytest.raises(subprocess.CalledProcessError):
        shared_lab.json("node1", "route", "show", "table", "100")  # no such table: `ip` fails
