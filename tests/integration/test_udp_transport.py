"""The UDP transport (flannel's udp backend without its daemon), against a kernel with the ipip and fou
modules: flannel-udp, canal over udp, the wire format flanneld speaks, and switches to and from
flannel-vxlan.

Runs inside the QEMU guest that test_ipip_vm.py boots (``pytest -m ipip``); skipped where ipip is missing
(this machine's kernel has neither ipip nor fou). Each node's run is node_apply itself, executed in the node
as Ansible executes it, with the arguments site.yml's node role gives it (modulekit.py).

One lab for the module, in order: the kernel probe; flannel-udp converged (check mode first), its state, pod
traffic through flannel0, a re-run that changes nothing; the bytes on the underlay (flanneld's format) both
ways; canal over udp from flannel-udp; a switch to flannel-vxlan that leaves nothing of the UDP transport;
flannel-udp built from its rendered scripts and converged (nothing changes); reset.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .labkit import Lab, netns_exec, netns_json
from .modulekit import (
    build_from_scripts,
    changed,
    converge,
    node_args,
    plan,
    reset_nodes,
    run_module,
    shared_lab,
)
from .test_calico_ipip import (
    GUEST_ONLY,
    NODES,
    PODNET_PROTO,
    assert_pods_reach_each_other,
    inet_addresses,
    pod_address,
)
from .test_render_exact import differences, snapshot

pytestmark = GUEST_ONLY

DEVICE = "flannel0"
PORT = 8285
UDP_OVERHEAD = 28
FLANNEL_UDP = {"podnet_backend": "flannel-udp"}
CANAL_UDP = {"podnet_backend": "canal", "podnet_transport": "udp"}
WIRE = Path(__file__).with_name("udp_wire.py")


@pytest.fixture(scope="module")
def lab(guest_lab):
    with shared_lab(guest_lab) as shared:
        yield shared


def fou_ports(lab: Lab, host: str) -> list[dict]:
    return lab.json(host, "fou", "show")


def assert_udp_state(lab: Lab) -> None:
    """flannel0 on every node: an IPIP device with foo-over-UDP from and to 8285 (checksummed), the node's
    address as its local one, MTU underlay - 28, podnet's alias, the node's X.0/32; the FOU port; one
    onlink route per peer through it."""
    subnets = {h: ipaddress.ip_network(n) for h, n in json.loads(
        Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text()).items()}
    for host, ip in NODES.items():
        device = lab.json(host, "-d", "link", "show", DEVICE)[0]
        data = device["linkinfo"]["info_data"]
        assert device["linkinfo"]["info_kind"] == "ipip" and "UP" in device["flags"], device
        assert device["ifalias"] == "podnet:tunnel"
        assert device["mtu"] == lab.json(host, "link", "show", "eth0")[0]["mtu"] - UDP_OVERHEAD
        assert data["local"] == ip and data["remote"] == "any", data
        assert data["encap"]["type"] == "fou" and data["encap"]["dport"] == PORT, data
        assert data["encap"]["sport"] == PORT and data["encap"]["csum"] is True, data
        assert inet_addresses(lab, host, DEVICE) == [(str(subnets[host].network_address), 32)]
        assert [(p["port"], p.get("ipproto")) for p in fou_ports(lab, host)] == [(PORT, 4)], fou_ports(lab, host)
        routes = {r["dst"]: r for r in lab.json(host, "route", "show", "proto", PODNET_PROTO)}
        for peer, peer_ip in NODES.items():
            if peer != host:
                route = routes[str(subnets[peer])]
                assert (route["gateway"], route["dev"], "onlink" in route["flags"]) == (peer_ip, DEVICE, True), route


def test_the_kernel_probe_finds_every_transport_here(lab):
    """The preflight's probe on a Debian kernel (modules under /lib/modules, no /proc/config.gz)."""
    result = run_module(lab, "node1", "preflight", {"node_ip": NODES["node1"],
                                                    "kernel_features": ["vxlan", "ipip", "fou", "wireguard"]})
    features = result["kernel"]["features"]
    assert result["kernel"]["release"] == os.uname().release
    assert all(f["available"] for f in features.values()), features
    assert features["ipip"]["how"] == "loaded" and features["fou"]["how"] in ("loaded", "loadable module"), features


def test_a_fou_port_that_is_not_podnets_is_refused_before_any_change(lab):
    """A FOU port carries no owner's mark: one on podnet_udp_port that no device of podnet's sends to is someone
    else's, and the node's run stops before its first change, naming it."""
    subprocess.run(["modprobe", "fou"], check=True)
    lab.exec("node1", ["ip", "fou", "add", "port", str(PORT), "ipproto", "4"], check=True)
    before = snapshot(lab)
    node = plan(lab, **FLANNEL_UDP)["node1"]
    refused = run_module(lab, "node1", "node_apply", node_args(lab, "node1", node), may_fail=True)
    assert refused.get("failed") and refused["step"] == "only what podnet owns", refused
    assert f"FOU port {PORT} exists and is not podnet's" in refused["msg"], refused["msg"]
    assert differences(before, snapshot(lab)) == [] and len(fou_ports(lab, "node1")) == 1
    lab.exec("node1", ["ip", "fou", "del", "port", str(PORT)], check=True)


def test_flannel_udp_converges_carries_pod_traffic_and_reruns_unchanged(lab):
    preview = converge(lab, FLANNEL_UDP, check=True)
    assert all(changed(preview).values()), preview
    assert not [h for h in NODES if [link for link in lab.json(h, "link", "show") if link["ifname"] == DEVICE]]
    converge(lab, FLANNEL_UDP)
    assert_udp_state(lab)
    for host in NODES:
        env = Path(f"/run/podnet-lab/{lab.prefix}/{host}/flannel/subnet.env").read_text()
        assert "FLANNEL_MTU=1472\n" in env, env  # flannel's udp backend: underlay MTU - 28
        pod_mtu = netns_json(lab.pod_ns(host, "pod1"), "link", "show", "eth0")[0]["mtu"]
        assert pod_mtu == 1472
    assert_pods_reach_each_other(lab, through=DEVICE)
    assert changed(converge(lab, FLANNEL_UDP)) == {host: False for host in NODES}
    assert changed(converge(lab, FLANNEL_UDP, check=True)) == {host: False for host in NODES}


CAPTURE_LIMIT = 120  # seconds; a capture ends when the test has what it waits for, this only bounds a failure


def start_capture(lab: Lab) -> subprocess.Popen:
    capture = subprocess.Popen(["ip", "netns", "exec", lab.underlay_ns, sys.executable, str(WIRE), "capture",
                                str(CAPTURE_LIMIT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert capture.stdout is not None and json.loads(capture.stdout.readline()) == {"ready": True}
    return capture


def captured(capture: subprocess.Popen, until: Callable[[dict], bool] | None = None) -> list[dict]:
    """The datagrams the capture saw: once `until` holds for one of them (or at once, without `until`; the
    frames that already crossed the underlay are queued and still read), the capture is stopped."""
    assert capture.stdin is not None and capture.stdout is not None
    seen: list[dict] = []
    while until is not None and (line := capture.stdout.readline()):
        seen.append(json.loads(line))
        if until(seen[-1]):
            time.sleep(0.5)  # room for a duplicate, which must not come
            break
    capture.stdin.close()
    seen += [json.loads(line) for line in capture.stdout.read().splitlines()]
    capture.wait(timeout=CAPTURE_LIMIT)
    return seen


def test_on_the_wire_it_is_flanneld_udp_format_both_ways(lab):
    """A pod's ping crosses the underlay as flanneld sends it: UDP 8285 -> 8285 between the node addresses,
    whose payload is exactly the inner IPv4 packet (its length is the datagram's), unfragmented, with a UDP
    checksum (as a socket's datagrams have; a veth hands frames over before the checksum is filled in, so only
    that there is one is checked here). And a datagram sent as flanneld sends one (from a UDP socket on 8285, the raw IPv4 packet as
    payload) is taken in: the pod it is addressed to answers, through the UDP transport."""
    source, target = pod_address(lab, "node1", "pod1"), pod_address(lab, "node2", "pod1")
    capture = start_capture(lab)
    ping = netns_exec(lab.pod_ns("node1", "pod1"), ["ping", "-n", "-q", "-c", "2", "-s", "1400", "-W", "3", target])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    seen = [d for d in captured(capture) if d["inner"].get("proto") == 1]
    request = [d for d in seen if d["inner"]["src"] == source and d["inner"]["icmp_type"] == 8]
    reply = [d for d in seen if d["inner"]["dst"] == source and d["inner"]["icmp_type"] == 0]
    assert len(request) >= 2 and len(reply) >= 2, seen
    for datagram in request + reply:
        assert (datagram["sport"], datagram["dport"]) == (PORT, PORT), datagram
        # the whole payload is the inner packet (a 1400-byte ping: no room for any framing of flanneld's own)
        assert datagram["payload_length"] == datagram["inner"]["total_length"] > 1400, json.dumps(datagram)
        assert datagram["inner"]["header_checksum_ok"] and datagram["udp_checksum"] != 0, datagram
        assert not datagram["more_fragments"] and datagram["fragment_offset"] == 0, datagram
    assert {(d["src"], d["dst"]) for d in request} == {(NODES["node1"], NODES["node2"])}
    assert {(d["src"], d["dst"]) for d in reply} == {(NODES["node2"], NODES["node1"])}

    # flanneld's side: node3's subnet as the sender (a pod address nobody has), node1's pod1 as the target
    subnets = json.loads(Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text())
    stranger = str(ipaddress.ip_network(subnets["node3"]).network_address + 200)
    target = pod_address(lab, "node1", "pod1")
    capture = start_capture(lab)
    sent = subprocess.run(["ip", "netns", "exec", lab.underlay_ns, sys.executable, str(WIRE), "send",
                           NODES["node1"], str(PORT), stranger, target], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr

    def answer(datagram: dict) -> bool:
        return datagram["inner"].get("icmp_type") == 0 and datagram["inner"]["dst"] == stranger

    answers = [d for d in captured(capture, until=answer) if answer(d)]
    # node1's pod answers the stranger of node3's subnet: back through flannel0, to node3's port 8285
    assert [(d["src"], d["dst"], d["dport"], d["inner"]["src"]) for d in answers] == \
        [(NODES["node1"], NODES["node3"], PORT, target)], answers


def test_canal_over_udp_from_flannel_udp(lab):
    preview = converge(lab, CANAL_UDP, check=True)
    assert all(changed(preview).values()), preview
    converge(lab, CANAL_UDP)
    assert_udp_state(lab)
    for host in NODES:
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == "cni0"]
        assert [link for link in lab.json(host, "link", "show") if link["ifname"].startswith("cali")]
    assert_pods_reach_each_other(lab, through=DEVICE)
    assert changed(converge(lab, CANAL_UDP)) == {host: False for host in NODES}
    gathered = run_module(lab, "node2", "ipip_tunnel", {"name": DEVICE, "state": "gathered"})["gathered"]
    assert (gathered["fou_port"], gathered["local"], gathered["mtu"]) == (PORT, NODES["node2"], 1472), gathered
    for state in ("merged", "overridden"):
        assert not run_module(lab, "node2", "ipip_tunnel", dict(gathered, state=state), check=True)["changed"]


def test_a_switch_to_flannel_vxlan_leaves_nothing_of_the_udp_transport(lab):
    converge(lab, {"podnet_backend": "flannel-vxlan"})
    for host in NODES:
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == DEVICE]
        assert fou_ports(lab, host) == []
        assert not [r for r in lab.json(host, "route", "show", "table", "all") if r.get("dev") == DEVICE]
    assert_pods_reach_each_other(lab, through="flannel.1")


def test_flannel_udp_from_flannel_vxlan_then_built_from_its_scripts_is_what_a_run_converges_to(lab, tmp_path):
    converge(lab, FLANNEL_UDP)  # and back: flannel.1 gone, flannel0 there
    assert_udp_state(lab)
    for host in NODES:
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == "flannel.1"]
    reset_nodes(lab)
    for host in NODES:
        assert fou_ports(lab, host) == []
    build_from_scripts(lab, FLANNEL_UDP, tmp_path)
    before = snapshot(lab), {host: fou_ports(lab, host) for host in NODES}
    assert_udp_state(lab)
    assert_pods_reach_each_other(lab, through=DEVICE)
    assert changed(converge(lab, FLANNEL_UDP)) == {host: False for host in NODES}
    after = snapshot(lab), {host: fou_ports(lab, host) for host in NODES}
    assert differences(before, after) == [], "\n".join(differences(before, after))
    reset_nodes(lab)
    for host in NODES:
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == DEVICE]
        assert fou_ports(lab, host) == []
