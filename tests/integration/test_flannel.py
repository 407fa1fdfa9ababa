"""flannel-vxlan and flannel-host-gw on the three-node namespace lab, against the real kernel.

Expectations are derived from the lab itself (node IPs from the inventory, each node's subnet and
VTEP MAC read from that node), not from podnet's planner, and compared with `ip -j` / `bridge -j`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .labkit import (
    REPO_ROOT,
    VXLAN_CHECKSUM_FIXED,
    Lab,
    list_netns,
    netns_exec,
    netns_json,
    set_tx_checksum_argv,
    tx_checksum,
)

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
            # podnet's default (auto): off only where the kernel has the 63 s stall bug (before 5.7)
            assert tx_checksum(lab.node_ns(host), "flannel.1") is VXLAN_CHECKSUM_FIXED
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
        lab.exec("node1", set_tx_checksum_argv("flannel.1", not VXLAN_CHECKSUM_FIXED), check=True)
        assert tx_checksum(lab.node_ns("node1"), "flannel.1") is not VXLAN_CHECKSUM_FIXED
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


def boot_apply(lab: Lab, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The podnet-apply unit's command on a node: podnet's engine restoring the node's records."""
    state_dir = f"/run/podnet-lab/{lab.prefix}/{host}/state"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "collections"))
    return subprocess.run(["ip", "netns", "exec", lab.node_ns(host), sys.executable, "-m",
                           "ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply", state_dir, *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_forced_offload_is_honoured_by_run_check_and_boot_restore(flannel_lab):
    """podnet_vxlan_tx_checksum_offload forced against the kernel's rule (as a NIC that needs it would have
    it), then back to auto: the run, check mode (verify.yml) and the boot restore all agree."""
    lab = flannel_lab
    if lab.backend != "flannel-vxlan":
        pytest.skip("flannel-host-gw has no VXLAN device")
    auto = VXLAN_CHECKSUM_FIXED
    forced = {"podnet_vxlan_tx_checksum_offload": "on" if not auto else "off"}
    result = lab.run("playbooks/site.yml", extra_vars=forced, diff=True)
    assert result.rc == 0, result.output
    assert all(tx_checksum(lab.node_ns(h), "flannel.1") is not auto for h in NODES)
    assert all(result.changed(h) > 0 for h in NODES), result.recap
    value = forced["podnet_vxlan_tx_checksum_offload"]
    assert f"offload dev=flannel.1 tx-checksum-ip-generic={value} (forced {value})" in result.stdout  # --diff
    assert lab.run("playbooks/verify.yml", extra_vars=forced).rc == 0  # check mode agrees with the run
    assert lab.run("playbooks/verify.yml").rc != 0  # ...and sees that auto would change it back

    lab.exec("node2", set_tx_checksum_argv("flannel.1", auto), check=True)  # drift, then a "reboot" restore
    restored = boot_apply(lab, "node2")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tx_checksum(lab.node_ns("node2"), "flannel.1") is not auto, restored.stdout
    assert "forced" in restored.stdout

    back = lab.run("playbooks/site.yml")  # auto again
    assert back.rc == 0, back.output
    assert all(tx_checksum(lab.node_ns(h), "flannel.1") is auto for h in NODES)
    lab.exec("node2", set_tx_checksum_argv("flannel.1", not auto), check=True)
    restored = boot_apply(lab, "node2")  # a record made in auto is decided again for the booted kernel
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tx_checksum(lab.node_ns("node2"), "flannel.1") is auto, restored.stdout
    check = boot_apply(lab, "node2", "--check").stdout
    assert "podnet-apply: 0 change(s) needed" in check, check
    verify = lab.run("playbooks/verify.yml")
    assert verify.rc == 0, verify.output


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
