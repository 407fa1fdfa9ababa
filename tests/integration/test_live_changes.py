"""Changes to a live cluster, measured with the loss probe (every pod sends a numbered datagram to every pod on the
other nodes every 10 ms while one site.yml run makes the change): a re-run, a node added and removed, an MTU
change lose nothing; a change of transport alone (the path, not the pods' wiring) loses at most one probe per
pair - site.yml adds the new path on every node, then moves every node's routes, then removes the old path. Each
change is also checked in the kernel: the new path in place, nothing left of the old one."""
from __future__ import annotations

from pathlib import Path

import pytest

from .labkit import Lab, lab_inventory, probed_runs

pytestmark = pytest.mark.integration

PROBE = "playbooks/probe.yml"
SITE = "playbooks/site.yml"
@pytest.fixture(scope="module")
def inventories(tmp_path_factory) -> dict[int, Path]:
    top = tmp_path_factory.mktemp("inventories")
    return {3: lab_inventory(top / "three", ["node1", "node2", "node3"]),
            4: lab_inventory(top / "four", ["node1", "node2", "node3", "node4"])}


@pytest.fixture(scope="module")
def lab(inventories):
    # four node namespaces; the cluster is the first three until a test adds the fourth
    lab = Lab(inventory=inventories[4], extra_vars={"podnet_backend": "flannel-vxlan"})
    with lab:
        converge(lab, inventories[3])
        yield lab


def converge(lab: Lab, inventory: Path, **extra) -> None:
    result = lab.run(SITE, inventory=inventory, extra_vars=extra)
    assert result.rc == 0, result.output


def probed(lab: Lab, inventory: Path, report: Path, *changes: dict) -> dict[tuple[str, str], dict]:
    """Each change a site.yml run (extra vars; `_inventory` picks the inventory), all of them while the probes of
    the three-node cluster run; the probe rows by (source, target)."""
    results, rows = probed_runs(lab, report, changes, inventory=inventory)
    for result in results:
        assert result.rc == 0, result.output
    assert len(rows) == 6 * 4, rows
    return {(r["source"], r["target"]): r for r in rows}


def lost(rows: dict[tuple[str, str], dict], most: int = 0) -> dict[tuple[str, str], dict]:
    """The pairs that lost more than `most` probes."""
    return {pair: {k: r[k] for k in ("sent", "lost", "longest_gap_ms")}
            for pair, r in rows.items() if r["lost"] > most}


def links(lab: Lab, host: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in lab.json(host, "-d", "link", "show")}


def peer_routes(lab: Lab, host: str) -> dict[str, dict]:
    """The node's routes to the other nodes' pods (podnet's protocol), by destination."""
    return {route["dst"]: route for route in lab.json(host, "route", "show", "proto", "152")}


def test_a_re_run_loses_nothing(lab, inventories, tmp_path):
    before = {host: peer_routes(lab, host) for host in ("node1", "node2", "node3")}
    rows = probed(lab, inventories[3], tmp_path / "loss.json", {})
    assert lost(rows) == {}
    assert {host: peer_routes(lab, host) for host in before} == before


def test_adding_and_removing_a_node_loses_nothing_between_the_others(lab, inventories, tmp_path):
    rows = probed(lab, inventories[3], tmp_path / "loss.json", {"_inventory": inventories[4]})
    assert lost(rows) == {}
    node4 = [link for link in lab.json("node4", "-4", "addr", "show", "cni0")][0]["addr_info"][0]
    subnet = f"{node4['local'].rsplit('.', 1)[0]}.0/24"
    assert {host: subnet in peer_routes(lab, host) for host in ("node1", "node2", "node3")} == dict.fromkeys(
        ("node1", "node2", "node3"), True)
    rows = probed(lab, inventories[3], tmp_path / "loss2.json", {})
    assert lost(rows) == {}
    assert {host: subnet in peer_routes(lab, host) for host in ("node1", "node2", "node3")} == dict.fromkeys(
        ("node1", "node2", "node3"), False)
    # and its VTEP's static entries are gone from the others
    vtep_mac = links(lab, "node4")["flannel.1"]["address"]
    assert [e for host in ("node1", "node2", "node3") for e in lab.json(host, "fdb", "show", "dev", "flannel.1",
                                                                         tool="bridge")
            if e["mac"] == vtep_mac] == []


def test_an_mtu_change_loses_nothing(lab, inventories, tmp_path):
    rows = probed(lab, inventories[3], tmp_path / "loss.json", {"podnet_mtu": 1400}, {})
    assert lost(rows) == {}
    # and the change was made, then undone (the VTEP's MTU follows the underlay again)
    assert links(lab, "node1")["flannel.1"]["mtu"] == 1450


def test_changing_flannel_transport_loses_at_most_one_probe_per_pair(lab, inventories, tmp_path):
    rows = probed(lab, inventories[3], tmp_path / "to-host-gw.json", {"podnet_backend": "flannel-host-gw"})
    assert lost(rows, most=1) == {}
    for host in ("node1", "node2", "node3"):
        assert "flannel.1" not in links(lab, host)
        assert {route.get("dev") for route in peer_routes(lab, host).values()} == {"eth0"}
    # a node that cannot take the change (a VTEP name taken by a device not podnet's) holds every node on the old
    # path: the others prepared theirs beside it, and nobody switched
    lab.exec("node3", ["ip", "link", "add", "flannel.1", "type", "bridge"], check=True)
    refused = lab.run(SITE, inventory=inventories[3], extra_vars={"podnet_backend": "flannel-vxlan"})
    assert refused.rc != 0 and [refused.failed(h) for h in ("node1", "node2", "node3")] == [0, 0, 1], refused.output
    for host in ("node1", "node2"):
        assert links(lab, host)["flannel.1"]["linkinfo"]["info_kind"] == "vxlan"
        assert {route.get("dev") for route in peer_routes(lab, host).values()} == {"eth0"}
    lab.exec("node3", ["ip", "link", "del", "flannel.1"], check=True)
    rows = probed(lab, inventories[3], tmp_path / "to-vxlan.json", {"podnet_backend": "flannel-vxlan"})
    assert lost(rows, most=1) == {}
    for host in ("node1", "node2", "node3"):
        assert {route.get("dev") for route in peer_routes(lab, host).values()} == {"flannel.1"}


def test_changing_a_routed_transport_loses_at_most_one_probe_per_pair(lab, inventories, tmp_path):
    converge(lab, inventories[3], podnet_backend="calico-bgp")  # pods rewired: not measured here
    for at, (backend, device, gone) in enumerate((("calico-vxlan", "vxlan.calico", None),
                                                 ("canal", "flannel.1", "vxlan.calico"),
                                                 ("calico-bgp", "eth0", "flannel.1"))):
        rows = probed(lab, inventories[3], tmp_path / f"{at}.json", {"podnet_backend": backend})
        assert lost(rows, most=1) == {}, backend
        for host in ("node1", "node2", "node3"):
            assert {route.get("dev") for route in peer_routes(lab, host).values()
                    if "/" in route["dst"]} == {device}, (backend, host)
            assert gone is None or gone not in links(lab, host), (backend, host)
    converge(lab, inventories[3], podnet_backend="flannel-vxlan")
