"""The nodes as the source of truth for their subnets: the record a node's run writes, how the preflight reads it
back (one shell line, run here by sh), and how the controller completes or refuses its lease file with the
records (plan/node_record.py). The lab tests (tests/integration/test_node_records.py) run the same on nodes."""
from __future__ import annotations

import json
import subprocess

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.plan import underlay
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.node_record import (
    RECORD_MAX,
    LeaseConflict,
    parse_record,
    reconcile,
    record_text,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import PlanError, plan_cluster
from ansible_collections.podnet.dataplane.plugins.modules import preflight

HOSTVARS = {
    "a": {"podnet_node_ip": "192.168.0.4"},
    "b": {"podnet_node_ip": "192.168.0.16"},
    "c": {"podnet_node_ip": "192.168.0.20"},
}


def plan(leases: dict[str, str], hostvars: dict | None = None) -> dict:
    hostvars = hostvars or HOSTVARS
    return plan_cluster(list(hostvars), hostvars, leases)


def record_of(host: str, subnet: str, cidr: str = "10.244.0.0/16") -> dict:
    """A record as a node holds it: what its run wrote for that subnet."""
    node = dict(plan({}, HOSTVARS)["nodes"][host], subnet=subnet, cluster_cidr=cidr)
    return parse_record(record_text(node))


def test_a_record_says_subnet_mac_backend_and_is_marked():
    node = plan({})["nodes"]["b"]
    record = json.loads(record_text(node))
    assert record == {"podnet": "node-record", "format": 1, "host": "b", "node_ip": "192.168.0.16",
                      "cluster_cidr": "10.244.0.0/16", "subnet": node["subnet"], "backend": "flannel-vxlan",
                      "vtep_mac": node["vtep"]["mac"]}
    assert parse_record(record_text(node)) == record
    assert record_text(node) == record_text(node)  # the same plan writes the same bytes: a re-run changes nothing


@pytest.mark.parametrize("text", [None, "", "not json", "[1, 2]", '{"subnet": "10.244.0.0/24"}',
                                  '{"podnet": "something-else"}', '{"podnet": "node-record"' + " " * RECORD_MAX + "}"])
def test_anything_else_is_not_podnets_record(text):
    assert parse_record(text) is None


def test_a_lost_lease_file_is_taken_from_the_nodes():
    # the cluster was converged as b, c (b took .0, c .1); then a joined and the lease file was lost: planned
    # from nothing, a would take .0 and b, c move
    fresh = plan({})
    assert fresh["leases"] == {"a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": "10.244.2.0/24"}
    records = {"a": None, "b": record_of("b", "10.244.0.0/24"), "c": record_of("c", "10.244.1.0/24")}
    known = reconcile({}, fresh, records, ["a", "b", "c"])
    assert known == {"b": "10.244.0.0/24", "c": "10.244.1.0/24"}
    assert plan(known)["leases"] == {"a": "10.244.2.0/24", "b": "10.244.0.0/24", "c": "10.244.1.0/24"}


def test_leases_that_agree_with_the_nodes_pass_unchanged():
    leases = {"a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": "10.244.2.0/24"}
    records = {host: record_of(host, subnet) for host, subnet in leases.items()}
    assert reconcile(leases, plan(leases), records, list(leases)) == leases
    # nodes with no record yet (an upgrade from a release that wrote none): the file is the truth
    assert reconcile(leases, plan(leases), dict.fromkeys(leases), list(leases)) == leases


def test_a_lease_file_that_disagrees_with_a_node_is_refused():
    mine = {"a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": "10.244.2.0/24"}
    records = {host: record_of(host, subnet) for host, subnet in mine.items()}
    theirs = {"a": "10.244.0.0/24", "b": "10.244.2.0/24", "c": "10.244.1.0/24"}  # another checkout's file
    with pytest.raises(LeaseConflict) as refused:
        reconcile(theirs, plan(theirs), records, list(mine))
    message = str(refused.value)
    assert "b holds 10.244.1.0/24" in message and "gives it 10.244.2.0/24" in message
    assert "c holds 10.244.2.0/24" in message and "gives it 10.244.1.0/24" in message
    assert "no node was changed" in message and "podnet_pod_subnet" in message


def test_a_lease_file_that_gives_a_nodes_subnet_to_another_is_refused():
    # b lost its lease; the file gives b's subnet to a, which holds nothing yet
    records = {"a": None, "b": record_of("b", "10.244.1.0/24"), "c": record_of("c", "10.244.2.0/24")}
    leases = {"a": "10.244.1.0/24", "c": "10.244.2.0/24"}
    with pytest.raises(LeaseConflict, match=r"b holds 10\.244\.1\.0/24, but the lease file gives it to a"):
        reconcile(leases, plan(leases), records, ["a", "b", "c"])


def test_a_node_out_of_reach_without_a_lease_is_refused():
    # --limit a: b and c are not asked, and the file has nothing for them
    with pytest.raises(LeaseConflict, match=r"no pod subnet for b, c, and this run does not reach them"):
        reconcile({}, plan({}), {"a": None}, ["a"])
    leases = {"b": "10.244.1.0/24", "c": "10.244.2.0/24"}  # a new node, limited to itself: fine
    assert reconcile(leases, plan(leases), {"a": None}, ["a"]) == leases


def test_explicit_subnets_and_other_layouts_are_not_compared():
    hostvars = {**HOSTVARS, "a": {**HOSTVARS["a"], "podnet_pod_subnet": "10.244.9.0/24"}}
    # a moved on purpose (podnet_pod_subnet); c's record is of an earlier cluster CIDR: it holds nothing here
    records = {"a": record_of("a", "10.244.0.0/24"), "b": record_of("b", "10.244.1.0/24"),
               "c": record_of("c", "10.96.3.0/24", cidr="10.96.0.0/16")}
    known = reconcile({}, plan({}, hostvars), records, ["a", "b", "c"])
    assert known == {"b": "10.244.1.0/24"}


def test_the_preflight_line_reads_the_record_or_nothing(tmp_path):
    """The action plugin's shell line (look_command) and its split, run by sh here: a record, none, one too big."""
    path = tmp_path / "node it's.json"  # quoted: a path with a space and a quote reaches the shell as one word
    node = plan({})["nodes"]["a"]

    def look(record_path):
        out = subprocess.run(["sh", "-c", underlay.look_command(str(record_path))], capture_output=True, text=True,
                             check=False)
        if out.returncode != 0:  # no `ip -j` here: the module's fallback is tested below
            pytest.skip("no iproute2 with JSON output")
        return underlay.split_look(out.stdout, str(record_path))

    assert look(path).record is None
    path.write_text(record_text(node))
    sections = look(path)
    assert parse_record(sections.record)["subnet"] == node["subnet"] and "ifname" in sections.addresses
    assert sections.probe and sections.routes is None and sections.subnet_env is None
    assert preflight.read_record(str(path)) == parse_record(sections.record)
    path.write_text("x" * (RECORD_MAX + 10))
    assert parse_record(look(path).record) is None and preflight.read_record(str(path)) is None
    assert preflight.read_record(str(tmp_path / "missing")) is None and preflight.read_record(None) is None
    with pytest.raises(ValueError):
        underlay.split_look("no separators at all", str(path))


@pytest.mark.parametrize("path", ["/etc/podnet/node.json; id", "etc/podnet/node.json", "/etc/podnet/../shadow",
                                  "/etc/podnet/node.json\n", "/etc/p\u00f6dnet/node.json"])
def test_the_record_path_is_checked_like_every_path(path):
    with pytest.raises(PlanError, match="podnet_node_record"):
        plan({}, {**HOSTVARS, "b": {**HOSTVARS["b"], "podnet_node_record": path}})
    plan({}, {**HOSTVARS, "b": {**HOSTVARS["b"], "podnet_node_record": ""}})  # empty: no record


def test_an_explicit_subnet_over_one_a_node_holds_is_refused():
    # c holds .2 and has no podnet_pod_subnet; the inventory gives .2 to a: c would move without being asked
    hostvars = {**HOSTVARS, "a": {**HOSTVARS["a"], "podnet_pod_subnet": "10.244.2.0/24"}}
    records = {"a": None, "b": record_of("b", "10.244.1.0/24"), "c": record_of("c", "10.244.2.0/24")}
    leases = {"b": "10.244.1.0/24", "c": "10.244.2.0/24"}
    with pytest.raises(LeaseConflict, match=r"c holds 10\.244\.2\.0/24, but podnet_pod_subnet gives 10\.244\.2\.0/24 to a"):
        reconcile(leases, plan(leases, hostvars), records, ["a", "b", "c"])
    # both given explicitly (a swap the inventory asks for): nothing to refuse
    swapped = {**hostvars, "c": {**HOSTVARS["c"], "podnet_pod_subnet": "10.244.0.0/24"}}
    assert reconcile(leases, plan(leases, swapped), records, ["a", "b", "c"]) == {"b": "10.244.1.0/24"}
