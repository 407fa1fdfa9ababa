"""Hostile and careless inventory values that must be refused on the controller, each with a message that
names host and variable: names with a trailing newline (a YAML block scalar adds one, and `$` of a
`re.match` pattern accepts it), shell words in network namespace names, unicode and very long values.

The planner is pure Python: these need no root and no host."""
from __future__ import annotations

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.iptables_chains import normalize_chains
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import PlanError, plan_cluster
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    check_interface_name,
    check_mac,
    check_netns_name,
)
from ansible_collections.podnet.lab.plugins.modules.netns_lab import PREFIX_RE

POLICY_POD = {"name": "db", "labels": {"app": "db"}}


def problems_of(a_vars: dict, backend: str = "calico-bgp", group: dict | None = None) -> list[str]:
    hostvars = {"a": {"podnet_node_ip": "192.168.0.4", "podnet_backend": backend, **(group or {}), **a_vars},
                "b": {"podnet_node_ip": "192.168.0.16", "podnet_backend": backend, **(group or {})}}
    with pytest.raises(PlanError) as info:
        plan_cluster(["a", "b"], hostvars)
    return info.value.problems


# (id, host a's variables, group variables, backend, the variable the message must name)
CASES = [
    ("pod-name-trailing-newline", {"podnet_pods": [{"name": "db\n"}]}, {}, "calico-bgp", "podnet_pods[0].name"),
    ("pod-name-newline-and-command", {"podnet_pods": [{"name": "db\nip link del eth0"}]}, {}, "calico-bgp",
     "podnet_pods[0].name"),
    ("pod-name-unicode", {"podnet_pods": [{"name": "dЬ"}]}, {}, "calico-bgp", "podnet_pods[0].name"),
    ("pod-name-too-long", {"podnet_pods": [{"name": "p" * 64}]}, {}, "calico-bgp", "podnet_pods[0].name"),
    ("pod-interface-trailing-newline", {"podnet_pods": [{"name": "db", "interface": "eth0\n"}]}, {}, "calico-bgp",
     "podnet_pods[db].interface"),
    ("pod-host-interface-trailing-newline", {"podnet_pods": [{"name": "db", "host_interface": "calidb\n"}]}, {},
     "calico-bgp", "podnet_pods[db].host_interface"),
    ("underlay-interface-trailing-newline", {"podnet_underlay_interface": "eth0\n"}, {}, "flannel-vxlan",
     "podnet_underlay_interface"),
    ("bridge-trailing-newline", {}, {"podnet_bridge": "cni0\n"}, "flannel-vxlan", "podnet_bridge"),
    ("vtep-mac-trailing-newline", {"podnet_vtep_mac": "02:00:00:00:00:01\n"}, {}, "flannel-vxlan",
     "podnet_vtep_mac"),
    ("vtep-mac-surrounding-space", {"podnet_vtep_mac": " 02:00:00:00:00:01"}, {}, "flannel-vxlan",
     "podnet_vtep_mac"),
    ("label-key-trailing-newline", {"podnet_pods": [{"name": "db", "labels": {"app\n": "db"}}]},
     {"podnet_network_policies": []}, "calico-bgp", "podnet_pods[db].labels"),
    ("label-value-trailing-newline", {"podnet_pods": [{"name": "db", "labels": {"app": "db\n"}}]}, {},
     "calico-bgp", "podnet_pods[db].labels"),
    ("policy-name-trailing-newline", {"podnet_pods": [POLICY_POD]},
     {"podnet_network_policies": [{"name": "deny\n", "selector": {}, "ingress": []}]}, "calico-bgp",
     "podnet_network_policies[0].name"),
    ("pod-netns-shell-command", {"podnet_pods": [{"name": "web", "netns": "web; curl x | sh; :"}]}, {},
     "calico-bgp", "podnet_pods[web].netns"),
    ("pod-netns-space", {"podnet_pods": [{"name": "web", "netns": "web ns"}]}, {}, "calico-bgp",
     "podnet_pods[web].netns"),
    ("pod-netns-option", {"podnet_pods": [{"name": "web", "netns": "-all"}]}, {}, "calico-bgp",
     "podnet_pods[web].netns"),
    ("pod-netns-path", {"podnet_pods": [{"name": "web", "netns": "../../etc"}]}, {}, "calico-bgp",
     "podnet_pods[web].netns"),
    ("pod-netns-trailing-newline", {"podnet_pods": [{"name": "web", "netns": "web\n"}]}, {}, "calico-bgp",
     "podnet_pods[web].netns"),
    ("pod-netns-too-long", {"podnet_pods": [{"name": "web", "netns": "n" * 129}]}, {}, "calico-bgp",
     "podnet_pods[web].netns"),
    ("netns-prefix-shell-command", {"podnet_pods": [{"name": "web"}], "podnet_pod_netns_prefix": "x;reboot;"}, {},
     "flannel-vxlan", "podnet_pod_netns_prefix"),
    ("netns-prefix-unicode", {"podnet_pods": [{"name": "web"}], "podnet_pod_netns_prefix": "pöd-"}, {},
     "flannel-vxlan", "podnet_pod_netns_prefix"),
    ("netns-prefix-too-long", {"podnet_pods": [{"name": "web"}], "podnet_pod_netns_prefix": "p" * 70}, {},
     "flannel-vxlan", "podnet_pod_netns_prefix"),
    # podnet_pod_sysctls reached /proc/sys unchecked: sysctl(8) swaps '.' and '/', so '//' is a '..' part
    ("pod-sysctl-escapes-proc-sys", {},
     {"podnet_pod_sysctls": {"net.ipv4.conf.{}.//.//.//.//.//.//.etc.shadow": 1}},
     "calico-bgp", "podnet_pod_sysctls"),
    ("pod-sysctl-slash", {}, {"podnet_pod_sysctls": {"net.ipv4.conf.{}/x.proxy_arp": 1}}, "calico-bgp",
     "podnet_pod_sysctls"),
    ("pod-sysctl-not-per-interface", {}, {"podnet_pod_sysctls": {"kernel.core_pattern": "|/tmp/x"}},
     "calico-bgp", "podnet_pod_sysctls"),
    ("pod-sysctl-empty-part", {}, {"podnet_pod_sysctls": {"net.ipv4.conf.{}..proxy_arp": 1}}, "calico-bgp",
     "podnet_pod_sysctls"),
    ("pod-sysctl-value-newline", {}, {"podnet_pod_sysctls": {"net.ipv4.conf.{}.proxy_arp": "1\n0"}},
     "calico-bgp", "podnet_pod_sysctls"),
    ("pod-sysctls-not-a-mapping", {}, {"podnet_pod_sysctls": "net.ipv4.conf.{}.proxy_arp=1"}, "calico-bgp",
     "podnet_pod_sysctls"),
    # int() takes what an operator did not mean as a number
    ("vni-fullwidth-digits", {}, {"podnet_vxlan_vni": "\uff14\uff10\uff19\uff16"}, "calico-vxlan",
     "podnet_vxlan_vni"),
    ("mtu-with-newline", {}, {"podnet_mtu": "1450\n"}, "flannel-vxlan", "podnet_mtu"),
    ("subnet-prefix-fraction", {}, {"podnet_subnet_prefix": 24.9}, "flannel-vxlan", "podnet_subnet_prefix"),
    ("pod-address-suffix", {"podnet_pod_subnet": "10.244.5.0/24",
                            "podnet_pods": [{"name": "p", "address": "10.244.5.3/$(reboot)"}]}, {},
     "calico-bgp", "podnet_pods[0].address"),
    ("pod-interface-lo", {"podnet_pods": [{"name": "p", "interface": "lo"}]}, {}, "flannel-vxlan",
     "podnet_pods[p].interface"),
    ("persist-dir-too-long", {"podnet_persist_dir": "/" + "a" * 10000}, {}, "flannel-vxlan",
     "podnet_persist_dir"),
    ("bird-dir-too-long-for-its-socket", {"podnet_bird_dir": "/run/" + "b" * 100}, {}, "flannel-vxlan",
     "podnet_bird_dir"),
]


@pytest.mark.parametrize(("a_vars", "group", "backend", "var"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_host_and_variable_named(a_vars, group, backend, var):
    problems = problems_of(a_vars, backend, group)
    assert any(p.startswith(f"host a: {var}:") for p in problems), problems
    assert all("\n" not in p.split(":", 2)[1] for p in problems), problems  # the field path is one line


@pytest.mark.parametrize("name", ["eth0\n", "eth0\r", "eth 0", "eth0;", "ethé", "", ".", ".."])
def test_interface_names_are_full_matches(name):
    assert check_interface_name("dev", name)


@pytest.mark.parametrize("mac", ["02:00:00:00:00:01\n", "02:00:00:00:00:01 ", "02-00-00-00-00-01",
                                 "02:00:00:00:00:0１"])
def test_macs_are_full_matches(mac):
    assert check_mac("mac", mac)


@pytest.mark.parametrize("name", ["web", "cni-0b5d2f3a-1c2e-4b4e-9f0e-0a1b2c3d4e5f", "pt1a2b3-node1-pod1", "n_1.x"])
def test_real_netns_names_pass(name):
    assert check_netns_name("netns", name) == []


def test_chain_names_are_full_matches():
    _chains, problems = normalize_chains({"PODNET-X\n": []}, "PODNET-")
    assert any("is not a valid chain name" in p for p in problems), problems


@pytest.mark.parametrize("prefix", ["ab\n", "AB", "abcdefghi", "a-b", ""])
def test_lab_prefixes_are_full_matches(prefix):
    assert not PREFIX_RE.fullmatch(prefix)


def plan_hosts(names: list[str], **group) -> list[str]:
    hostvars = {name: {"podnet_node_ip": f"192.168.0.{i + 4}", **group} for i, name in enumerate(names)}
    with pytest.raises(PlanError) as info:
        plan_cluster(names, hostvars)
    return info.value.problems


@pytest.mark.parametrize("name", ["node1\nprotocol bgp evil {", "../../etc/cron.d/x", "node/1", "..", "-node",
                                  "nöde", "n" * 254, "node 1"])
def test_hostnames_that_cannot_be_written_safely_are_refused(name):
    problems = plan_hosts(["good", name])
    assert f"host {name!r}: inventory_hostname: must be letters, digits" in problems[0], problems
    assert all("\n" not in p for p in problems), problems  # the bad name is shown escaped


def test_hostnames_bird_cannot_tell_apart_are_refused_with_bird_only():
    problems = plan_hosts(["node-a", "node_a", "n" * 60], podnet_backend="calico-bgp", podnet_calico_bgp="bird")
    assert "host node_a: inventory_hostname: BIRD would name it peer_node_a, as node-a" in problems[0], problems
    assert problems[1].startswith(f"host {'n' * 60}: inventory_hostname: BIRD names this peer"), problems
    hostvars = {name: {"podnet_node_ip": f"192.168.0.{i + 4}", "podnet_backend": "calico-bgp"}
                for i, name in enumerate(["node-a", "node_a"])}
    nodes = plan_cluster(["node-a", "node_a"], hostvars)["nodes"]  # static BGP: no BIRD, no clash
    assert nodes["node-a"]["bgp"]["neighbors"][0]["symbol"] == "peer_node_a"


@pytest.mark.parametrize(("var", "value"), [
    ("podnet_persist_dir", "/etc/podnet/state\nExecStartPre=/bin/sh -c 'curl x|sh'"),
    ("podnet_boot_lib", "/usr/local/lib/pod net"),
    ("podnet_boot_python", "python3"),
    ("podnet_bird_dir", '/etc/podnet/bird";include "/tmp/x'),
    ("podnet_bird_dir", "/etc/podnet/../bird"),
    ("podnet_lock_file", "/run/podnet/./node.lock"),
    ("podnet_flannel_subnet_env", "/run/flannel/subnet.env\n"),
    ("podnet_proxy_arp_state_file", "/var/lib/podnet/pröxy.json"),
    ("podnet_persist_dir", ["/etc/podnet/state"]),
])
def test_node_paths_from_the_inventory_are_checked(var, value):
    problems = problems_of({var: value}, "flannel-vxlan")
    assert any(p.startswith(f"host a: {var}: ") and "must be an absolute path" in p for p in problems), problems


@pytest.mark.parametrize("sysctls", [
    {"net.ipv4.conf.{}.proxy_arp": 1, "net.ipv4.neigh.{}.proxy_delay": 0, "net.ipv4.conf.{}.rp_filter": "2"},
    {"net.ipv6.conf.{}.proxy_ndp": 1},
    {},
])
def test_real_pod_sysctls_pass(sysctls):
    # a string of ASCII digits is still a number (podnet_mtu); a pod address may carry its prefix
    pods = [{"name": "p", "address": "10.244.0.9/24"}]
    hostvars = {h: {"podnet_node_ip": ip, "podnet_backend": "calico-bgp", "podnet_pod_sysctls": sysctls,
                    "podnet_mtu": "1450", "podnet_pods": pods if h == "a" else []}
                for h, ip in (("a", "192.168.0.4"), ("b", "192.168.0.16"))}
    hostvars["a"]["podnet_pod_subnet"] = "10.244.0.0/24"
    assert set(plan_cluster(["a", "b"], hostvars)["nodes"]) == {"a", "b"}


def test_default_like_paths_and_an_empty_persist_dir_pass():
    hostvars = {"a": {"podnet_node_ip": "192.168.0.4", "podnet_persist_dir": "",
                      "podnet_bird_dir": "/run/podnet-lab/pt1a2b3/a/bird", "podnet_boot_python": "/usr/bin/python3.11"},
                "b": {"podnet_node_ip": "192.168.0.16", "podnet_lock_file": "/run/podnet/node.lock"}}
    assert set(plan_cluster(["a", "b"], hostvars)["nodes"]) == {"a", "b"}


@pytest.mark.parametrize(("backend", "a_vars", "group", "var", "words"), [
    ("flannel-vxlan", {"podnet_underlay_interface": "br0"}, {"podnet_bridge": "br0"}, "podnet_bridge",
     "is also podnet_underlay_interface"),
    ("flannel-vxlan", {"podnet_pods": [{"name": "p", "host_interface": "cni0"}]}, {},
     "podnet_pods[p].host_interface", "is also podnet_bridge"),
    ("calico-bgp", {"podnet_underlay_interface": "bond0", "podnet_pods": [{"name": "p", "host_interface": "bond0"}]},
     {}, "podnet_pods[p].host_interface", "is also podnet_underlay_interface"),
    ("calico-bgp", {"podnet_pods": [{"name": "p", "host_interface": "x1"}, {"name": "q", "host_interface": "x1"}]},
     {}, "podnet_pods[q].host_interface", "is also podnet_pods[p].host_interface"),
    ("calico-vxlan", {"podnet_pods": [{"name": "p", "host_interface": "flannel.1"}]}, {},
     "podnet_pods[p].host_interface", "another backend's device"),
    ("calico-bgp", {"podnet_pods": [{"name": "p", "host_interface": "lo"}]}, {}, "podnet_pods[p].host_interface",
     "the loopback device"),
    ("flannel-host-gw", {}, {"podnet_bridge": "tunl0"}, "podnet_bridge", "another backend's device"),
])
def test_device_names_that_clash_are_refused_before_any_node_changes(backend, a_vars, group, var, words):
    problems = problems_of(a_vars, backend, group)
    assert any(p.startswith(f"host a: {var}: ") and words in p for p in problems), problems


@pytest.mark.parametrize("backend", ["flannel-vxlan", "flannel-host-gw", "calico-bgp", "calico-ipip", "calico-vxlan",
                                     "canal", "romana-style", "weave-style"])
def test_every_backends_own_devices_do_not_clash(backend):
    hostvars = {h: {"podnet_node_ip": ip, "podnet_backend": backend, "podnet_pods": [{"name": "p1"}, {"name": "p2"}]}
                for h, ip in (("a", "192.168.0.4"), ("b", "192.168.0.16"))}
    assert set(plan_cluster(["a", "b"], hostvars)["nodes"]) == {"a", "b"}


def test_a_very_long_value_is_shown_shortened():
    problems = problems_of({"podnet_pods": [{"name": "p" * 10000}], "podnet_persist_dir": "/" + "d" * 10000},
                           "flannel-vxlan")
    assert problems and all(len(p) < 300 for p in problems), [p[:300] for p in problems]
