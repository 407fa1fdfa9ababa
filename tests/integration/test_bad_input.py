"""The bad-input catalogue (docs/bad-input.md): every invalid inventory fails with a message naming host
and field, and no node changes — each case compares a full state dump of every node before and after.
"""
from __future__ import annotations

import copy
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .labkit import REPO_ROOT, Lab, list_netns

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")

# (id, {host or "all": {var: value}}, host named in the message, field named in the message)
CASES = [
    ("overlapping-subnets", {"node1": {"podnet_pod_subnet": "10.244.0.0/23"},
                             "node2": {"podnet_pod_subnet": "10.244.1.0/24"}}, "node2", "podnet_pod_subnet"),
    ("duplicate-subnets", {"node1": {"podnet_pod_subnet": "10.244.9.0/24"},
                           "node3": {"podnet_pod_subnet": "10.244.9.0/24"}}, "node3", "podnet_pod_subnet"),
    ("subnet-outside-cluster", {"node2": {"podnet_pod_subnet": "10.9.0.0/24"}}, "node2", "podnet_pod_subnet"),
    ("subnet-host-bits", {"node2": {"podnet_pod_subnet": "10.244.7.1/24"}}, "node2", "podnet_pod_subnet"),
    ("subnet-too-small-for-pods", {"node1": {"podnet_pod_subnet": "10.244.8.0/30",
                                             "podnet_pods": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}},
     "node1", "podnet_pods"),
    ("duplicate-node-ip", {"node3": {"podnet_node_ip": "172.30.0.11"}}, "node3", "podnet_node_ip"),
    ("malformed-node-ip", {"node2": {"podnet_node_ip": "172.30.0.300"}}, "node2", "podnet_node_ip"),
    ("loopback-node-ip", {"node2": {"podnet_node_ip": "127.0.0.2"}}, "node2", "podnet_node_ip"),
    ("missing-node-ip", {"node1": {"podnet_node_ip": ""}}, "node1", "podnet_node_ip"),
    ("node-ip-not-on-node", {"node2": {"podnet_node_ip": "172.30.0.99"}}, "node2", "podnet_node_ip"),
    ("underlay-not-holding-node-ip", {"node1": {"podnet_underlay_interface": "lo"}}, "node1",
     "podnet_underlay_interface"),
    ("malformed-cluster-cidr", {"all": {"podnet_cluster_cidr": "10.244.0.0/33"}}, "node1", "podnet_cluster_cidr"),
    ("subnet-prefix-out-of-range", {"all": {"podnet_subnet_prefix": 31}}, "node1", "podnet_subnet_prefix"),
    ("subnet-prefix-larger-than-cluster", {"all": {"podnet_subnet_prefix": 12}}, "node1", "podnet_subnet_prefix"),
    ("cluster-full", {"all": {"podnet_cluster_cidr": "10.244.0.0/25", "podnet_subnet_prefix": 26}}, "node3",
     "podnet_pod_subnet"),
    ("malformed-mac", {"node2": {"podnet_vtep_mac": "22:3d:4d:c5:65"}}, "node2", "podnet_vtep_mac"),
    ("multicast-mac", {"node2": {"podnet_vtep_mac": "01:00:5e:00:00:01"}}, "node2", "podnet_vtep_mac"),
    ("broadcast-mac", {"node3": {"podnet_vtep_mac": "ff:ff:ff:ff:ff:ff"}}, "node3", "podnet_vtep_mac"),
    ("duplicate-mac", {"node1": {"podnet_vtep_mac": "02:00:00:00:00:01"},
                       "node2": {"podnet_vtep_mac": "02:00:00:00:00:01"}}, "node2", "podnet_vtep_mac"),
    ("vni-out-of-range", {"all": {"podnet_vxlan_vni": 16777216}}, "node1", "podnet_vxlan_vni"),
    ("port-out-of-range", {"all": {"podnet_vxlan_port": 0}}, "node1", "podnet_vxlan_port"),
    ("mtu-out-of-range", {"all": {"podnet_mtu": 70000}}, "node1", "podnet_mtu"),
    ("as-out-of-range", {"all": {"podnet_backend": "calico-bgp", "podnet_bgp_as": 0}}, "node1", "podnet_bgp_as"),
    ("ifname-too-long", {"node3": {"podnet_underlay_interface": "averyveryverylongname0"}}, "node3",
     "podnet_underlay_interface"),
    ("ifname-illegal-characters", {"node3": {"podnet_underlay_interface": "eth 0/1"}}, "node3",
     "podnet_underlay_interface"),
    ("tx-checksum-offload-unknown", {"node2": {"podnet_vxlan_tx_checksum_offload": "disabled"}}, "node2",
     "podnet_vxlan_tx_checksum_offload"),
    ("bridge-name-too-long", {"all": {"podnet_bridge": "cni0-bridge-name-x"}}, "node1", "podnet_bridge"),
    ("unknown-backend", {"all": {"podnet_backend": "weave-net"}}, "node1", "podnet_backend"),
    ("backend-disagreement", {"node2": {"podnet_backend": "flannel-host-gw"}}, "node1", "podnet_backend"),
    ("conflicting-backend-options", {"all": {"podnet_backend": "calico-bgp", "podnet_flannel_directrouting": True}},
     "node1", "podnet_flannel_directrouting"),
    ("crosssubnet-without-prefix", {"all": {"podnet_backend": "calico-vxlan", "podnet_calico_crosssubnet": True}},
     "node1", "podnet_node_ip"),
    ("route-reflector-without-bgp", {"node1": {"podnet_bgp_route_reflector": True}}, "node1",
     "podnet_bgp_route_reflector"),
    ("bad-bgp-mode", {"all": {"podnet_backend": "calico-bgp", "podnet_calico_bgp": "quagga"}}, "node1",
     "podnet_calico_bgp"),
    ("ipmasq-not-boolean", {"all": {"podnet_ipmasq": "sometimes"}}, "node1", "podnet_ipmasq"),
    ("pod-outside-subnet", {"node1": {"podnet_pod_subnet": "10.244.5.0/24",
                                      "podnet_pods": [{"name": "p", "address": "10.244.6.3"}]}},
     "node1", "podnet_pods[0].address"),
    ("duplicate-pod-address", {"node1": {"podnet_pod_subnet": "10.244.5.0/24",
                                         "podnet_pods": [{"name": "p", "address": "10.244.5.3"},
                                                         {"name": "q", "address": "10.244.5.3"}]}},
     "node1", "podnet_pods[1].address"),
    ("duplicate-pod-name", {"node2": {"podnet_pods": [{"name": "p"}, {"name": "p"}]}}, "node2",
     "podnet_pods[1].name"),
    ("invalid-pod-name", {"node2": {"podnet_pods": [{"name": "Web_1"}]}}, "node2", "podnet_pods[0].name"),
    ("pods-not-a-list", {"node2": {"podnet_pods": "pod1"}}, "node2", "podnet_pods"),
    ("pod-interface-too-long", {"node2": {"podnet_pods": [{"name": "p", "interface": "eth0-inside-the-pod"}]}},
     "node2", "podnet_pods[p].interface"),
    ("policy-bad-label-key", {"all": {"podnet_backend": "canal",
                                      "podnet_network_policies": [{"name": "p", "selector": {"-app": "db"}}]}},
     "node1", "podnet_network_policies[p].selector"),
    ("policy-port-out-of-range", {"all": {"podnet_backend": "canal", "podnet_network_policies": [
        {"name": "p", "selector": {"app": "db"}, "ingress": [{"ports": [{"port": 70000}]}]}]}},
     "node1", "podnet_network_policies[p].ingress[0].ports[0].port"),
    ("policy-malformed-cidr", {"all": {"podnet_backend": "canal", "podnet_network_policies": [
        {"name": "p", "selector": {"app": "db"}, "ingress": [{"from": [{"cidr": "10.0.0.0/33"}]}]}]}},
     "node1", "podnet_network_policies[p].ingress[0].from[0].cidr"),
    ("policy-on-flannel", {"all": {"podnet_network_policies": [{"name": "p", "selector": {"app": "db"}}]}},
     "node1", "podnet_network_policies"),
    ("pod-label-value-syntax", {"node2": {"podnet_pods": [{"name": "db", "labels": {"app": "db!"}}]}},
     "node2", "podnet_pods[db].labels"),
]


def scrub(value):
    """Drop what the kernel changes on its own (timers, counters)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if "timer" not in k and not k.startswith("stats")}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def state_dump(lab: Lab) -> dict:
    """Everything a run could change, per node (counters and timers stripped)."""
    out = {}
    for host in NODES:
        ns = lab.node_ns(host)
        out[host] = {
            "links": scrub(lab.json(host, "-d", "link", "show")),
            "addresses": lab.json(host, "addr", "show"),
            "routes": lab.json(host, "route", "show", "table", "all"),
            "neighbours": [n for n in lab.json(host, "neigh", "show") if "PERMANENT" in n.get("state", [])],
            "fdb": lab.json(host, "fdb", "show", tool="bridge"),
            "iptables": [line for line in subprocess.run(
                ["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True, check=True
            ).stdout.splitlines() if not line.startswith("#")],
            "sysctls": lab.exec(host, ["sysctl", "-a", "--pattern", r"^net\.ipv4\.(ip_forward|conf\.)"]).stdout,
        }
    return out


def settled_state(lab: Lab, timeout: float = 30.0) -> dict:
    """The state once the kernel has stopped changing it on its own (e.g. IPv6 duplicate address
    detection on links a converge just created, which takes seconds on a loaded machine)."""
    deadline = time.monotonic() + timeout
    previous = state_dump(lab)
    while True:
        time.sleep(1.0)
        current = state_dump(lab)
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current


@pytest.fixture(scope="module")
def converged_lab():
    lab = Lab()
    with lab:
        result = lab.run("playbooks/site.yml")
        assert result.rc == 0, result.output
        settled_state(lab)
        yield lab
    assert list_netns(lab.prefix) == []


def bad_inventory(tmp_path: Path, changes: dict) -> Path:
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventories" / "lab", inventory)
    hosts_file = inventory / "hosts.yml"
    data = yaml.safe_load(hosts_file.read_text())
    hosts = data["podnet_nodes"]["hosts"]
    group_file = inventory / "group_vars" / "podnet_nodes.yml"
    group = yaml.safe_load(group_file.read_text())
    for target, values in copy.deepcopy(changes).items():
        if target == "all":
            group.update(values)
        else:
            hosts[target].update(values)
    hosts_file.write_text(yaml.safe_dump(data))
    group_file.write_text(yaml.safe_dump(group))
    return inventory


def test_catalogue_is_large_enough():
    assert len({case[0] for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize(("changes", "host", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly_and_changes_nothing(converged_lab, tmp_path, changes, host, field):
    lab = converged_lab
    before = state_dump(lab)
    result = lab.run("playbooks/site.yml", inventory=bad_inventory(tmp_path, changes))
    assert result.rc != 0, result.output
    assert f"host {host}: {field}:" in result.stdout or (
        f"fatal: [{host}]" in result.stdout and field in result.stdout), result.output
    assert state_dump(lab) == before


def test_underlay_mtu_disagreement_fails_before_changes(converged_lab):
    lab = converged_lab
    lab.exec("node3", ["ip", "link", "set", "eth0", "mtu", "1400"], check=True)
    try:
        before = settled_state(lab)
        result = lab.run("playbooks/site.yml")
        assert result.rc != 0 and "underlay MTUs differ" in result.stdout, result.output
        assert state_dump(lab) == before
    finally:
        lab.exec("node3", ["ip", "link", "set", "eth0", "mtu", "1500"], check=True)
