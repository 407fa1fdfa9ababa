"""CrossSubnet (calico-vxlan) and DirectRouting (flannel-vxlan) on a namespace lab with an L3 boundary.

inventories/lab-crosssubnet: node1 and node2 share segment A (172.30.0.0/24, br0); node3 is on segment B
(172.31.0.0/24, br1), behind the router that the underlay namespace is. Peers on the same underlay
subnet must get a plain route via their node IP and no VXLAN entries; peers across the boundary get the
VXLAN onlink route, fdb entry and permanent neighbour — and only their traffic is encapsulated.

(calico-ipip with CrossSubnet needs the ipip module: it runs in the VM, see test_ipip_vm.py.)
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from .labkit import LAB_INVENTORY, LAB_UP, REPO_ROOT, Lab, list_netns, netns_exec, netns_json, run_playbook

pytestmark = pytest.mark.integration

INVENTORY = REPO_ROOT / "inventories" / "lab-crosssubnet"
NODES = {"node1": "172.30.0.11/24", "node2": "172.30.0.12/24", "node3": "172.31.0.13/24"}
SEGMENTS = {  # bridge in the underlay namespace -> (gateway/prefix, node ports)
    "br0": ("172.30.0.1/24", {"v11", "v12"}),
    "br1": ("172.31.0.1/24", {"r13"}),
}
PODS = ("pod1", "pod2")
PODNET_PROTO = "152"
# backend -> (extra vars on top of the inventory, VXLAN device)
BACKENDS = {
    "calico-vxlan": ({}, "vxlan.calico"),
    "flannel-vxlan": (
        {"podnet_backend": "flannel-vxlan", "podnet_flannel_directrouting": True,
         "podnet_calico_crosssubnet": False},
        "flannel.1",
    ),
}


def node_ip(host: str) -> str:
    return str(ipaddress.IPv4Interface(NODES[host]).ip)


def same_subnet(a: str, b: str) -> bool:
    return ipaddress.IPv4Interface(NODES[a]).network == ipaddress.IPv4Interface(NODES[b]).network


def subnets_of(lab: Lab) -> dict[str, ipaddress.IPv4Network]:
    """The pod subnets podnet allocated (its lease file on the controller)."""
    leases = json.loads(Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text())
    return {host: ipaddress.ip_network(net) for host, net in leases.items()}


def pod_address(lab: Lab, host: str, pod: str) -> str:
    addrs = netns_json(lab.pod_ns(host, pod), "addr", "show", "dev", "eth0")[0]["addr_info"]
    return [a["local"] for a in addrs if a["family"] == "inet"][0]


def tx_packets(lab: Lab, host: str, dev: str) -> int:
    """Packets the device really sent (frames with no fdb entry count as tx dropped, not here)."""
    return lab.json(host, "-s", "link", "show", "dev", dev)[0]["stats64"]["tx"]["packets"]


def ping(lab: Lab, host: str, pod: str, target: str, count: int = 1) -> None:
    proc = netns_exec(lab.pod_ns(host, pod), ["ping", "-n", "-q", f"-c{count}", "-i0.2", "-W2", target])
    assert proc.returncode == 0, f"{host}/{pod} -> {target}: {proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module", params=list(BACKENDS))
def cross_lab(request) -> Iterator[Lab]:
    extra_vars, vxlan_dev = BACKENDS[request.param]
    lab = Lab(INVENTORY, extra_vars=extra_vars)
    with lab:
        lab.backend, lab.vxlan_dev = request.param, vxlan_dev
        yield lab
    assert list_netns(lab.prefix) == []


def test_lab_has_two_segments_behind_a_router(cross_lab: Lab) -> None:
    lab = cross_lab
    for bridge, (gateway, ports) in SEGMENTS.items():
        addrs = netns_json(lab.underlay_ns, "addr", "show", "dev", bridge)[0]["addr_info"]
        assert [f"{a['local']}/{a['prefixlen']}" for a in addrs if a["family"] == "inet"] == [gateway]
        assert {p["ifname"] for p in netns_json(lab.underlay_ns, "link", "show", "master", bridge)} == ports
    forward = netns_exec(lab.underlay_ns, ["cat", "/proc/sys/net/ipv4/ip_forward"], check=True)
    assert forward.stdout.strip() == "1"
    for host, cidr in NODES.items():
        addrs = lab.json(host, "addr", "show", "dev", "eth0")[0]["addr_info"]
        assert [f"{a['local']}/{a['prefixlen']}" for a in addrs if a["family"] == "inet"] == [cidr]
        (default,) = lab.json(host, "route", "show", "default")
        gateways = {ipaddress.IPv4Interface(g).network: str(ipaddress.IPv4Interface(g).ip)
                    for g, _ in SEGMENTS.values()}
        assert (default["gateway"], default["dev"]) == (gateways[ipaddress.IPv4Interface(cidr).network], "eth0")
    # Across the router: node1 and node3 reach each other, one hop apart (TTL 64 -> 63).
    proc = lab.exec("node1", ["ping", "-n", "-c1", "-W2", node_ip("node3")])
    assert proc.returncode == 0 and "ttl=63" in proc.stdout, proc.stdout + proc.stderr


def test_converge_routes_plainly_within_a_subnet_and_encapsulates_across(cross_lab: Lab) -> None:
    lab = cross_lab
    dev = lab.vxlan_dev
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    subnets = subnets_of(lab)
    macs = {h: lab.json(h, "link", "show", dev)[0]["address"] for h in NODES}
    for host in NODES:
        routes = {r["dst"]: r for r in lab.json(host, "route", "show", "proto", PODNET_PROTO) if "/" in r["dst"]}
        peers = [p for p in NODES if p != host]
        assert set(routes) == {str(subnets[p]) for p in peers}, routes
        plain = [p for p in peers if same_subnet(host, p)]
        encapsulated = [p for p in peers if not same_subnet(host, p)]
        assert encapsulated, "every node has a peer across the boundary in this lab"
        for peer in plain:
            assert routes[str(subnets[peer])] == {"dst": str(subnets[peer]), "gateway": node_ip(peer),
                                                  "dev": "eth0", "flags": []}, (host, peer)
        for peer in encapsulated:
            assert routes[str(subnets[peer])] == {"dst": str(subnets[peer]),
                                                  "gateway": str(subnets[peer].network_address),
                                                  "dev": dev, "flags": ["onlink"]}, (host, peer)
        fdb = {f["mac"]: f["dst"] for f in lab.json(host, "fdb", "show", "dev", dev, tool="bridge")}
        neigh = {n["dst"]: (n["lladdr"], n["state"]) for n in lab.json(host, "neigh", "show", "dev", dev)}
        assert fdb == {macs[p]: node_ip(p) for p in encapsulated}, (host, fdb)
        assert neigh == {str(subnets[p].network_address): (macs[p], ["PERMANENT"]) for p in encapsulated}, (
            host, neigh)
    # node1 <-> node2 plain, everything with node3 encapsulated: spelled out once for the reader.
    assert same_subnet("node1", "node2") and not same_subnet("node1", "node3")

    addresses = {(h, p): pod_address(lab, h, p) for h in NODES for p in PODS}
    failures = [f"{h}/{p} -> {target}" for (h, p) in addresses for (o, _), target in addresses.items()
                if o != h and netns_exec(lab.pod_ns(h, p), ["ping", "-n", "-q", "-c1", "-W2", target]
                                         ).returncode != 0]
    assert not failures, failures

    verify = lab.run("playbooks/verify.yml")
    assert verify.rc == 0, verify.output
    assert "24 pairs, 0 without answer" in verify.stdout, verify.output
    again = lab.run("playbooks/site.yml")
    assert again.rc == 0 and all(again.changed(h) == 0 for h in NODES), again.output


def test_only_traffic_across_the_boundary_is_encapsulated(cross_lab: Lab) -> None:
    lab = cross_lab
    dev = lab.vxlan_dev
    count = 3
    before = {h: tx_packets(lab, h, dev) for h in NODES}
    ping(lab, "node1", "pod1", pod_address(lab, "node2", "pod1"), count)  # same subnet: plain route
    after_plain = {h: tx_packets(lab, h, dev) for h in NODES}
    assert after_plain == before, (before, after_plain)
    ping(lab, "node1", "pod1", pod_address(lab, "node3", "pod1"), count)  # across the router: VXLAN
    after_cross = {h: tx_packets(lab, h, dev) for h in NODES}
    assert after_cross["node1"] - before["node1"] >= count, (before, after_cross)  # the requests
    assert after_cross["node3"] - before["node3"] >= count, (before, after_cross)  # the replies
    assert after_cross["node2"] == before["node2"], (before, after_cross)


def test_crosssubnet_without_node_prefix_fails_before_touching_hosts(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    shutil.copytree(INVENTORY, inventory)
    hosts_file = inventory / "hosts.yml"
    data = yaml.safe_load(hosts_file.read_text())
    data["podnet_nodes"]["hosts"]["node2"]["podnet_node_ip"] = "172.30.0.12"  # no /24
    hosts_file.write_text(yaml.safe_dump(data))
    with Lab(inventory) as lab:
        result = lab.run("playbooks/site.yml")
        assert result.rc != 0, result.output
        assert "host node2: podnet_node_ip: podnet_calico_crosssubnet needs the node's underlay prefix" in (
            result.stdout), result.output
        assert "host node1:" not in result.stdout and "host node3:" not in result.stdout, result.output
        for host in NODES:
            links = [link["ifname"] for link in lab.json(host, "link", "show")]
            assert links == ["lo", "eth0"], (host, links)  # no cali*, no vxlan.calico
            assert lab.json(host, "route", "show", "proto", PODNET_PROTO) == []
            for pod in PODS:
                assert [link["ifname"] for link in netns_json(lab.pod_ns(host, pod), "link")] == ["lo"]
        assert not Path(f"/run/podnet-lab/{lab.prefix}/leases.json").exists()  # no subnet was allocated
    assert list_netns(lab.prefix) == []


# --- the lab's routed segment itself (netns_lab with routed_cidr) ---------------------------------


def root_network() -> ipaddress.IPv4Network:
    """A network the root namespace really uses (the one of its first global IPv4 address)."""
    for link in json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, check=True).stdout):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                return ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
    pytest.skip("the root namespace has no global IPv4 address to collide with")


def test_routed_lab_up_is_idempotent_and_goes_back_to_one_segment(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(inventory=INVENTORY)
    again = lab.run(LAB_UP)
    assert again.rc == 0 and again.changed("localhost") == 0, again.output
    checked = lab.run(LAB_UP, check=True)
    assert checked.rc == 0 and checked.changed("localhost") == 0, checked.output
    # The same prefix with the one-segment lab inventory: node3 (now 172.30.0.13) moves to br0, br1 goes.
    single = run_playbook(LAB_UP, LAB_INVENTORY, lab.prefix)
    assert single.rc == 0 and single.changed("localhost") == 1, single.output
    assert [link["ifname"] for link in netns_json(lab.underlay_ns, "link", "show", "type", "bridge")] == ["br0"]
    ports = {p["ifname"] for p in netns_json(lab.underlay_ns, "link", "show", "master", "br0")}
    assert ports == {"v11", "v12", "v13"}
    assert "r13" not in {link["ifname"] for link in netns_json(lab.underlay_ns, "link", "show")}
    (default,) = lab.json("node3", "route", "show", "default")
    assert default["gateway"] == "172.30.0.1"
    proc = lab.exec("node3", ["ping", "-n", "-c1", "-W2", "172.30.0.11"])
    assert proc.returncode == 0 and "ttl=64" in proc.stdout, proc.stdout + proc.stderr
    assert run_playbook(LAB_UP, LAB_INVENTORY, lab.prefix).changed("localhost") == 0


@pytest.mark.parametrize(
    ("routed", "message"),
    [
        ("root", "routed_cidr {root} overlaps the root network namespace"),
        ("172.30.0.0/23", "routed_cidr 172.30.0.0/23 overlaps underlay_cidr 172.30.0.0/24"),
        ("172.32.0.0/24", "address of node {prefix}-node3 172.31.0.13 is not a host address of underlay_cidr "
                          "172.30.0.0/24 or routed_cidr 172.32.0.0/24"),
    ],
    ids=["overlaps-root", "overlaps-underlay", "node-in-neither"],
)
def test_lab_up_refuses_bad_routed_segments(lab_factory: Callable[..., Lab], routed: str, message: str) -> None:
    lab = lab_factory(inventory=INVENTORY, up=False)
    cidr = str(root_network()) if routed == "root" else routed
    result = lab.run(LAB_UP, extra_vars={"podnet_lab_routed_cidr": cidr, "podnet_lab_routed_gateway": None})
    assert result.rc != 0, result.output
    assert message.format(root=cidr, prefix=lab.prefix) in result.stdout + result.stderr, result.output
    assert list_netns(lab.prefix) == []
