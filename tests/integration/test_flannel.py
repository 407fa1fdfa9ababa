"""flannel-vxlan and flannel-host-gw on the three-node namespace lab, against the real kernel.

Expectations are derived from the lab itself (node IPs from the inventory, each node's subnet and
VTEP MAC read from that node), not from podnet's planner, and compared with `ip -j` / `bridge -j`.
"""

from __future__ import annotations

import ipaddress
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from .labkit import REPO_ROOT, Lab, list_netns, netns_exec, netns_json

pytestmark = pytest.mark.integration

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
CLUSTER = ipaddress.ip_network("10.244.0.0/16")
PODNET_PROTO = "152"


@pytest.fixture(scope="module", params=["flannel-vxlan", "flannel-host-gw"])
def flannel_lab(request):
    lab = Lab(extra_vars={"podnet_backend": request.param})
    with lab:
        lab.backend = request.param
        yield lab
    assert list_netns(lab.prefix) == []  # lab_down.yml leaves no namespaces


def node_subnet(lab: Lab, host: str) -> ipaddress.IPv4Network:
    """The node's pod subnet, as its cni0 gateway address says."""
    addrs = lab.json(host, "addr", "show", "dev", "cni0")[0]["addr_info"]
    inet = [a for a in addrs if a["family"] == "inet"]
    assert len(inet) == 1, inet
    return ipaddress.ip_interface(f"{inet[0]['local']}/{inet[0]['prefixlen']}").network


def vtep_mac(lab: Lab, host: str) -> str:
    return lab.json(host, "link", "show", "flannel.1")[0]["address"]


def tx_checksum(lab: Lab, host: str, device: str) -> bool:
    """The device's tx-checksum-ip-generic feature, read over ethtool netlink inside the node."""
    code = ("from pyroute2.ethtool import Ethtool; import sys; "
            f"print(Ethtool().get_features('{device}').features['tx-checksum-ip-generic'].enable)")
    out = lab.exec(host, [sys.executable, "-c", code], check=True).stdout.strip()
    return out == "True"


def podnet_routes(lab: Lab, host: str) -> dict[str, dict]:
    return {r["dst"]: r for r in lab.json(host, "route", "show", "proto", PODNET_PROTO)}


def assert_node_state(lab: Lab, hosts: dict[str, str]) -> None:
    subnets = {h: node_subnet(lab, h) for h in hosts}
    assert len(set(subnets.values())) == len(hosts)
    for host, subnet in subnets.items():
        assert subnet.subnet_of(CLUSTER) and subnet.prefixlen == 24
        cni0 = lab.json(host, "link", "show", "cni0")[0]
        assert "UP" in cni0["flags"]
        peers = {h: ip for h, ip in hosts.items() if h != host}
        routes = podnet_routes(lab, host)
        assert set(routes) == {str(subnets[p]) for p in peers}, routes
        forward = lab.exec(host, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
        assert forward == "1"
        if lab.backend == "flannel-vxlan":
            assert cni0["mtu"] == 1450
            link = lab.json(host, "-d", "link", "show", "flannel.1")[0]
            info = link["linkinfo"]["info_data"]
            assert link["linkinfo"]["info_kind"] == "vxlan"
            assert (info["id"], info["local"], info["link"], info["port"], info["learning"]) == (
                1,
                hosts[host],
                "eth0",
                8472,
                False,
            )
            assert link["mtu"] == 1450 and "UP" in link["flags"]
            assert tx_checksum(lab, host, "flannel.1") is False  # flannel's fix for the 63 s stalls
            addrs = lab.json(host, "addr", "show", "dev", "flannel.1")[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [
                (str(subnet.network_address), 32)
            ]
            neighbours = {n["dst"]: n for n in lab.json(host, "neigh", "show", "dev", "flannel.1")}
            fdb = {f["mac"]: f for f in lab.json(host, "fdb", "show", "dev", "flannel.1", tool="bridge")}
            assert set(neighbours) == {str(subnets[p].network_address) for p in peers}
            assert set(fdb) == {vtep_mac(lab, p) for p in peers}
            for peer, peer_ip in peers.items():
                mac = vtep_mac(lab, peer)
                gateway = str(subnets[peer].network_address)
                neighbour = neighbours[gateway]
                assert neighbour["lladdr"] == mac and neighbour["state"] == ["PERMANENT"]
                assert fdb[mac]["dst"] == peer_ip and fdb[mac]["state"] == "permanent"
                assert "self" in fdb[mac]["flags"]
                route = routes[str(subnets[peer])]
                assert (route["gateway"], route["dev"], route.get("flags")) == (
                    gateway,
                    "flannel.1",
                    ["onlink"],
                )
        else:
            assert lab.json(host, "link", "show", "type", "vxlan") == []
            for peer, peer_ip in peers.items():
                route = routes[str(subnets[peer])]
                assert (route["gateway"], route["dev"]) == (peer_ip, "eth0")


def assert_pods_reach_each_other(lab: Lab, hosts: list[str]) -> None:
    """Every pod pings every pod on the other nodes (directly, not through verify.yml)."""
    addresses = {}
    for host in hosts:
        for pod in ("pod1", "pod2"):
            ns = lab.pod_ns(host, pod)
            addr = [
                a
                for a in netns_json(ns, "addr", "show", "dev", "eth0")[0]["addr_info"]
                if a["family"] == "inet"
            ][0]["local"]
            addresses[(host, pod)] = (ns, addr)
    failures = []
    for (host, pod), (ns, _) in addresses.items():
        for (other, other_pod), (_, target) in addresses.items():
            if other == host:
                continue
            result = netns_exec(ns, ["ping", "-n", "-q", "-c", "1", "-W", "2", target])
            if result.returncode != 0:
                failures.append(f"{host}/{pod} -> {other}/{other_pod} ({target})")
    assert not failures, failures


def test_check_mode_on_fresh_lab_changes_nothing(flannel_lab):
    lab = flannel_lab
    before = {h: lab.json(h, "link", "show") for h in NODES}
    result = lab.run("playbooks/site.yml", check=True, diff=True)
    assert result.rc == 0, result.output
    assert all(result.changed(h) > 0 for h in NODES), result.recap
    assert {h: lab.json(h, "link", "show") for h in NODES} == before
    assert all(podnet_routes(lab, h) == {} for h in NODES)


def test_converge_state_and_connectivity(flannel_lab):
    lab = flannel_lab
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    assert_node_state(lab, NODES)
    assert_pods_reach_each_other(lab, list(NODES))
    verify = lab.run("playbooks/verify.yml")
    assert verify.rc == 0, verify.output


def test_second_run_changes_nothing(flannel_lab):
    result = flannel_lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    assert all(result.changed(h) == 0 for h in NODES), result.recap


def test_drift_is_repaired_and_foreign_state_survives(flannel_lab):
    lab = flannel_lab
    subnets = {h: node_subnet(lab, h) for h in NODES}
    peer_subnet = str(subnets["node2"])
    lab.exec("node1", ["ip", "route", "add", "10.99.0.0/24", "via", "172.30.0.1"], check=True)
    lab.exec("node1", ["ip", "route", "del", peer_subnet], check=True)
    if lab.backend == "flannel-vxlan":
        code = ("from pyroute2.ethtool import Ethtool; e = Ethtool(); f = e.get_features('flannel.1'); "
                "f.features['tx-checksum-ip-generic'].enable = True; e.set_features('flannel.1', f)")
        lab.exec("node1", [sys.executable, "-c", code], check=True)
        assert tx_checksum(lab, "node1", "flannel.1") is True
        mac = vtep_mac(lab, "node2")
        lab.exec(
            "node1", ["bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", NODES["node2"]], check=True
        )
        lab.exec(
            "node1",
            ["ip", "neigh", "del", str(subnets["node2"].network_address), "dev", "flannel.1"],
            check=True,
        )
    drifted = lab.run("playbooks/verify.yml")
    assert drifted.rc != 0 and drifted.failed("node1") == 1, drifted.output  # verify sees drift and loss
    assert str(subnets["node2"]) not in podnet_routes(lab, "node1")  # ...and repairs nothing
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    assert result.changed("node1") > 0 and result.changed("node2") == 0
    assert_node_state(lab, NODES)
    foreign = [r for r in lab.json("node1", "route", "show") if r["dst"] == "10.99.0.0/24"]
    assert foreign == [{"dst": "10.99.0.0/24", "gateway": "172.30.0.1", "dev": "eth0", "flags": []}]
    again = lab.run("playbooks/site.yml")
    assert all(again.changed(h) == 0 for h in NODES), again.recap
    assert [r for r in lab.json("node1", "route", "show") if r["dst"] == "10.99.0.0/24"] == foreign


def test_removing_a_node_removes_its_peer_entries(flannel_lab, tmp_path):
    lab = flannel_lab
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventories" / "lab", inventory)
    hosts_file = Path(inventory / "hosts.yml")
    data = yaml.safe_load(hosts_file.read_text())
    del data["podnet_nodes"]["hosts"]["node3"]
    hosts_file.write_text(yaml.safe_dump(data))
    old_node3_subnet = node_subnet(lab, "node3")
    kept = {h: node_subnet(lab, h) for h in ("node1", "node2")}
    result = lab.run("playbooks/site.yml", inventory=inventory)
    assert result.rc == 0, result.output
    remaining = {h: ip for h, ip in NODES.items() if h != "node3"}
    assert {h: node_subnet(lab, h) for h in remaining} == kept  # nobody else's subnet moved
    assert_node_state(lab, remaining)
    for host in remaining:
        assert str(old_node3_subnet) not in podnet_routes(lab, host)
    # Put node3 back for the tests that follow.
    back = lab.run("playbooks/site.yml")
    assert back.rc == 0, back.output
    assert node_subnet(lab, "node3") == old_node3_subnet
    assert_node_state(lab, NODES)


def test_reset_removes_everything_podnet_created(flannel_lab):
    lab = flannel_lab
    result = lab.run("playbooks/reset.yml")
    assert result.rc == 0, result.output
    for host in NODES:
        links = lab.json(host, "link", "show")
        assert [link["ifname"] for link in links] == ["lo", "eth0"], links
        assert podnet_routes(lab, host) == {}
        rules = lab.exec(host, ["iptables-save"]).stdout
        assert "podnet:" not in rules
    # the foreign route added by hand in the drift test is still there
    assert any(r["dst"] == "10.99.0.0/24" for r in lab.json("node1", "route", "show"))
