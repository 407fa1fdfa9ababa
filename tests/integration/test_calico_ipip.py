"""calico-ipip on the three-node namespace lab, against a real kernel with the ipip module.

This machine's kernel has no ipip module: these tests run inside the QEMU guest that
test_ipip_vm.py boots (``pytest -m ipip`` there, after ``modprobe ipip``), and are skipped anywhere
the module is not loaded. Loading it gives every namespace a fallback ``tunl0``; podnet configures that
one (MTU underlay - 20, up, the node block's ``X.0/32``) and routes each peer's block
``via <peer node IP> dev tunl0 onlink`` (proto 152). Pods are wired as calico does it.

One lab for the whole module, in order: check mode on the fresh lab, converge (and a second run with
changed=0), drift repair with foreign state kept (check mode first: exactly the drifted nodes), reset.
Under software emulation every playbook run costs minutes, so each run is made to count (no separate
verify.yml runs: check mode shows the drift).
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from .labkit import Lab, list_netns, netns_json

IPIP_LOADED = Path("/sys/module/ipip").exists()
# The marks of every test that needs the ipip module: they run in the QEMU guest (test_ipip_vm.py).
GUEST_ONLY = [
    pytest.mark.integration,
    pytest.mark.ipip,
    pytest.mark.skipif(not IPIP_LOADED, reason="needs the ipip kernel module (runs in the QEMU guest: "
                                                "tests/integration/test_ipip_vm.py)"),
]
pytestmark = GUEST_ONLY

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
PODS = ("pod1", "pod2")
PODNET_PROTO = "152"
TUNNEL = "tunl0"
IPIP_OVERHEAD = 20
FOREIGN_ROUTE = "10.98.0.0/24"
FELIX_SYSCTLS = {"conf/{}/proxy_arp": "1", "neigh/{}/proxy_delay": "0", "conf/{}/forwarding": "1"}


def subnets_of(lab: Lab) -> dict[str, ipaddress.IPv4Network]:
    """The subnets podnet allocated (its lease file on the controller)."""
    leases = json.loads(Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text())
    return {host: ipaddress.ip_network(net) for host, net in leases.items()}


def pod_address(lab: Lab, host: str, pod: str) -> str:
    addrs = netns_json(lab.pod_ns(host, pod), "addr", "show", "dev", "eth0")[0]["addr_info"]
    return [a["local"] for a in addrs if a["family"] == "inet"][0]


def inet_addresses(lab: Lab, host: str, dev: str) -> list[tuple[str, int]]:
    return [(a["local"], a["prefixlen"]) for a in lab.json(host, "addr", "show", "dev", dev)[0]["addr_info"]
            if a["family"] == "inet"]


def tunnel(lab: Lab, host: str) -> dict:
    return lab.json(host, "-d", "link", "show", TUNNEL)[0]


def tx_packets(lab: Lab, host: str, device: str = TUNNEL) -> int:
    return lab.json(host, "-s", "link", "show", device)[0]["stats64"]["tx"]["packets"]


def kernel_state(lab: Lab) -> dict:
    """Links, addresses and routes of every node: what a check-mode run must leave alone."""
    return {h: (lab.json(h, "-d", "link", "show"), lab.json(h, "addr", "show"), lab.json(h, "route", "show"))
            for h in NODES}


def foreign_state(lab: Lab) -> dict:
    """The foreign route and link the drift test adds: podnet must leave them as they are."""
    return {
        "node2": lab.json("node2", "route", "show", "proto", "static"),
        "node3": [link["ifname"] for link in lab.json("node3", "link", "show") if link["ifname"] == "foreign0"],
    }


def assert_ipip_state(lab: Lab) -> None:
    subnets = subnets_of(lab)
    assert set(subnets) == set(NODES), subnets
    for host in NODES:
        subnet = subnets[host]
        # tunl0: an ipip device, up, MTU underlay - 20, the block's network address as a /32.
        underlay_mtu = lab.json(host, "link", "show", "eth0")[0]["mtu"]
        tun = tunnel(lab, host)
        assert tun["linkinfo"]["info_kind"] == "ipip", tun
        assert "UP" in tun["flags"], tun
        assert tun["mtu"] == underlay_mtu - IPIP_OVERHEAD == 1480, tun
        assert inet_addresses(lab, host, TUNNEL) == [(str(subnet.network_address), 32)]
        # Peer blocks via the peers' node IPs over tunl0, onlink; no other podnet peer route.
        routes = lab.json(host, "route", "show", "proto", PODNET_PROTO)
        peer_routes = {r["dst"]: r for r in routes if "/" in r["dst"]}
        peers = {h: ip for h, ip in NODES.items() if h != host}
        assert set(peer_routes) == {str(subnets[p]) for p in peers}, routes
        for peer, peer_ip in peers.items():
            route = peer_routes[str(subnets[peer])]
            assert (route["gateway"], route["dev"], route["flags"]) == (peer_ip, TUNNEL, ["onlink"]), route
        # Calico pod wiring: cali* host ends without an address, a /32 route each, proxy ARP.
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == "cni0"]
        veths = {link["ifname"] for link in lab.json(host, "link", "show") if link["ifname"].startswith("cali")}
        assert len(veths) == len(PODS), veths
        pod_routes = {r["dst"]: r for r in routes if "/" not in r["dst"]}
        for pod in PODS:
            address = pod_address(lab, host, pod)
            assert ipaddress.ip_address(address) in subnet
            route = pod_routes[address]
            assert route["dev"] in veths and "gateway" not in route and route["scope"] == "link", route
            assert inet_addresses(lab, host, route["dev"]) == []
            for template, value in FELIX_SYSCTLS.items():
                path = f"/proc/sys/net/ipv4/{template.format(route['dev'])}"
                assert lab.exec(host, ["cat", path]).stdout.strip() == value, path
            in_pod = {r["dst"]: r for r in netns_json(lab.pod_ns(host, pod), "route", "show")}
            assert in_pod["169.254.1.1"]["dev"] == "eth0" and in_pod["169.254.1.1"]["scope"] == "link", in_pod
            assert in_pod["default"]["gateway"] == "169.254.1.1", in_pod


def assert_pods_reach_each_other(lab: Lab, through: str = TUNNEL) -> None:
    """Every pod pings every pod on the other nodes, and the traffic left through `through` (tunl0)."""
    before = {h: tx_packets(lab, h, through) for h in NODES}
    addresses = {(h, p): pod_address(lab, h, p) for h in NODES for p in PODS}
    # all pings at once: one after the other, their start-ups alone cost half a minute under the guest's emulation
    pings = {f"{h}/{p} -> {target}": subprocess.Popen(["ip", "netns", "exec", lab.pod_ns(h, p), "ping", "-n", "-q",
                                                      "-c", "1", "-W", "5", target], stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL)
             for (h, p) in addresses for (o, _), target in addresses.items() if o != h}
    failures = [pair for pair, ping in pings.items() if ping.wait(timeout=120) != 0]
    assert not failures, failures
    sent = {h: tx_packets(lab, h, through) - before[h] for h in NODES}
    # Each node's 2 pods ping 4 remote pods and answer 8 pings: at least 16 packets into the device.
    assert all(n >= 2 * len(PODS) * 2 * (len(NODES) - 1) for n in sent.values()), sent


@pytest.fixture(scope="module")
def ipip_lab():
    lab = Lab(extra_vars={"podnet_backend": "calico-ipip"})
    with lab:
        yield lab
    assert list_netns(lab.prefix) == []


def test_check_mode_on_fresh_lab_changes_nothing(ipip_lab):
    lab = ipip_lab
    for host in NODES:  # modprobe ipip gave every node its fallback tunl0: down, no address
        tun = tunnel(lab, host)
        assert tun["linkinfo"]["info_kind"] == "ipip" and "UP" not in tun["flags"], tun
    before = kernel_state(lab)
    result = lab.run("playbooks/site.yml", check=True, diff=True)
    assert result.rc == 0, result.output
    assert all(result.changed(h) > 0 for h in NODES), result.recap
    assert kernel_state(lab) == before


def test_converge_state_connectivity_and_idempotence(ipip_lab):
    lab = ipip_lab
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    assert_ipip_state(lab)
    assert_pods_reach_each_other(lab)
    again = lab.run("playbooks/site.yml")
    assert again.rc == 0, again.output
    assert all(again.changed(h) == 0 for h in NODES), again.recap


def test_drift_on_tunl0_is_repaired_and_foreign_state_kept(ipip_lab):
    lab = ipip_lab
    subnets = subnets_of(lab)
    # Foreign state podnet must keep: a static route on node2, a link on node3. (tunl0 itself is
    # podnet's: state overridden removes other addresses from it, by design.)
    lab.exec("node2", ["ip", "route", "add", FOREIGN_ROUTE, "via", "172.30.0.1", "proto", "static"], check=True)
    lab.exec("node3", ["ip", "link", "add", "foreign0", "type", "dummy"], check=True)
    foreign_before = foreign_state(lab)
    # Drift: node2 loses its route to node3's block; node3's tunl0 goes down with a wrong MTU (the
    # kernel then drops every route through it) and loses its address.
    lab.exec("node2", ["ip", "route", "del", str(subnets["node3"]), "dev", TUNNEL], check=True)
    lab.exec("node3", ["ip", "link", "set", TUNNEL, "down", "mtu", "1400"], check=True)
    lab.exec("node3", ["ip", "addr", "flush", "dev", TUNNEL], check=True)
    assert lab.json("node3", "route", "show", "dev", TUNNEL) == []
    # Check mode is exact: it reports the drifted nodes (and only them) and changes nothing.
    drifted_state = kernel_state(lab)
    check = lab.run("playbooks/site.yml", check=True, diff=True)
    assert check.rc == 0, check.output
    assert check.changed("node2") > 0 and check.changed("node3") > 0 and check.changed("node1") == 0, \
        check.recap
    assert kernel_state(lab) == drifted_state
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    assert result.changed("node2") > 0 and result.changed("node3") > 0 and result.changed("node1") == 0, \
        result.recap
    assert result.changed("node2") == check.changed("node2") and result.changed("node3") == check.changed("node3")
    assert_ipip_state(lab)
    assert_pods_reach_each_other(lab)
    assert foreign_state(lab) == foreign_before


def test_reset_removes_what_podnet_created(ipip_lab):
    lab = ipip_lab
    subnets = subnets_of(lab)
    result = lab.run("playbooks/reset.yml")
    assert result.rc == 0, result.output
    cluster = ipaddress.ip_network("10.244.0.0/16")
    for host in NODES:
        assert lab.json(host, "route", "show", "proto", PODNET_PROTO) == []
        left = [r["dst"] for r in lab.json(host, "route", "show") if r["dst"] != "default"
                and ipaddress.ip_network(r["dst"], strict=False).overlaps(cluster)]
        assert left == [], left
        assert [link["ifname"] for link in lab.json(host, "link", "show")
                if link["ifname"].startswith("cali")] == []
        # The fallback tunl0 cannot be deleted while ipip is loaded: down, without podnet's address.
        tun = tunnel(lab, host)
        assert "UP" not in tun["flags"], tun
        assert (str(subnets[host].network_address), 32) not in inet_addresses(lab, host, TUNNEL)
        assert not tun.get("ifalias", "").startswith("podnet:"), tun
        assert "podnet:" not in lab.exec(host, ["iptables-save"]).stdout
    # Foreign state outlives the reset too.
    assert [r["dst"] for r in lab.json("node2", "route", "show", "proto", "static")] == [FOREIGN_ROUTE]
    assert [link["ifname"] for link in lab.json("node3", "link", "show") if link["ifname"] == "foreign0"]
