"""The bad-input catalogue (docs/bad-input.md): every invalid inventory fails with a message naming host
and field, and no node changes — each case compares a full state dump of every node before and after.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .labkit import REPO_ROOT, Lab, list_netns, netns_json

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


# Where podnet writes on a node when the inventory does not say otherwise (lab nodes share the controller's
# filesystem, so a hostile path that slipped through would land here); the lab's own files are all under
# /run/podnet-lab/<prefix> (persist dir, BIRD dir, subnet.env, locks, proxy-ARP state, leases).
DEFAULT_NODE_PATHS = ("/etc/podnet", "/run/podnet", "/run/flannel", "/var/lib/podnet", "/etc/cni/net.d")


def files_dump(roots: list[str]) -> dict:
    """Every file and folder under roots: type, mode, size, mtime and (files) a content digest."""
    out = {}
    for root in roots:
        top = Path(root)
        for path in [top, *sorted(top.rglob("*"))] if top.exists() or top.is_symlink() else []:
            st = path.lstat()
            entry = {"mode": st.st_mode, "size": st.st_size, "mtime": st.st_mtime_ns}
            if path.is_symlink():
                entry["target"] = os.readlink(path)
            elif path.is_file():
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path)] = entry
    return out


def state_dump(lab: Lab) -> dict:
    """Everything a run could change, per node (counters and timers stripped), plus every other
    namespace of the lab (pods, underlay) and the files podnet writes."""
    out: dict = {"netns": list_netns(lab.prefix),
                 "files": files_dump([f"/run/podnet-lab/{lab.prefix}", *DEFAULT_NODE_PATHS])}
    for ns in out["netns"]:
        if ns not in {lab.node_ns(h) for h in NODES}:
            out[ns] = {"links": scrub(netns_json(ns, "-d", "link", "show")),
                       "addresses": netns_json(ns, "addr", "show"),
                       "routes": netns_json(ns, "route", "show", "table", "all")}
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
            "sysctls": lab.exec(host, ["sysctl", "-a", "--pattern",
                                        r"^net\.ipv4\.(ip_forward|conf\.|neigh\.[^.]+\.proxy_delay)"]).stdout,
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


# Hostile and careless values: names a YAML block scalar ends with "\n", shell and quoting breakers, unicode
# look-alikes, 10,000 characters, NUL, device names that clash, paths that leave their folder. Each must
# be refused by the plan on the controller, with `host <name>: <variable>:` and the value shown escaped.
# A host that is not in the lab inventory is added to it (it is never contacted: the plan fails first).
POLICY_BACKEND = {"podnet_backend": "calico-bgp"}
BIRD = {"podnet_backend": "calico-bgp", "podnet_calico_bgp": "bird"}


def policy(**rule) -> dict:
    return {"all": {**POLICY_BACKEND, "podnet_network_policies": [
        {"name": "p", "selector": {"app": "db"}, "ingress": [rule]}]}}


# class: 1 newline, 2 unchecked text (netns, sysctls, node paths, hostnames), 3 shell/unicode/long/NUL,
# 5 device names that clash, 8 paths, 9 network policy
# (id, class, {host or "all": {var: value}}, host named in the message, variable named in the message)
HOSTILE = [
    ("pod-name-newline", 1, {"node2": {"podnet_pods": [{"name": "db\n"}]}}, "node2", "podnet_pods[0].name"),
    ("pod-interface-newline", 1, {"node2": {"podnet_pods": [{"name": "db", "interface": "eth0\n"}]}}, "node2",
     "podnet_pods[db].interface"),
    ("host-interface-newline", 1, {"node3": {"podnet_pods": [{"name": "db", "host_interface": "vethdb\n"}]}},
     "node3", "podnet_pods[db].host_interface"),
    ("bridge-newline", 1, {"all": {"podnet_bridge": "cni0\n"}}, "node1", "podnet_bridge"),
    ("underlay-newline", 1, {"node1": {"podnet_underlay_interface": "eth0\n"}}, "node1",
     "podnet_underlay_interface"),
    ("label-key-newline", 1, {"node2": {"podnet_pods": [{"name": "db", "labels": {"app\n": "db"}}]}}, "node2",
     "podnet_pods[db].labels"),
    ("policy-name-newline", 1, {"all": {**POLICY_BACKEND, "podnet_network_policies": [
        {"name": "deny\n", "selector": {}}]}}, "node1", "podnet_network_policies[0].name"),
    ("mtu-newline", 1, {"all": {"podnet_mtu": "1450\n"}}, "node1", "podnet_mtu"),
    ("netns-semicolon", 2, {"node1": {"podnet_pods": [{"name": "web", "netns": "web;reboot"}]}}, "node1",
     "podnet_pods[web].netns"),
    ("netns-command-substitution", 2, {"node3": {"podnet_pods": [
        {"name": "web", "netns": "$(touch /tmp/x)"}]}}, "node3", "podnet_pods[web].netns"),
    ("netns-prefix-slash", 2, {"node2": {"podnet_pod_netns_prefix": "../../run/x-"}}, "node2",
     "podnet_pod_netns_prefix"),
    ("pod-sysctl-slash", 2, {"all": {**POLICY_BACKEND, "podnet_pod_sysctls": {
        "net.ipv4.conf.{}/x.proxy_arp": 1}}}, "node1", "podnet_pod_sysctls"),
    ("pod-sysctl-double-slash", 2, {"all": {**POLICY_BACKEND, "podnet_pod_sysctls": {
        "net.ipv4.conf.{}.//.//.//.//.//.//.etc.shadow": 1}}}, "node1", "podnet_pod_sysctls"),
    ("pod-sysctl-not-net", 2, {"all": {**POLICY_BACKEND, "podnet_pod_sysctls": {
        "kernel.core_pattern": "|/tmp/x"}}}, "node1", "podnet_pod_sysctls"),
    ("persist-dir-newline", 2,
     {"node1": {"podnet_persist_dir": "/var/lib/podnet\nExecStartPre=/bin/sh -c id"}},
     "node1", "podnet_persist_dir"),
    ("boot-python-quote", 2, {"node3": {"podnet_boot_python": "/usr/bin/python3' -c 'import os"}}, "node3",
     "podnet_boot_python"),
    ("bird-dir-dot-dot", 2, {"all": {**BIRD, "podnet_bird_dir": "/etc/podnet/../../tmp/bird"}}, "node1",
     "podnet_bird_dir"),
    ("lock-file-quote", 2, {"node2": {"podnet_lock_file": '/run/podnet/node".lock'}}, "node2",
     "podnet_lock_file"),
    ("subnet-env-newline", 2, {"node3": {"podnet_flannel_subnet_env": "/run/flannel/subnet.env\n"}}, "node3",
     "podnet_flannel_subnet_env"),
    ("proxy-arp-state-relative", 2, {"node1": {"podnet_proxy_arp_state_file": "proxy_arp.json"}}, "node1",
     "podnet_proxy_arp_state_file"),
    ("bird-hostnames-clash", 2, {"all": BIRD, "node-4": {"podnet_node_ip": "172.30.0.14"},
                                 "node_4": {"podnet_node_ip": "172.30.0.15"}},
     "node_4", "inventory_hostname"),
    ("hostname-shell", 2, {"node4;reboot": {"podnet_node_ip": "172.30.0.14"}}, "'node4;reboot'",
     "inventory_hostname"),
    ("pod-name-quote", 3, {"node1": {"podnet_pods": [{"name": "db'"}]}}, "node1", "podnet_pods[0].name"),
    ("bridge-backtick", 3, {"all": {"podnet_bridge": "c`id`"}}, "node1", "podnet_bridge"),
    ("underlay-dollar", 3, {"node2": {"podnet_underlay_interface": "$IFS"}}, "node2",
     "podnet_underlay_interface"),
    ("netns-pipe", 3, {"node3": {"podnet_pods": [{"name": "web", "netns": "web|sh"}]}}, "node3",
     "podnet_pods[web].netns"),
    ("backend-double-quote", 3, {"all": {"podnet_backend": 'flannel-vxlan"'}}, "node1", "podnet_backend"),
    ("pod-name-cyrillic", 3, {"node1": {"podnet_pods": [{"name": "w\u0435b"}]}}, "node1",
     "podnet_pods[0].name"),
    ("underlay-zero-width-space", 3, {"node3": {"podnet_underlay_interface": "eth0\u200b"}}, "node3",
     "podnet_underlay_interface"),
    ("node-ip-fullwidth", 3, {"node2": {"podnet_node_ip": "172.30.0.\uff11\uff12"}}, "node2",
     "podnet_node_ip"),
    ("vni-fullwidth", 3, {"all": {"podnet_vxlan_vni": "\uff11"}}, "node1", "podnet_vxlan_vni"),
    ("pod-name-10k", 3, {"node2": {"podnet_pods": [{"name": "a" * 10000}]}}, "node2", "podnet_pods[0].name"),
    ("netns-10k", 3, {"node3": {"podnet_pods": [{"name": "web", "netns": "n" * 10000}]}}, "node3",
     "podnet_pods[web].netns"),
    ("policy-name-10k", 3, {"all": {**POLICY_BACKEND, "podnet_network_policies": [
        {"name": "p" * 10000, "selector": {}}]}}, "node1", "podnet_network_policies[0].name"),
    ("pod-name-nul", 3, {"node1": {"podnet_pods": [{"name": "db\0"}]}}, "node1", "podnet_pods[0].name"),
    ("bridge-is-underlay", 5, {"all": {"podnet_bridge": "eth0"},
                               "node1": {"podnet_underlay_interface": "eth0"}}, "node1", "podnet_bridge"),
    ("bridge-is-lo", 5, {"all": {"podnet_bridge": "lo"}}, "node1", "podnet_bridge"),
    ("host-interface-is-bridge", 5, {"node2": {"podnet_pods": [{"name": "p", "host_interface": "cni0"}]}},
     "node2", "podnet_pods[p].host_interface"),
    ("host-interface-is-vtep", 5, {"node3": {"podnet_pods": [{"name": "p", "host_interface": "flannel.1"}]}},
     "node3", "podnet_pods[p].host_interface"),
    ("host-interface-is-underlay", 5, {"node1": {"podnet_underlay_interface": "eth0", "podnet_pods": [
        {"name": "p", "host_interface": "eth0"}]}}, "node1", "podnet_pods[p].host_interface"),
    ("two-pods-one-host-interface", 5, {"node2": {"podnet_pods": [{"name": "p", "host_interface": "vethx"},
                                                                 {"name": "q", "host_interface": "vethx"}]}},
     "node2", "podnet_pods[q].host_interface"),
    ("vtep-is-pod-host-end", 5, {"all": {"podnet_vxlan_vni": 7}, "node3": {"podnet_pods": [
        {"name": "p", "host_interface": "flannel.7"}]}}, "node3", "podnet_pods[p].host_interface"),
    ("pod-interface-is-lo", 5, {"node1": {"podnet_pods": [{"name": "p", "interface": "lo"}]}}, "node1",
     "podnet_pods[p].interface"),
    ("persist-dir-non-ascii", 8, {"node2": {"podnet_persist_dir": "/var/lib/p\u00f6dnet"}}, "node2",
     "podnet_persist_dir"),
    ("persist-dir-10k", 8, {"node1": {"podnet_persist_dir": "/" + "a" * 10000}}, "node1",
     "podnet_persist_dir"),
    ("bird-dir-too-long-for-its-socket", 8, {"all": {**BIRD, "podnet_bird_dir": "/run/" + "b" * 100}},
     "node1", "podnet_bird_dir"),
    ("lock-file-dot-dot", 8, {"node3": {"podnet_lock_file": "/run/podnet/../../etc/cron.d/podnet"}}, "node3",
     "podnet_lock_file"),
    ("path-nul", 8, {"node3": {"podnet_flannel_subnet_env": "/run/flannel/subnet.env\0"}}, "node3",
     "podnet_flannel_subnet_env"),
    ("policy-except-outside-cidr", 9, policy(**{"from": [
        {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]}), "node1",
     "podnet_network_policies[p].ingress[0].from[0].except[0]"),
    ("policy-cidr-newline", 9, policy(**{"from": [{"cidr": "10.0.0.0/8\n-j ACCEPT"}]}), "node1",
     "podnet_network_policies[p].ingress[0].from[0].cidr"),
    ("policy-name-quote", 9, {"all": {**POLICY_BACKEND, "podnet_network_policies": [
        {"name": "p'", "selector": {}}]}}, "node1", "podnet_network_policies[p'].name"),
    ("policy-selector-backtick", 9, {"all": {**POLICY_BACKEND, "podnet_network_policies": [
        {"name": "p", "selector": {"app": "`id`"}}]}}, "node1", "podnet_network_policies[p].selector"),
    ("policy-protocol-semicolon", 9, policy(ports=[{"port": 80, "protocol": "tcp;id"}]), "node1",
     "podnet_network_policies[p].ingress[0].ports[0].protocol"),
]
HOSTILE_CLASSES = (1, 2, 3, 5, 8, 9)


def hostile_inventory(tmp_path: Path, changes: dict) -> Path:
    """bad_inventory, where a host the lab has not got is added to the inventory."""
    new_hosts = {t: v for t, v in changes.items() if t != "all" and t not in NODES}
    inventory = bad_inventory(tmp_path, {t: v for t, v in changes.items() if t not in new_hosts})
    hosts_file = inventory / "hosts.yml"
    data = yaml.safe_load(hosts_file.read_text())
    data["podnet_nodes"]["hosts"].update(copy.deepcopy(new_hosts))
    hosts_file.write_text(yaml.safe_dump(data))
    return inventory


def strings_in(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return [value] if isinstance(value, str) else []


@pytest.fixture(scope="module")
def hostile_baseline(converged_lab) -> dict:
    return state_dump(converged_lab)


def test_hostile_catalogue_is_large_enough():
    assert len({case[0] for case in HOSTILE}) == len(HOSTILE) >= 40
    assert not {case[0] for case in HOSTILE} & {case[0] for case in CASES}
    for cls in HOSTILE_CLASSES:
        assert sum(1 for case in HOSTILE if case[1] == cls) >= 3, cls
    assert {case[1] for case in HOSTILE} == set(HOSTILE_CLASSES)


@pytest.mark.parametrize(("changes", "host", "field"), [c[2:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_refused_by_the_plan_and_changes_nothing(converged_lab, hostile_baseline, tmp_path,
                                                                 changes, host, field):
    lab = converged_lab
    before = hostile_baseline  # a dump per case would cost as much again: each case must leave this as it is
    result = lab.run("playbooks/site.yml", inventory=hostile_inventory(tmp_path, changes))
    output = result.stdout + result.stderr
    assert result.rc != 0, result.output
    assert "Traceback" not in output, result.output
    # the planner's message (the filter's error), not some later failure that happens to name the variable
    assert "podnet: invalid inventory:" in output, result.output
    assert re.search(rf"host {re.escape(host)}: {re.escape(field)}:", output), result.output
    # a value's newline is shown escaped: what follows it never starts a line of its own
    lines = {line.strip() for line in output.splitlines()}
    for text in strings_in(changes):
        for forged in text.split("\n")[1:]:
            assert not forged.strip() or forged.strip() not in lines, (forged, result.output)
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
