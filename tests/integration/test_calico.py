"""Routed (calico-style) pod wiring on the three-node namespace lab, against the real kernel: calico-bgp
(static routes), calico-vxlan, canal, romana-style and weave-style; and switching a converged
flannel-vxlan lab to calico-bgp.

(calico-bgp with real BIRD is in test_calico_bird.py; calico-ipip runs in a VM: test_ipip_vm.py.)
"""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from .labkit import VXLAN_CHECKSUM_FIXED, Lab, list_netns, netns_exec, netns_json, tx_checksum

pytestmark = pytest.mark.integration

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
PODS = ("pod1", "pod2")
PODNET_PROTO = "152"
# VXLAN device, VNI and port per encapsulating backend; the others route plainly via node IPs.
VXLAN = {"calico-vxlan": ("vxlan.calico", 4096, 4789), "canal": ("flannel.1", 1, 8472),
         "weave-style": ("vxlan-6784", 6784, 6784)}
FELIX_SYSCTLS = {"conf/{}/proxy_arp": "1", "neigh/{}/proxy_delay": "0", "conf/{}/forwarding": "1",
                 "conf/{}/route_localnet": "1", "conf/{}/rp_filter": "1"}


def subnets_of(lab: Lab) -> dict[str, ipaddress.IPv4Network]:
    """The subnets podnet allocated (its lease file on the controller)."""
    leases = json.loads(Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text())
    return {host: ipaddress.ip_network(net) for host, net in leases.items()}


def pod_address(lab: Lab, host: str, pod: str) -> str:
    addrs = netns_json(lab.pod_ns(host, pod), "addr", "show", "dev", "eth0")[0]["addr_info"]
    return [a["local"] for a in addrs if a["family"] == "inet"][0]


def sysctl(lab: Lab, host: str, path: str) -> str:
    return lab.exec(host, ["cat", f"/proc/sys/net/ipv4/{path}"]).stdout.strip()


def assert_calico_state(lab: Lab, backend: str) -> None:
    subnets = subnets_of(lab)
    for host, node_ip in NODES.items():
        subnet = subnets[host]
        routes = {r["dst"]: r for r in lab.json(host, "route", "show", "proto", PODNET_PROTO)}
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == "cni0"]
        veths = {link["ifname"]: link for link in lab.json(host, "link", "show")
                 if link["ifname"].startswith("cali")}
        assert len(veths) == len(PODS)
        for pod in PODS:
            address = pod_address(lab, host, pod)
            assert ipaddress.ip_address(address) in subnet
            route = routes[address]  # the pod's /32 on the host end of its veth, scope link
            assert route["dev"] in veths and "gateway" not in route and route["scope"] == "link"
            host_if = route["dev"]
            host_addrs = lab.json(host, "addr", "show", "dev", host_if)[0]["addr_info"]
            assert [a for a in host_addrs if a["family"] == "inet"] == []
            for template, value in FELIX_SYSCTLS.items():
                assert sysctl(lab, host, template.format(host_if)) == value, (host_if, template)
            pod_routes = {r["dst"]: r for r in netns_json(lab.pod_ns(host, pod), "route", "show")}
            assert pod_routes["169.254.1.1"]["dev"] == "eth0" and pod_routes["169.254.1.1"]["scope"] == "link"
            assert pod_routes["default"]["gateway"] == "169.254.1.1"
        peers = {h: ip for h, ip in NODES.items() if h != host}
        peer_routes = {dst: r for dst, r in routes.items() if "/" in dst}
        assert set(peer_routes) == {str(subnets[p]) for p in peers}
        for peer, peer_ip in peers.items():
            route = peer_routes[str(subnets[peer])]
            if backend not in VXLAN:
                assert (route["gateway"], route["dev"]) == (peer_ip, "eth0")
            else:
                assert (route["gateway"], route["dev"], route["flags"]) == (
                    str(subnets[peer].network_address), VXLAN[backend][0], ["onlink"])
        if backend in VXLAN:
            dev, vni, port = VXLAN[backend]
            link = lab.json(host, "-d", "link", "show", dev)[0]
            info = link["linkinfo"]["info_data"]
            assert (info["id"], info["port"], info["local"], info["learning"], link["mtu"]) == (
                vni, port, node_ip, False, 1450)
            assert tx_checksum(lab.node_ns(host), dev) is VXLAN_CHECKSUM_FIXED  # off only before Linux 5.7
            fdb = {f["mac"]: f["dst"] for f in lab.json(host, "fdb", "show", "dev", dev, tool="bridge")}
            neigh = {n["dst"]: n["lladdr"] for n in lab.json(host, "neigh", "show", "dev", dev)
                     if n["state"] == ["PERMANENT"]}
            macs = {p: lab.json(p, "link", "show", dev)[0]["address"] for p in peers}
            assert fdb == {macs[p]: ip for p, ip in peers.items()}
            assert neigh == {str(subnets[p].network_address): macs[p] for p in peers}
        else:
            assert lab.json(host, "link", "show", "type", "vxlan") == []


def assert_pods_reach_each_other(lab: Lab) -> None:
    addresses = {(h, p): pod_address(lab, h, p) for h in NODES for p in PODS}
    failures = [f"{h}/{p} -> {target}" for (h, p) in addresses for (o, _), target in addresses.items()
                if o != h and netns_exec(lab.pod_ns(h, p), ["ping", "-n", "-q", "-c", "1", "-W", "2", target]
                                         ).returncode != 0]
    assert not failures, failures


@pytest.fixture(scope="module", params=["calico-bgp", "calico-vxlan", "canal", "romana-style", "weave-style"])
def calico_lab(request):
    lab = Lab(extra_vars={"podnet_backend": request.param})
    with lab:
        lab.backend = request.param
        yield lab
    assert list_netns(lab.prefix) == []


def test_check_mode_on_fresh_lab_changes_nothing(calico_lab):
    lab = calico_lab
    before = {h: (lab.json(h, "link", "show"), lab.json(h, "route", "show")) for h in NODES}
    result = lab.run("playbooks/site.yml", check=True, diff=True)
    assert result.rc == 0, result.output
    assert all(result.changed(h) > 0 for h in NODES), result.recap
    assert {h: (lab.json(h, "link", "show"), lab.json(h, "route", "show")) for h in NODES} == before


def test_converge_state_connectivity_and_idempotence(calico_lab):
    lab = calico_lab
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    assert_calico_state(lab, lab.backend)
    assert_pods_reach_each_other(lab)
    verify = lab.run("playbooks/verify.yml")
    assert verify.rc == 0, verify.output
    again = lab.run("playbooks/site.yml")
    assert all(again.changed(h) == 0 for h in NODES), again.recap


def test_drift_is_repaired_and_foreign_state_survives(calico_lab):
    lab = calico_lab
    subnets = subnets_of(lab)
    address = pod_address(lab, "node2", "pod1")
    host_if = [r for r in lab.json("node2", "route", "show", "proto", PODNET_PROTO) if r["dst"] == address][0]["dev"]
    lab.exec("node2", ["ip", "route", "add", "10.98.0.0/24", "via", "172.30.0.1", "proto", "static"], check=True)
    lab.exec("node2", ["ip", "route", "del", address], check=True)
    lab.exec("node2", ["ip", "route", "del", str(subnets["node3"])], check=True)
    lab.exec("node2", ["sysctl", "-qw", f"net.ipv4.conf.{host_if}.proxy_arp=0"], check=True)
    drifted = lab.run("playbooks/verify.yml")
    assert drifted.rc != 0 and drifted.failed("node2") == 1, drifted.output
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    assert result.changed("node2") > 0 and result.changed("node1") == 0
    assert_calico_state(lab, lab.backend)
    assert_pods_reach_each_other(lab)
    foreign = [r for r in lab.json("node2", "route", "show", "proto", "static") if r["dst"] == "10.98.0.0/24"]
    assert foreign == [{"dst": "10.98.0.0/24", "gateway": "172.30.0.1", "dev": "eth0", "flags": []}]


def test_reset_removes_everything_podnet_created(calico_lab):
    lab = calico_lab
    result = lab.run("playbooks/reset.yml")
    assert result.rc == 0, result.output
    for host in NODES:
        assert [link["ifname"] for link in lab.json(host, "link", "show")] == ["lo", "eth0"]
        assert lab.json(host, "route", "show", "proto", PODNET_PROTO) == []
        assert "podnet:" not in lab.exec(host, ["iptables-save"]).stdout
    assert "10.98.0.0/24" in [r["dst"] for r in lab.json("node2", "route", "show")]


def test_switch_from_flannel_vxlan_to_calico_bgp():
    with Lab(extra_vars={"podnet_backend": "flannel-vxlan"}) as lab:
        first = lab.run("playbooks/site.yml")
        assert first.rc == 0, first.output
        assert lab.json("node1", "link", "show", "flannel.1") != []
        switched = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "calico-bgp"})
        assert switched.rc == 0, switched.output
        lab.backend = "calico-bgp"
        for host in NODES:
            links = [link["ifname"] for link in lab.json(host, "link", "show")]
            assert "flannel.1" not in links and "cni0" not in links, links
            assert not [n for n in lab.json(host, "neigh", "show") if n.get("state") == ["PERMANENT"]]
            assert lab.json(host, "link", "show", "type", "vxlan") == []  # its fdb entries went with it
            assert "podnet:" not in lab.exec(host, ["iptables-save"]).stdout
        assert_calico_state(lab, "calico-bgp")
        assert_pods_reach_each_other(lab)
        again = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "calico-bgp"})
        assert all(again.changed(h) == 0 for h in NODES), again.recap
