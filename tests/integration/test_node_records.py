"""The nodes are the source of truth for their subnets (namespace lab): every node's run writes its own record
(subnet, VTEP MAC, backend), and site.yml reads the records before it allocates anything. A controller that lost
its lease file re-addresses no node; a lease file that disagrees with the nodes (another controller's, an old
copy) is refused before any node changes; a run that cannot ask a node (--limit) does not guess its subnet.
Each is checked in the kernel (the bridges' and pods' addresses, the routes) and in the files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .labkit import Lab, lab_inventory
from .modulekit import lab_state_dir

pytestmark = pytest.mark.integration

SITE = "playbooks/site.yml"
HOSTS = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def inventories(tmp_path_factory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("records")
    return {"two": lab_inventory(top / "two", ["node2", "node3"]), "three": lab_inventory(top / "three", HOSTS)}


@pytest.fixture(scope="module")
def lab(inventories):
    # three node namespaces; the cluster starts as node2 and node3 (node2 takes the first subnet, node3 the next)
    with Lab(inventory=inventories["three"], extra_vars={"podnet_backend": "flannel-vxlan"}) as lab:
        converged = lab.run(SITE, inventory=inventories["two"])
        assert converged.rc == 0, converged.output
        yield lab


def record(lab: Lab, host: str) -> dict:
    return json.loads(Path(lab_state_dir(lab, host), "node.json").read_text())


def leases_file(lab: Lab) -> Path:
    return Path(lab_state_dir(lab), "leases.json")


def addressing(lab: Lab, hosts=HOSTS) -> dict[str, list[str]]:
    """Each node's bridge address and its pods' addresses, as the kernel has them."""
    out: dict[str, list[str]] = {}
    for host in hosts:
        bridge = lab.json(host, "-4", "address", "show", "dev", "cni0")
        addresses = [f"{a['local']}/{a['prefixlen']}" for link in bridge for a in link.get("addr_info", [])]
        for pod in ("pod1", "pod2"):
            dump = lab.json(host, "-n", lab.pod_ns(host, pod), "-4", "address", "show", "dev", "eth0")
            addresses += [f"{a['local']}/{a['prefixlen']}" for link in dump for a in link.get("addr_info", [])]
        out[host] = addresses
    return out


def test_each_node_records_its_subnet_vtep_mac_and_backend(lab):
    leases = json.loads(leases_file(lab).read_text())
    assert leases == {"node2": "10.244.0.0/24", "node3": "10.244.1.0/24"}
    for host in ("node2", "node3"):
        vtep = lab.json(host, "link", "show", "flannel.1")[0]
        assert record(lab, host) == {
            "podnet": "node-record", "format": 1, "host": host, "node_ip": f"172.30.0.1{host[-1]}",
            "cluster_cidr": "10.244.0.0/16", "subnet": leases[host], "backend": "flannel-vxlan",
            "vtep_mac": vtep["address"]}
        assert oct(Path(lab_state_dir(lab, host), "node.json").stat().st_mode & 0o777) == "0o644"
    assert not Path(lab_state_dir(lab, "node1"), "node.json").exists()  # not in the cluster yet


def test_a_lost_lease_file_re_addresses_no_node(lab, inventories):
    """The lease file is lost and node1 joins: planned from nothing, node1 (first in the inventory) would take
    node2's subnet, node2 node3's and node3 a new one. The nodes' records keep node2 and node3 where they are;
    node1 takes the next free subnet."""
    before = addressing(lab, ("node2", "node3"))
    leases_file(lab).unlink()
    joined = lab.run(SITE, inventory=inventories["three"])
    assert joined.rc == 0, joined.output
    assert addressing(lab, ("node2", "node3")) == before
    assert json.loads(leases_file(lab).read_text()) == {
        "node1": "10.244.2.0/24", "node2": "10.244.0.0/24", "node3": "10.244.1.0/24"}
    assert record(lab, "node1")["subnet"] == "10.244.2.0/24"
    routes = {r["dst"]: r["gateway"] for r in lab.json("node1", "route", "show", "proto", "152") if "/" in r["dst"]}
    assert routes == {"10.244.0.0/24": "10.244.0.0", "10.244.1.0/24": "10.244.1.0"}  # flannel's via <vtep ip>
    again = lab.run(SITE, inventory=inventories["three"])
    assert again.rc == 0 and again.changed() == 0, again.output


def test_a_lease_file_that_disagrees_with_the_nodes_is_refused_before_any_change(lab, inventories):
    """Another controller's lease file (node2 and node3 swapped): the run stops in the plan play, no node
    changes, and the lease file is not overwritten."""
    ours = json.loads(leases_file(lab).read_text())
    before = addressing(lab)
    theirs = dict(ours, node2=ours["node3"], node3=ours["node2"])
    leases_file(lab).write_text(json.dumps(theirs))
    try:
        refused = lab.run(SITE, inventory=inventories["three"])
        assert refused.rc != 0
        assert "node2 holds 10.244.0.0/24" in refused.output and "gives it 10.244.1.0/24" in refused.output
        assert "no node was changed" in refused.output
        assert refused.changed() == 0
        assert addressing(lab) == before
        assert json.loads(leases_file(lab).read_text()) == theirs
    finally:
        leases_file(lab).write_text(json.dumps(ours))


def test_a_limited_run_does_not_guess_the_subnets_of_nodes_it_cannot_ask(lab, inventories):
    ours = json.loads(leases_file(lab).read_text())
    before = addressing(lab)
    leases_file(lab).write_text(json.dumps({"node1": ours["node1"]}))
    try:
        refused = lab.run(SITE, inventory=inventories["three"], limit="node1")
        assert refused.rc != 0
        assert "no pod subnet for node2, node3, and this run does not reach them" in refused.output
        assert addressing(lab) == before
        # the same file, the whole cluster asked: node2 and node3 say what they hold (the lease file is written
        # again; no node changes)
        healed = lab.run(SITE, inventory=inventories["three"])
        assert healed.rc == 0, healed.output
        assert "Remember newly allocated pod subnets" in healed.output and addressing(lab) == before
        assert json.loads(leases_file(lab).read_text()) == ours
    finally:
        leases_file(lab).write_text(json.dumps(ours))


def test_a_record_that_is_not_podnets_is_left_alone_and_reset_removes_podnets(lab, inventories):
    path = Path(lab_state_dir(lab, "node1"), "node.json")
    ours = path.read_text()
    path.write_text('{"someone": "else"}\n')
    try:
        refused = lab.run(SITE, inventory=inventories["three"])
        assert refused.rc != 0 and "is not podnet's node record" in refused.output, refused.output
        assert path.read_text() == '{"someone": "else"}\n'
    finally:
        path.write_text(ours)
    reset = lab.run("playbooks/reset.yml", inventory=inventories["three"])
    assert reset.rc == 0, reset.output
    assert not any(Path(lab_state_dir(lab, host), "node.json").exists() for host in HOSTS)
