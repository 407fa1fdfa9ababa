"""canal over other transports (seed 000: canal keeps flannel's modes and adds calico's BGP): canal over
host-gw and over BGP with BIRD converge, verify (no drift, every pod pair answers) and switch to and from
flannel-vxlan and canal's VXLAN preset leaving nothing of the transport they left. The pod wiring is a
variable too: flannel-vxlan wired the routed way, calico-vxlan wired to a bridge.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .labkit import Lab, list_netns
from .test_calico_bird import NODES, bird_path, bird_running, subnets_of, wait_for_routes

pytestmark = pytest.mark.integration

if shutil.which("bird") is None:
    pytestmark = [pytestmark, pytest.mark.skip(reason="bird2 is not installed (make setup installs it)")]

CANAL_HOST_GW = {"podnet_backend": "canal", "podnet_transport": "host-gw"}
CANAL_BIRD = {"podnet_backend": "canal", "podnet_transport": "bgp", "podnet_calico_bgp": "bird"}


@pytest.fixture(scope="module")
def lab():
    lab = Lab(extra_vars=CANAL_HOST_GW)
    with lab:
        yield lab
    assert list_netns(lab.prefix) == []


def converge_and_verify(lab: Lab, extra_vars: dict, bird: bool = False) -> None:
    result = lab.run("playbooks/site.yml", extra_vars=extra_vars)
    assert result.rc == 0, result.output
    if bird:  # BIRD learns the routes after the run: the pings wait for them
        wait_for_routes(lab, NODES)
    verified = lab.run("playbooks/verify.yml", extra_vars=extra_vars)
    assert verified.rc == 0, verified.output


def peer_routes(lab: Lab, host: str, proto: str) -> dict[str, dict]:
    # BIRD also keeps the node's own block as a blackhole (as calico does): not a route to a peer
    return {r["dst"]: r for r in lab.json(host, "route", "show", "proto", proto)
            if "/" in r["dst"] and r.get("type") != "blackhole"}


def subnet_env(lab: Lab, host: str) -> Path:
    return Path(f"/run/podnet-lab/{lab.prefix}/{host}/flannel/subnet.env")


def links(lab: Lab, host: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in lab.json(host, "-d", "link", "show")}


def assert_canal_wiring(lab: Lab, host: str) -> None:
    """calico's pod wiring and flannel's facts: cali* veths without a bridge, masquerade, subnet.env."""
    names = links(lab, host)
    assert len([n for n in names if n.startswith("cali")]) == 2 and "cni0" not in names, sorted(names)
    rules = lab.exec(host, ["iptables-save", "-t", "nat"], check=True).stdout
    assert rules.count("--comment \"podnet:") == 4, rules
    assert "FLANNEL_NETWORK=10.244.0.0/16" in subnet_env(lab, host).read_text()


def test_canal_over_host_gw(lab):
    converge_and_verify(lab, CANAL_HOST_GW)
    subnets = subnets_of(lab)
    for host in NODES:
        routes = peer_routes(lab, host, "152")
        assert {dst: r["gateway"] for dst, r in routes.items()} == {
            subnets[peer]: ip for peer, ip in NODES.items() if peer != host}
        assert not any(r.get("flags") for r in routes.values())  # plain routes: no onlink, no tunnel
        assert not [n for n in links(lab, host) if n.startswith(("flannel", "vxlan", "tunl"))]
        assert_canal_wiring(lab, host)
        assert "FLANNEL_MTU=1500" in subnet_env(lab, host).read_text()  # nothing to encapsulate


def test_canal_over_bgp_with_bird(lab):
    converge_and_verify(lab, CANAL_BIRD, bird=True)
    for host in NODES:
        assert peer_routes(lab, host, "152") == {}  # BIRD's routes took the static ones' place
        assert len(peer_routes(lab, host, "bird")) == 2
        assert bird_running(lab, host)
        assert_canal_wiring(lab, host)


def test_canal_over_bgp_to_flannel_vxlan_and_back_to_canal_leaves_nothing(lab):
    converge_and_verify(lab, {"podnet_backend": "flannel-vxlan", "podnet_transport": ""})
    for host in NODES:
        assert not bird_running(lab, host) and not Path(bird_path(lab, host, "bird.conf")).parent.exists()
        assert peer_routes(lab, host, "bird") == {} and len(peer_routes(lab, host, "152")) == 2
        names = links(lab, host)
        assert "flannel.1" in names and "cni0" in names and not [n for n in names if n.startswith("cali")]
        proxy_arp = Path(f"/run/podnet-lab/{lab.prefix}/{host}/proxy_arp.json")
        assert not proxy_arp.exists()  # every value podnet changed on cali* was given back
    converge_and_verify(lab, {"podnet_backend": "canal", "podnet_transport": ""})
    for host in NODES:
        names = links(lab, host)
        assert "flannel.1" in names and "cni0" not in names
        assert all(r.get("dev") == "flannel.1" for r in peer_routes(lab, host, "152").values())
        assert_canal_wiring(lab, host)
    converge_and_verify(lab, CANAL_HOST_GW)  # and off VXLAN again: the VTEP goes
    for host in NODES:
        assert "flannel.1" not in links(lab, host)


def test_the_pod_wiring_is_swapped_with_a_variable(lab):
    converge_and_verify(lab, {"podnet_backend": "flannel-vxlan", "podnet_transport": "", "podnet_pod_wiring": "routed"})
    for host in NODES:
        names = links(lab, host)
        assert "flannel.1" in names and "cni0" not in names
        assert all(r.get("dev") == "flannel.1" for r in peer_routes(lab, host, "152").values())
        assert_canal_wiring(lab, host)  # flannel's VXLAN and facts, calico's wiring
    converge_and_verify(lab, {"podnet_backend": "calico-vxlan", "podnet_transport": "", "podnet_pod_wiring": "bridge"})
    for host in NODES:
        names = links(lab, host)
        assert "vxlan.calico" in names and "cni0" in names and "flannel.1" not in names
        assert not [n for n in names if n.startswith("cali")]
        assert all(r.get("dev") == "vxlan.calico" for r in peer_routes(lab, host, "152").values())
        assert not subnet_env(lab, host).exists()  # flannel does not run
        assert "podnet:" not in lab.exec(host, ["iptables-save", "-t", "nat"], check=True).stdout
        assert not Path(f"/run/podnet-lab/{lab.prefix}/{host}/proxy_arp.json").exists()
    converge_and_verify(lab, CANAL_HOST_GW)  # back to a preset: nothing of either left
    for host in NODES:
        names = links(lab, host)
        assert not [n for n in names if n.startswith(("flannel", "vxlan", "cni"))]
        assert_canal_wiring(lab, host)
