"""Adopting a node someone else programmed (plan/adoption.py and the MAC half of plan/node_record.py): what the
preflight finds on such a node, the subnet and VTEP MAC the controller makes of it (or the refusal, naming every
source, where they disagree), the refusal of an ordinary run on such a node, the VTEP MACs kept on the controller,
and the plan taking them over. The lab tests (tests/integration/test_adopt.py) run the same on nodes."""
from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.podnet.dataplane.plugins.filter.podnet import pod_sources, pod_targets
from ansible_collections.podnet.dataplane.plugins.module_utils.plan import underlay
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.adoption import (
    adopted_record,
    found_on_node,
    refuse_foreign,
    routes_from_ip_json,
    subnet_env_values,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.node_record import (
    LeaseConflict,
    reconcile_macs,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import (
    PlanError,
    plan_cluster,
    vtep_mac_for,
)

CIDR = ipaddress.IPv4Network("10.244.0.0/16")
HOSTVARS = {
    "a": {"podnet_node_ip": "192.168.0.4"},
    "b": {"podnet_node_ip": "192.168.0.16"},
}
SEED_MAC = "56:ad:b6:5f:16:d7"  # node A's flannel.1 in seed 003
ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
ADOPT = {"vtep": "flannel.1", "bridge": "cni0", "subnet_env": "/run/flannel/subnet.env"}


def links(vtep_address="10.244.7.0/32", bridge_address="10.244.7.1/24", owned=False) -> list[dict]:
    return [{"name": "eth0", "mac": "52:54:00:00:00:04", "networks": ["192.168.0.4/24"], "owned": False},
            {"name": "flannel.1", "mac": SEED_MAC, "networks": [vtep_address], "owned": owned},
            {"name": "cni0", "mac": "2a:00:00:00:00:01", "networks": [bridge_address], "owned": owned}]


def test_a_flannel_node_tells_its_subnet_three_ways_and_its_mac():
    found = found_on_node(links(), [], ENV, ADOPT)
    assert found["subnet_env"]["FLANNEL_SUBNET"] == "10.244.7.1/24" and found["vtep"]["mac"] == SEED_MAC
    record = adopted_record("a", found, CIDR, 24)
    assert (record["subnet"], record["vtep_mac"]) == ("10.244.7.0/24", SEED_MAC)
    assert "subnet.env" in record["source"] and "flannel.1" in record["source"] and "cni0" in record["source"]


def test_sources_that_disagree_are_all_named():
    found = found_on_node(links(bridge_address="10.244.8.1/24"), [], ENV, ADOPT)
    with pytest.raises(LeaseConflict, match=r"a cannot be adopted.*subnet.env: 10.244.7.0/24.*cni0's address "
                                            r"10.244.8.1/24: 10.244.8.0/24"):
        adopted_record("a", found, CIDR, 24)


@pytest.mark.parametrize("env, message", [
    ("FLANNEL_SUBNET=10.244.7.1/26\n", r"FLANNEL_SUBNET 10.244.7.1/26 is a /26, but podnet_subnet_prefix is 24"),
    ("FLANNEL_SUBNET=10.99.7.1/24\n", r"outside podnet_cluster_cidr 10.244.0.0/16"),
    ("FLANNEL_SUBNET=banana\n", r"is not an address/prefix"),
])
def test_a_subnet_that_does_not_fit_the_cluster_is_refused(env, message):
    with pytest.raises(LeaseConflict, match=message):
        adopted_record("a", found_on_node([], [], env, ADOPT), CIDR, 24)


def test_nothing_to_adopt_is_no_record():
    assert adopted_record("a", found_on_node(links()[:1], [], None, ADOPT), CIDR, 24) is None
    assert adopted_record("a", None, CIDR, 24) is None
    assert subnet_env_values("not flannel's\n") is None and subnet_env_values("x" * 5000) is None


def test_a_calico_style_node_tells_its_subnet_by_its_pods_routes():
    dump = json.dumps([{"dst": "default", "gateway": "192.168.0.1", "dev": "eth0"},
                       {"dst": "10.244.3.5", "dev": "cali1", "scope": "link"},
                       {"dst": "10.244.3.9", "dev": "cali2", "scope": "link"},
                       {"dst": "10.244.3.7", "dev": "podnet-pod", "scope": "link"},  # a pod podnet wired
                       {"dst": "10.244.4.0/24", "gateway": "192.168.0.16", "dev": "eth0"},
                       {"type": "blackhole", "dst": "10.244.3.0/24"}])
    calico = [{"name": "cali1", "networks": []}, {"name": "cali2", "networks": []},
              {"name": "podnet-pod", "networks": [], "owned": True}]
    found = found_on_node(calico, routes_from_ip_json(dump), None, {"subnet_env": "/run/flannel/subnet.env"})
    assert found["pod_routes"] == ["10.244.3.5", "10.244.3.9"] and found["vtep"] is None
    assert adopted_record("a", found, CIDR, 24) == {"subnet": "10.244.3.0/24", "vtep_mac": None,
                                                    "cluster_cidr": "10.244.0.0/16",
                                                    "source": "adopted: the routes to pods 10.244.3.5, 10.244.3.9"}
    found["pod_routes"].append("10.244.6.2")
    with pytest.raises(LeaseConflict, match="tells different subnets"):
        adopted_record("a", found, CIDR, 24)
    with pytest.raises(ValueError):
        routes_from_ip_json('{"not": "a list"}')


def test_an_ordinary_run_refuses_a_node_running_devices_podnet_did_not_make():
    cluster = plan_cluster(list(HOSTVARS), HOSTVARS, {})
    look = {"links": ["eth0", "flannel.1", "cni0", "tunl0"], "owned_links": []}
    with pytest.raises(LeaseConflict, match=r"a: flannel.1, cni0; b: flannel.1, cni0\. .*playbooks/adopt.yml"):
        refuse_foreign(cluster, {"a": look, "b": look})
    refuse_foreign(cluster, {"a": dict(look, owned_links=["flannel.1", "cni0"])})  # podnet's: nothing to refuse
    handed = dict(HOSTVARS, a={**HOSTVARS["a"], "podnet_take_over": ["flannel.1", "cni0"]})
    refuse_foreign(plan_cluster(list(handed), handed, {}), {"a": look})
    adopting = dict(HOSTVARS, a={**HOSTVARS["a"], "podnet_adopt": True})
    refuse_foreign(plan_cluster(list(adopting), adopting, {}), {"a": look})


def test_adopting_hands_over_the_backends_devices_and_the_routes_to_the_other_nodes():
    adopting = dict(HOSTVARS, a={**HOSTVARS["a"], "podnet_adopt": "yes", "podnet_take_over": ["eth9"]})
    nodes = plan_cluster(list(adopting), adopting, {})["nodes"]
    assert nodes["a"]["take_over"] == ["eth9", "flannel.1", "cni0", nodes["b"]["subnet"]]
    assert nodes["b"]["take_over"] == []
    with pytest.raises(PlanError, match="podnet_adopt: 'perhaps' is not a boolean"):
        plan_cluster(["a"], {"a": {**HOSTVARS["a"], "podnet_adopt": "perhaps"}}, {})


def test_the_plan_takes_the_macs_the_nodes_hold_and_the_inventory_wins():
    cluster = plan_cluster(list(HOSTVARS), HOSTVARS, {}, {"a": SEED_MAC})
    assert cluster["nodes"]["a"]["vtep"]["mac"] == SEED_MAC and cluster["vtep_macs"] == {"a": SEED_MAC}
    assert {"vtep_ip": "10.244.0.0", "mac": SEED_MAC, "node_ip": "192.168.0.4"} in cluster["nodes"]["b"]["vtep"]["peers"]
    explicit = dict(HOSTVARS, a={**HOSTVARS["a"], "podnet_vtep_mac": "22:3d:4d:c5:65:ff"})
    cluster = plan_cluster(list(explicit), explicit, {}, {"a": SEED_MAC})
    assert cluster["nodes"]["a"]["vtep"]["mac"] == "22:3d:4d:c5:65:ff" and cluster["vtep_macs"] == {}
    with pytest.raises(PlanError, match="podnet_vtep_macs_file"):
        plan_cluster(list(HOSTVARS), HOSTVARS, {}, {"a": "not a mac"})
    with pytest.raises(PlanError, match=f"{SEED_MAC} is also the VTEP MAC of a"):
        plan_cluster(list(HOSTVARS), HOSTVARS, {}, {"a": SEED_MAC, "b": SEED_MAC})


def test_the_mac_file_is_completed_from_the_nodes_and_refused_where_it_disagrees():
    cluster = plan_cluster(list(HOSTVARS), HOSTVARS, {})
    default_b = vtep_mac_for("192.168.0.16")
    held = {"a": {"vtep_mac": SEED_MAC}, "b": {"vtep_mac": default_b}}
    # a lost file: the adopted MAC comes back from the node; podnet's default needs no keeping
    assert reconcile_macs({}, cluster, held, set(), vtep_mac_for) == {"a": SEED_MAC}
    assert reconcile_macs({"a": SEED_MAC}, cluster, held, set(), vtep_mac_for) == {"a": SEED_MAC}
    with pytest.raises(LeaseConflict, match=r"a's VTEP has MAC 56:ad:b6:5f:16:d7, but the VTEP MAC file gives it "
                                            r"22:3d:4d:c5:65:ff.*podnet_vtep_mac"):
        reconcile_macs({"a": "22:3d:4d:c5:65:ff", "gone": SEED_MAC}, cluster, held, set(), vtep_mac_for)
    # the inventory's own MAC (podnet_vtep_mac) is not compared, nor kept; a node without a VTEP holds none
    assert reconcile_macs({"a": "22:3d:4d:c5:65:ff"}, cluster, held, {"a"}, vtep_mac_for) == {}
    assert reconcile_macs({}, cluster, {"a": {"vtep_mac": None}, "b": None}, set(), vtep_mac_for) == {}


def test_the_preflight_line_reads_routes_and_subnet_env_when_adopting(tmp_path):
    env = tmp_path / "subnet it's.env"  # quoted: one word for the shell
    env.write_text(ENV)
    record = tmp_path / "none.json"
    adopt = {"vtep": "flannel.1", "subnet_env": str(env)}
    out = subprocess.run(["sh", "-c", underlay.look_command(str(record), adopt)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        pytest.skip("no iproute2 with JSON output")
    sections = underlay.split_look(out.stdout, str(record), adopt)
    assert sections.subnet_env == ENV and sections.record is None
    assert isinstance(routes_from_ip_json(sections.routes), list)
    assert underlay.interfaces_from_ip_json(sections.addresses)
    with pytest.raises(ValueError, match="subnet.env"):
        underlay.split_look(out.stdout.replace(underlay.SUBNET_ENV_SEPARATOR, "x"), str(record), adopt)
    env.unlink()
    out = subprocess.run(["sh", "-c", underlay.look_command(None, adopt)], capture_output=True, text=True, check=True)
    assert underlay.split_look(out.stdout, None, adopt).subnet_env is None


def test_probes_take_the_pods_the_inventory_lists_where_podnet_did_not_wire_them():
    cluster = plan_cluster(list(HOSTVARS), {h: dict(v, podnet_pods=[{"name": "p"}]) for h, v in HOSTVARS.items()}, {})
    hostvars = {"a": {"podnet_probe_pods": [{"name": "web", "netns": "web-ns", "address": "10.244.7.200/24"}]},
                "b": {}}
    assert pod_sources(cluster, "a", hostvars) == [{"name": "a/web", "netns": "web-ns"}]
    assert pod_targets(cluster, "b", hostvars) == [{"name": "a/web", "address": "10.244.7.200"}]
    assert [t["name"] for t in pod_targets(cluster, "a", hostvars)] == ["b/p"]  # b lists none: the plan's
    with pytest.raises(AnsibleFilterError, match="is not an IPv4 address"):
        pod_sources(cluster, "a", {"a": {"podnet_probe_pods": [{"name": "x", "netns": "y", "address": "z"}]}})
    for hostile in ("../../etc/cron.d", "ns; id", "ns\n", None):
        with pytest.raises(AnsibleFilterError, match=r"podnet_probe_pods\[0\]\.netns"):
            pod_sources(cluster, "a", {"a": {"podnet_probe_pods": [{"name": "x", "netns": hostile,
                                                                    "address": "10.244.7.2"}]}})
