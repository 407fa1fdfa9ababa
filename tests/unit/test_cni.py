"""Rendering of the node's CNI conflist (module_utils/plan/cni.py) from podnet's plan."""
from __future__ import annotations

import json

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.cni import (
    CNIError,
    dumps,
    free_ranges,
    network_config,
    render_conflist,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import plan_cluster

HOSTS = {
    "node1": {"podnet_node_ip": "172.30.0.11", "podnet_pods": [{"name": "pod1"}, {"name": "pod2"}]},
    "node2": {"podnet_node_ip": "172.30.0.12", "podnet_pods": [{"name": "pod1", "address": "10.244.9.200"}],
              "podnet_pod_subnet": "10.244.9.0/24"},
}


def planned(backend: str, **extra) -> dict:
    hostvars = {h: {**hv, "podnet_backend": backend, "podnet_cluster_cidr": "10.244.0.0/16", **extra}
                for h, hv in HOSTS.items()}
    return plan_cluster(list(hostvars), hostvars)["nodes"]


def test_free_ranges_split_around_used_addresses():
    assert free_ranges("10.0.0.0/29", ["10.0.0.1", "10.0.0.4/29"]) == [("10.0.0.2", "10.0.0.3"),
                                                                        ("10.0.0.5", "10.0.0.6")]
    assert free_ranges("10.0.0.0/30", ["10.0.0.1", "10.0.0.2"]) == []
    assert free_ranges("10.0.0.0/24", []) == [("10.0.0.1", "10.0.0.254")]


def test_flannel_bridge_conflist():
    node = planned("flannel-vxlan")["node1"]
    subnet = node["subnet"]
    net = subnet.rsplit(".", 1)[0]
    conf = render_conflist(node, data_dir="/var/lib/x")
    assert conf["cniVersion"] == "1.0.0" and conf["name"] == "podnet"
    (plugin,) = conf["plugins"]
    assert plugin == {
        "type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": False, "ipMasq": False,
        "hairpinMode": True, "mtu": 1450,
        "ipam": {
            "type": "host-local",
            # .1 is cni0, .2 and .3 are the lab pods pod1 and pod2: CNI pods start at .4
            "ranges": [[{"subnet": subnet, "rangeStart": f"{net}.4", "rangeEnd": f"{net}.254",
                         "gateway": f"{net}.1"}]],
            "routes": [{"dst": "10.244.0.0/16"}],
            "dataDir": "/var/lib/x",
        },
    }
    # the gateway is the address podnet gives cni0
    assert node["bridge"]["address"] == f"{net}.1/24"


def test_lab_pod_in_the_middle_splits_the_range():
    node = planned("flannel-host-gw")["node2"]
    ranges = render_conflist(node)["plugins"][0]["ipam"]["ranges"]
    assert ranges == [[
        {"subnet": "10.244.9.0/24", "rangeStart": "10.244.9.2", "rangeEnd": "10.244.9.199", "gateway": "10.244.9.1"},
        {"subnet": "10.244.9.0/24", "rangeStart": "10.244.9.201", "rangeEnd": "10.244.9.254",
         "gateway": "10.244.9.1"},
    ]]
    assert render_conflist(node)["plugins"][0]["mtu"] == 1500  # host-gw has no overlay overhead


def test_exclude_and_default_route_and_options():
    node = planned("flannel-host-gw")["node2"]
    conf = render_conflist(node, name="k8s", cni_version="0.4.0", mtu=1400, default_route=True,
                           exclude=["10.244.9.2", "10.244.9.3"],
                           extra_plugins=[{"type": "portmap", "capabilities": {"portMappings": True}}])
    plugin = conf["plugins"][0]
    assert conf["name"] == "k8s" and conf["cniVersion"] == "0.4.0" and plugin["mtu"] == 1400
    assert plugin["ipam"]["ranges"][0][0]["rangeStart"] == "10.244.9.4"
    assert "dataDir" not in plugin["ipam"]
    assert plugin["ipam"]["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0"}]
    assert conf["plugins"][1]["type"] == "portmap"


@pytest.mark.parametrize("backend", ["calico-bgp", "calico-vxlan", "canal"])
def test_calico_style_ptp_conflist(backend):
    node = planned(backend)["node1"]
    net = node["subnet"].rsplit(".", 1)[0]
    (plugin,) = render_conflist(node)["plugins"]
    assert plugin["type"] == "ptp" and plugin["ipMasq"] is False
    assert plugin["mtu"] == (1500 if backend == "calico-bgp" else 1450)
    # the gateway is the subnet's first address (reserved by podnet; ptp puts it on each host veth),
    # not calico's 169.254.1.1, which podnet's own (non-CNI) lab pods use
    assert {p["gateway"] for p in node["pods"]} == {"169.254.1.1"}
    assert plugin["ipam"]["ranges"] == [[{"subnet": node["subnet"], "rangeStart": f"{net}.4",
                                          "rangeEnd": f"{net}.254", "gateway": f"{net}.1"}]]
    assert plugin["ipam"]["routes"] == [{"dst": "10.244.0.0/16"}]


def test_explicit_mtu_of_the_plan_wins():
    node = planned("flannel-vxlan", podnet_mtu=1400)["node1"]
    assert render_conflist(node)["plugins"][0]["mtu"] == 1400


def test_network_config_and_dumps():
    conf = render_conflist(planned("flannel-vxlan")["node1"])
    single = network_config(conf)
    assert single["cniVersion"] == "1.0.0" and single["name"] == "podnet" and single["type"] == "bridge"
    assert "plugins" not in single
    text = dumps(conf)
    assert text.endswith("\n") and json.loads(text) == conf


def test_bad_input():
    node = planned("flannel-vxlan")["node1"]
    with pytest.raises(CNIError, match="subnet"):
        render_conflist({"pod_mode": "bridge"})
    with pytest.raises(CNIError, match="pod mode"):
        render_conflist({**node, "pod_mode": "weird"})
    full = {**node, "subnet": "10.244.1.0/30", "bridge": {"name": "cni0", "address": "10.244.1.1/30"},
            "pods": [{"address": "10.244.1.2/30"}]}
    with pytest.raises(CNIError, match="no address left"):
        render_conflist(full)
