"""Validation and planning: pure Python, no root, no host."""
from __future__ import annotations

import copy
import ipaddress

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import (
    PlanError,
    plan_cluster,
    vtep_mac_for,
)

BASE = {
    "a": {"podnet_node_ip": "192.168.0.4"},
    "b": {"podnet_node_ip": "192.168.0.16"},
    "c": {"podnet_node_ip": "192.168.0.20"},
}


def plan(hostvars, leases=None, hosts=None):
    return plan_cluster(hosts or list(hostvars), hostvars, leases)


def with_vars(host: str | None = None, **values) -> dict:
    hv = copy.deepcopy(BASE)
    for h in ([host] if host else list(hv)):
        hv[h].update(values)
    return hv


def problems_of(hostvars) -> list[str]:
    with pytest.raises(PlanError) as info:
        plan(hostvars)
    return info.value.problems


@pytest.mark.parametrize(
    ("hostvars", "host", "field", "words"),
    [
        pytest.param({**BASE, "b": {"podnet_node_ip": "192.168.0.16", "podnet_pod_subnet": "10.244.0.0/23"},
                      "a": {"podnet_node_ip": "192.168.0.4", "podnet_pod_subnet": "10.244.1.0/24"}},
                     "b", "podnet_pod_subnet", "overlaps", id="overlapping-subnets"),
        pytest.param(with_vars("a", podnet_pod_subnet="10.9.0.0/24"), "a", "podnet_pod_subnet",
                     "outside podnet_cluster_cidr", id="subnet-outside-cluster"),
        pytest.param({**BASE, "c": {"podnet_node_ip": "192.168.0.4"}}, "c", "podnet_node_ip",
                     "also the node IP of a", id="duplicate-node-ip"),
        pytest.param(with_vars("b", podnet_vtep_mac="22:3d:4d:c5:65"), "b", "podnet_vtep_mac",
                     "not a MAC address", id="malformed-mac"),
        pytest.param(with_vars("b", podnet_vtep_mac="01:00:5e:00:00:01"), "b", "podnet_vtep_mac",
                     "multicast", id="multicast-mac"),
        pytest.param(with_vars(podnet_vxlan_vni=16777216), "a", "podnet_vxlan_vni", "out of range",
                     id="vni-out-of-range"),
        pytest.param(with_vars(podnet_vxlan_vni=0), "a", "podnet_vxlan_vni", "out of range", id="vni-zero"),
        pytest.param(with_vars("c", podnet_underlay_interface="averyveryverylongname0"), "c",
                     "podnet_underlay_interface", "at most 15", id="ifname-too-long"),
        pytest.param(with_vars(podnet_bridge="cni0-bridge-name-x"), "a", "podnet_bridge", "at most 15",
                     id="bridge-name-too-long"),
        pytest.param(with_vars("a", podnet_pods=[{"name": "p", "interface": "eth0-in-the-pod-x"}]), "a",
                     "podnet_pods[p].interface", "at most 15", id="pod-ifname-too-long"),
        pytest.param(with_vars(podnet_backend="weave-net"), "a", "podnet_backend", "unknown backend",
                     id="unknown-backend"),
        pytest.param(with_vars(podnet_vxlan_port=70000), "a", "podnet_vxlan_port", "not a UDP port",
                     id="port-out-of-range"),
        pytest.param(with_vars("b", podnet_node_ip="192.168.0.300"), "b", "podnet_node_ip",
                     "not an IPv4 address", id="malformed-node-ip"),
        pytest.param(with_vars("b", podnet_pod_subnet="10.244.2.1/24"), "b", "podnet_pod_subnet",
                     "not an IPv4 network", id="subnet-host-bits"),
        pytest.param(with_vars("a", podnet_pods=[{"name": "p", "address": "10.250.0.3"}],
                               podnet_pod_subnet="10.244.0.0/24"), "a", "podnet_pods[0].address",
                     "not a usable address", id="pod-outside-subnet"),
        pytest.param(with_vars("a", podnet_pods=[{"name": "p", "address": "10.244.0.3"},
                                                 {"name": "q", "address": "10.244.0.3"}],
                               podnet_pod_subnet="10.244.0.0/24"), "a", "podnet_pods[1].address",
                     "already used", id="duplicate-pod-address"),
        pytest.param({**BASE, "a": {"podnet_node_ip": "192.168.0.4", "podnet_backend": "flannel-host-gw"}},
                     "a", "podnet_backend", "same on every node", id="backend-disagreement"),
        pytest.param(with_vars("a", podnet_node_ip=None), "a", "podnet_node_ip", "required",
                     id="missing-node-ip"),
        pytest.param({**BASE, "b": {"podnet_node_ip": "192.168.0.16", "podnet_vtep_mac": "22:3d:4d:c5:65:ff"},
                      "c": {"podnet_node_ip": "192.168.0.20", "podnet_vtep_mac": "22:3D:4D:C5:65:FF"}},
                     "c", "podnet_vtep_mac", "also the VTEP MAC of b", id="duplicate-mac"),
    ],
)
def test_bad_input_names_host_and_field(hostvars, host, field, words):
    problems = problems_of(hostvars)
    matching = [p for p in problems if p.startswith(f"host {host}: {field}:")]
    assert matching, problems
    assert any(words in p for p in matching), matching


def test_all_problems_are_reported_together():
    hv = with_vars("a", podnet_vtep_mac="zz")
    hv["b"]["podnet_pod_subnet"] = "10.9.0.0/24"
    problems = problems_of(hv)
    assert any(p.startswith("host a: podnet_vtep_mac") for p in problems)
    assert any(p.startswith("host b: podnet_pod_subnet") for p in problems)


def test_allocation_is_stable_when_nodes_come_and_go():
    first = plan(BASE)
    subnets = {h: n["subnet"] for h, n in first["nodes"].items()}
    assert subnets == {"a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": "10.244.2.0/24"}
    without_a = {h: v for h, v in BASE.items() if h != "a"}
    second = plan(without_a, leases=first["leases"])
    assert {h: n["subnet"] for h, n in second["nodes"].items()} == {"b": "10.244.1.0/24", "c": "10.244.2.0/24"}
    grown = {**without_a, "d": {"podnet_node_ip": "192.168.0.30"}, "a": BASE["a"]}
    third = plan(grown, leases=second["leases"])
    got = {h: n["subnet"] for h, n in third["nodes"].items()}
    assert got["b"] == "10.244.1.0/24" and got["c"] == "10.244.2.0/24"
    assert got["d"] == "10.244.0.0/24" and got["a"] == "10.244.3.0/24"  # freed subnet is reused


def test_explicit_subnet_wins_over_lease():
    hv = with_vars("a", podnet_pod_subnet="10.244.7.0/24")
    result = plan(hv, leases={"a": "10.244.0.0/24", "b": "10.244.7.0/24"})
    assert result["nodes"]["a"]["subnet"] == "10.244.7.0/24"
    assert result["nodes"]["b"]["subnet"] != "10.244.7.0/24"  # the stale lease loses to the explicit subnet
    assert "a" not in result["leases"]


def test_vtep_mac_is_deterministic_unicast_and_local():
    mac = vtep_mac_for("192.168.0.4")
    assert mac == vtep_mac_for("192.168.0.4") != vtep_mac_for("192.168.0.16")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01
    node = plan(BASE)["nodes"]["a"]
    assert node["vtep"]["mac"] == mac
    assert {p["mac"] for p in plan(BASE)["nodes"]["b"]["peers"] if p["name"] == "a"} == {mac}


def test_pods_get_free_addresses_and_stable_veth_names():
    hv = with_vars("a", podnet_pods=[{"name": "web"}, {"name": "db", "address": "10.244.0.2"}],
                   podnet_pod_subnet="10.244.0.0/24", podnet_pod_netns_prefix="lab-a-")
    pods = plan(hv)["nodes"]["a"]["pods"]
    assert [(p["name"], p["address"], p["gateway"], p["netns"]) for p in pods] == [
        ("web", "10.244.0.3/24", "10.244.0.1", "lab-a-web"), ("db", "10.244.0.2/24", "10.244.0.1", "lab-a-db")]
    assert all(p["host_interface"].startswith("veth") and len(p["host_interface"]) == 12 for p in pods)
    assert pods[0]["host_interface"] == plan(hv)["nodes"]["a"]["pods"][0]["host_interface"]


def test_mtu_and_host_gw_routes():
    vx = plan(BASE)["nodes"]["a"]
    assert vx["render_mtu"] == 1450
    assert vx["routes"][0] == {"dst": "10.244.1.0/24", "via": "10.244.1.0", "dev": "flannel.1", "onlink": True}
    gw = plan(with_vars(podnet_backend="flannel-host-gw", podnet_underlay_interface="ens3"))["nodes"]["a"]
    assert gw["vtep"] is None and gw["render_mtu"] == 1500
    assert gw["routes"][0] == {"dst": "10.244.1.0/24", "via": "192.168.0.16", "dev": "ens3", "onlink": False}
    jumbo = plan(with_vars(podnet_underlay_mtu=9000))["nodes"]["a"]
    assert jumbo["render_mtu"] == 8950


def test_cluster_full_is_reported():
    hv = with_vars(podnet_cluster_cidr="10.244.0.0/24", podnet_subnet_prefix=25)
    problems = problems_of(hv)
    assert any("no free /25" in p for p in problems), problems


def test_subnets_are_inside_cluster_and_disjoint():
    many = {f"n{i}": {"podnet_node_ip": f"172.30.1.{i + 1}"} for i in range(40)}
    result = plan(many)
    nets = [ipaddress.ip_network(n["subnet"]) for n in result["nodes"].values()]
    assert all(n.subnet_of(ipaddress.ip_network("10.244.0.0/16")) for n in nets)
    assert len(set(nets)) == 40


# ------------------------------------------------------------------ backends as compositions (transport)

def test_presets_keep_their_transport_and_name():
    for backend, transport in [("flannel-vxlan", "vxlan"), ("flannel-host-gw", "host-gw"), ("calico-bgp", "bgp"),
                               ("calico-ipip", "ipip"), ("calico-vxlan", "vxlan"), ("canal", "vxlan"),
                               ("romana-style", "host-gw"), ("weave-style", "vxlan")]:
        node = plan(with_vars(podnet_backend=backend))["nodes"]["a"]
        assert (node["backend"], node["transport"]) == (backend, transport)
        same = plan(with_vars(podnet_backend=backend, podnet_transport=transport))["nodes"]["a"]
        assert same == node  # naming the preset's own transport changes nothing


def test_canal_over_host_gw_routes_via_the_peers_with_flannels_facts():
    node = plan(with_vars(podnet_backend="canal", podnet_transport="host-gw"))["nodes"]["a"]
    assert node["pod_mode"] == "routed" and node["vtep"] is None and node["tunnel"] is None
    assert node["routes"][0] == {"dst": node["peers"][0]["subnet"], "via": "192.168.0.16", "dev": None,
                                 "onlink": False}
    assert node["subnet_env"]["FLANNEL_MTU"] == 1500  # no encapsulation to pay for
    assert node["iptables"] and node["bgp"] is None


def test_canal_over_bgp_with_bird_learns_its_routes():
    node = plan(with_vars(podnet_backend="canal", podnet_transport="bgp", podnet_calico_bgp="bird"))["nodes"]["a"]
    assert node["bgp"]["mode"] == "bird" and node["routes"] == []
    assert [n["address"] for n in node["bgp"]["neighbors"]] == ["192.168.0.16", "192.168.0.20"]
    assert node["subnet_env"] and node["iptables"]  # flannel's facts stay: canal
    static = plan(with_vars(podnet_backend="canal", podnet_transport="bgp"))["nodes"]["a"]
    assert static["bgp"]["mode"] == "static" and len(static["routes"]) == 2


def test_canal_over_ipip_gets_calicos_tunnel_and_crosssubnet():
    node = plan(with_vars(podnet_backend="canal", podnet_transport="ipip"))["nodes"]["a"]
    assert node["tunnel"]["name"] == "tunl0" and node["vtep"] is None and node["render_mtu"] == 1480
    assert node["routes"][0]["dev"] == "tunl0" and node["routes"][0]["onlink"]
    hostvars = with_vars(podnet_backend="canal", podnet_transport="ipip", podnet_calico_crosssubnet=True)
    for hv in hostvars.values():
        hv["podnet_node_ip"] += "/24"
    crossed = plan(hostvars)
    assert crossed["nodes"]["a"]["routes"][0]["dev"] is None  # same subnet: plain route


def test_the_udp_transport_is_flannels_udp_on_the_wire_with_every_wiring():
    """flannel-udp (the bridge), canal and weave-style over udp (routed): podnet's own flannel0 with foo-over-UDP
    on podnet_udp_port, MTU underlay - 28, onlink routes through it; the kernel must have ipip and fou."""
    for variables in ({"podnet_backend": "flannel-udp"}, {"podnet_backend": "canal", "podnet_transport": "udp"},
                      {"podnet_backend": "weave-style", "podnet_transport": "udp", "podnet_udp_port": 9000}):
        node = plan(with_vars(**variables))["nodes"]["a"]
        port = variables.get("podnet_udp_port", 8285)
        assert node["tunnel"] == {"name": "flannel0", "mtu": None, "address": node["subnet"].replace("/24", "/32"),
                                  "fou_port": port, "local": node["node_ip"], "underlay_interface": None}, variables
        assert node["vtep"] is None and node["render_mtu"] == 1472 and node["kernel_features"] == ["ipip", "fou"]
        assert all(r["dev"] == "flannel0" and r["onlink"] for r in node["routes"]), node["routes"]
    assert plan(with_vars(podnet_backend="flannel-udp"))["nodes"]["a"]["subnet_env"]["FLANNEL_MTU"] == 1472
    found = problems_of(with_vars(podnet_backend="flannel-udp", podnet_udp_port=70000))
    assert any(p.startswith("host a: podnet_udp_port: 70000 is not a UDP port") for p in found), found


def test_the_wireguard_transport_has_flannels_or_calicos_device_and_one_peer_per_node():
    """flannel-wireguard (the bridge, flannel-wg), calico-wireguard (routed, wireguard.cali) and canal over
    wireguard (flannel runs the network: flannel-wg): MTU underlay - 60, port podnet_wireguard_port, peers
    with their endpoint and pod subnet (public keys are the nodes' to make), a route per peer out of the device;
    the key folder is each node's own setting."""
    for variables, device in (({"podnet_backend": "flannel-wireguard"}, "flannel-wg"),
                              ({"podnet_backend": "calico-wireguard", "podnet_wireguard_port": 51821},
                               "wireguard.cali"),
                              ({"podnet_backend": "canal", "podnet_transport": "wireguard"}, "flannel-wg")):
        hostvars = with_vars(**variables)
        hostvars["b"]["podnet_wireguard_key_dir"] = "/srv/keys"
        nodes = plan(hostvars)["nodes"]
        node, port = nodes["a"], variables.get("podnet_wireguard_port", 51820)
        wg = node["wireguard"]
        assert (wg["name"], wg["listen_port"], wg["key_dir"], wg["key_epoch"]) == (
            device, port, "/etc/podnet/wireguard", 0), variables
        assert nodes["b"]["wireguard"]["key_dir"] == "/srv/keys"
        assert wg["peers"] == [{"name": other, "public_key": None, "endpoint": f"{nodes[other]['node_ip']}:{port}",
                                "allowed_ips": [nodes[other]["subnet"]]} for other in ("b", "c")]
        assert node["render_mtu"] == 1440 and node["kernel_features"] == ["wireguard"] and node["vtep"] is None
        assert node["routes"] == [{"dst": nodes[other]["subnet"], "via": None, "dev": device, "onlink": False}
                                  for other in ("b", "c")]
    found = problems_of(with_vars(podnet_backend="flannel-wireguard", podnet_wireguard_key_epoch=-1,
                                  podnet_wireguard_port="x", podnet_wireguard_key_dir="/etc/podnet/../keys"))
    for words in ("podnet_wireguard_key_epoch: -1 must be an integer from 0",
                  "podnet_wireguard_port: 'x' is not a UDP port", "podnet_wireguard_key_dir: '/etc/podnet/../keys'"):
        assert any(words in p for p in found), (words, found)


def test_kernel_features_follow_the_transport():
    for variables, features in (({"podnet_backend": "flannel-vxlan"}, ["vxlan"]),
                                ({"podnet_backend": "calico-ipip"}, ["ipip"]),
                                ({"podnet_backend": "calico-bgp"}, []),
                                ({"podnet_backend": "flannel-host-gw"}, []),
                                ({"podnet_backend": "calico-wireguard"}, ["wireguard"])):
        assert plan(with_vars(**variables))["nodes"]["a"]["kernel_features"] == features, variables


def test_calico_over_vxlan_keeps_calicos_device_and_flannel_over_host_gw_its_bridge():
    node = plan(with_vars(podnet_backend="calico-bgp", podnet_transport="vxlan"))["nodes"]["a"]
    assert (node["vtep"]["name"], node["vtep"]["vni"], node["vtep"]["port"]) == ("vxlan.calico", 4096, 4789)
    assert node["bgp"] is None and node["subnet_env"] is None
    node = plan(with_vars(podnet_backend="flannel-vxlan", podnet_transport="host-gw"))["nodes"]["a"]
    assert node["bridge"]["name"] == "cni0" and node["vtep"] is None


@pytest.mark.parametrize(("backend", "transport", "words"), [
    ("flannel-vxlan", "bgp", "flannel-vxlan wires pods to a bridge"),
    ("flannel-host-gw", "ipip", "vxlan, host-gw, udp or wireguard only"),
    ("canal", "UDP", "'UDP' is not a transport"),
    ("calico-bgp", "VXLAN", "'VXLAN' is not a transport"),
])
def test_combinations_podnet_does_not_build_are_refused_in_the_planner(backend, transport, words):
    found = problems_of(with_vars(podnet_backend=backend, podnet_transport=transport))
    assert any(p.startswith("host a: podnet_transport: ") and words in p for p in found), found


def test_bgp_options_follow_the_transport_not_the_preset_name():
    found = problems_of(with_vars(podnet_backend="canal", podnet_bgp_route_reflector=True))
    assert any("podnet_bgp_route_reflector: needs BGP with BIRD" in p for p in found), found
    plan(with_vars(podnet_backend="canal", podnet_transport="bgp", podnet_calico_bgp="bird",
                   podnet_bgp_route_reflector=True))


def test_the_pod_wiring_is_a_variable_too():
    # flannel's VXLAN between the nodes, calico's routed wiring on them (what canal is, under flannel's name)
    node = plan(with_vars(podnet_backend="flannel-vxlan", podnet_pod_wiring="routed"))["nodes"]["a"]
    assert node["pod_mode"] == "routed" and node["bridge"] is None and node["vtep"]["name"] == "flannel.1"
    assert node["subnet_env"] is not None and all(p["host_interface"].startswith("cali") for p in node["pods"])
    # calico's VXLAN device and numbers with flannel's bridge: no subnet.env (flannel does not run)
    node = plan(with_vars(podnet_backend="calico-vxlan", podnet_pod_wiring="bridge"))["nodes"]["a"]
    assert node["pod_mode"] == "bridge" and node["bridge"]["name"] == "cni0" and node["subnet_env"] is None
    assert (node["vtep"]["name"], node["vtep"]["vni"], node["vtep"]["port"]) == ("vxlan.calico", 4096, 4789)
    # the preset's own wiring, named: the preset unchanged
    assert plan(with_vars(podnet_backend="canal", podnet_pod_wiring="routed"))["nodes"] == \
        plan(with_vars(podnet_backend="canal"))["nodes"]


@pytest.mark.parametrize(("settings", "words"), [
    ({"podnet_backend": "calico-bgp", "podnet_pod_wiring": "bridge"},
     "podnet_pod_wiring: calico-bgp with podnet_pod_wiring: bridge wires pods to a bridge"),
    ({"podnet_backend": "calico-ipip", "podnet_pod_wiring": "bridge"}, "vxlan, host-gw, udp or wireguard only"),
    ({"podnet_backend": "flannel-vxlan", "podnet_pod_wiring": "bridge", "podnet_transport": "bgp"},
     "podnet_pod_wiring: flannel-vxlan with podnet_pod_wiring: bridge"),
    ({"podnet_backend": "canal", "podnet_pod_wiring": "ptp"}, "podnet_pod_wiring: 'ptp' is not a pod wiring"),
    ({"podnet_backend": "calico-vxlan", "podnet_pod_wiring": "bridge",
      "podnet_network_policies": [{"name": "p", "selector": {"app": "web"}, "ingress": []}]},
     "its pods are wired to a bridge (podnet_pod_wiring: bridge)"),
])
def test_wirings_podnet_does_not_build_are_refused_in_the_planner(settings, words):
    found = problems_of(with_vars(**settings))
    assert any(words in p for p in found), found


def test_network_policy_follows_the_wiring_not_the_preset_name():
    policies = [{"name": "p", "selector": {"app": "web"}, "ingress": []}]
    plan(with_vars(podnet_backend="flannel-vxlan", podnet_pod_wiring="routed", podnet_network_policies=policies))
    found = problems_of(with_vars(podnet_backend="flannel-vxlan", podnet_network_policies=policies))
    assert any("flannel implements none" in p for p in found), found
