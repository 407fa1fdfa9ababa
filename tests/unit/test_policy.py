"""Network policy: compilation to iptables-save lines, validation, and the chain planner (no root)."""
from __future__ import annotations

import copy

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.iptables_chains import (
    Table,
    normalize_chains,
    parse_save,
    plan_chains,
    podnet_view,
    simulate,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan import PlanError
from ansible_collections.podnet.dataplane.plugins.module_utils.policy import (
    ESTABLISHED_RULE,
    FORWARD_CHAIN,
    JUMP,
    egress_chain,
    flow_allowed,
    ingress_chain,
    label_key_problems,
    save_string,
    validate_policies,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.policy import (
    compile_policies as compile_,
)


def pod(name, netns, address, veth, **labels):
    return {"name": name, "netns": netns, "address": address, "host_interface": veth, "labels": labels}


NODES = {
    "node1": {"name": "node1", "node_ip": "172.30.0.11", "pods": [
        pod("web", "lab-node1-web", "10.244.0.2/24", "caliweb00000000", app="web"),
        pod("other", "lab-node1-other", "10.244.0.3/24", "caliother000000", app="other")]},
    "node2": {"name": "node2", "node_ip": "172.30.0.12", "pods": [
        pod("db", "lab-node2-db", "10.244.1.2/24", "calidb000000000", app="db"),
        pod("db2", "lab-node2-db2", "10.244.1.3/24", "calidb200000000", app="db")]},
    "node3": {"name": "node3", "node_ip": "172.30.0.13", "pods": [
        pod("web2", "lab-node3-web2", "10.244.2.2/24", "caliweb20000000", app="web", tier="front")]},
}
ALLOW_WEB_DB = {"name": "allow-web-db", "selector": {"app": "db"},
                "ingress": [{"from": [{"selector": {"app": "web"}}], "ports": [{"port": 5432, "protocol": "tcp"}]}]}


def compiled(policies, backend="calico-bgp", nodes=None):
    return compile_(backend, policies, copy.deepcopy(nodes or NODES))


def problems_of(policies, backend="calico-bgp", nodes=None) -> list[str]:
    with pytest.raises(PlanError) as info:
        compiled(policies, backend, nodes)
    return info.value.problems


# --- compilation ---------------------------------------------------------------------------------------


def test_ingress_policy_compiles_to_exact_iptables_save_lines():
    out = compiled([ALLOW_WEB_DB])
    assert out["node1"] == {"chains": {}, "jump": JUMP} and out["node3"]["chains"] == {}
    db, db2 = ingress_chain("lab-node2-db"), ingress_chain("lab-node2-db2")
    assert out["node2"]["jump"] == {"table": "filter", "chain": "FORWARD", "target": "PODNET-FORWARD", "position": 1}
    assert out["node2"]["chains"] == {
        "PODNET-FORWARD": [
            "-A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            f'-A PODNET-FORWARD -o calidb000000000 -m comment --comment "node2/db ingress" -j {db}',
            f'-A PODNET-FORWARD -o calidb200000000 -m comment --comment "node2/db2 ingress" -j {db2}',
        ],
        db: [
            f"-A {db} -s 10.244.0.2/32 -p tcp -m tcp --dport 5432 -m comment --comment allow-web-db -j RETURN",
            f"-A {db} -s 10.244.2.2/32 -p tcp -m tcp --dport 5432 -m comment --comment allow-web-db -j RETURN",
            f"-A {db} -j DROP",
        ],
        db2: [
            f"-A {db2} -s 10.244.0.2/32 -p tcp -m tcp --dport 5432 -m comment --comment allow-web-db -j RETURN",
            f"-A {db2} -s 10.244.2.2/32 -p tcp -m tcp --dport 5432 -m comment --comment allow-web-db -j RETURN",
            f"-A {db2} -j DROP",
        ],
    }


def test_chain_names_are_stable_short_and_per_pod():
    a, b = compiled([ALLOW_WEB_DB]), compiled([ALLOW_WEB_DB])
    assert a == b
    names = {ingress_chain(p["netns"]) for n in NODES.values() for p in n["pods"]} | {
        egress_chain(p["netns"]) for n in NODES.values() for p in n["pods"]}
    assert len(names) == 10 and all(len(n) <= 28 and n.startswith("PODNET-") for n in names)
    assert ingress_chain("lab-node2-db") == ingress_chain("lab-node2-db")
    assert ingress_chain("lab-node2-db") != ingress_chain("other-lab-node2-db")


def test_egress_with_cidr_udp_range_and_any_peer():
    policy = {"name": "web-out", "selector": {"app": "web"}, "egress": [
        {"to": [{"cidr": "10.96.0.0/12"}], "ports": [{"port": 53, "protocol": "UDP"},
                                                     {"port": 8000, "end_port": 8080}]},
        {"to": [{"selector": {"app": "db"}}]},
        {"ports": [{"protocol": "udp"}]},
    ]}
    out = compiled([policy])
    chain = egress_chain("lab-node1-web")
    assert out["node1"]["chains"][FORWARD_CHAIN] == [
        ESTABLISHED_RULE, f'-A PODNET-FORWARD -i caliweb00000000 -m comment --comment "node1/web egress" -j {chain}']
    assert out["node1"]["chains"][chain] == [
        f"-A {chain} -d 10.96.0.0/12 -p udp -m udp --dport 53 -m comment --comment web-out -j RETURN",
        f"-A {chain} -d 10.96.0.0/12 -p tcp -m tcp --dport 8000:8080 -m comment --comment web-out -j RETURN",
        f"-A {chain} -d 10.244.1.2/32 -m comment --comment web-out -j RETURN",
        f"-A {chain} -d 10.244.1.3/32 -m comment --comment web-out -j RETURN",
        f"-A {chain} -p udp -m comment --comment web-out -j RETURN",
        f"-A {chain} -j DROP",
    ]
    assert "PODNET-I" not in " ".join(out["node1"]["chains"])  # egress only: no ingress chain
    assert out["node2"]["chains"] == {}


def test_policy_types_defaults_and_deny_all_idioms():
    deny_all = {"name": "deny-all", "selector": {}}  # neither key: Ingress, nothing allowed
    out = compiled([deny_all])
    for host, node in NODES.items():
        chains = out[host]["chains"]
        assert len(chains) == 1 + len(node["pods"])
        for p in node["pods"]:
            assert chains[ingress_chain(p["netns"])] == [f"-A {ingress_chain(p['netns'])} -j DROP"]
    both = {"name": "lock-db", "selector": {"app": "db"}, "policy_types": ["Ingress", "egress"]}
    chains = compiled([both])["node2"]["chains"]
    assert chains[egress_chain("lab-node2-db")] == [f"-A {egress_chain('lab-node2-db')} -j DROP"]
    assert chains[ingress_chain("lab-node2-db")] == [f"-A {ingress_chain('lab-node2-db')} -j DROP"]
    allow_all = {"name": "allow-all", "selector": {"app": "db"}, "ingress": [{}]}
    chain = ingress_chain("lab-node2-db")
    assert compiled([allow_all])["node2"]["chains"][chain] == [
        f"-A {chain} -m comment --comment allow-all -j RETURN", f"-A {chain} -j DROP"]


def test_union_of_policies_sorted_by_name_and_deduplicated():
    p1 = {"name": "b-second", "selector": {"app": "db"}, "ingress": [{"from": [{"cidr": "10.1.0.0/16"}]}]}
    p2 = {"name": "a-first", "selector": {"app": "db"}, "ingress": [
        {"from": [{"cidr": "10.2.0.0/16"}, {"cidr": "10.2.0.0/16"}]}]}
    chain = ingress_chain("lab-node2-db")
    assert compiled([p1, p2])["node2"]["chains"][chain] == [
        f"-A {chain} -s 10.2.0.0/16 -m comment --comment a-first -j RETURN",
        f"-A {chain} -s 10.1.0.0/16 -m comment --comment b-second -j RETURN",
        f"-A {chain} -j DROP"]
    assert compiled([p1, p2]) == compiled([p2, p1])


def test_peer_selector_matching_nothing_allows_nothing_and_zero_cidr_means_any():
    nobody = {"name": "nobody", "selector": {"app": "db"}, "ingress": [{"from": [{"selector": {"app": "ghost"}}]}]}
    chain = ingress_chain("lab-node2-db")
    assert compiled([nobody])["node2"]["chains"][chain] == [f"-A {chain} -j DROP"]
    anywhere = {"name": "anywhere", "selector": {"app": "db"}, "ingress": [{"from": [{"cidr": "0.0.0.0/0"}]}]}
    assert compiled([anywhere])["node2"]["chains"][chain][0] == f"-A {chain} -m comment --comment anywhere -j RETURN"


def test_matchlabels_needs_every_label():
    policy = {"name": "front", "selector": {"app": "web", "tier": "front"}, "ingress": []}
    out = compiled([policy])
    assert out["node1"]["chains"] == {}
    assert list(out["node3"]["chains"]) == [FORWARD_CHAIN, ingress_chain("lab-node3-web2")]


def test_no_policies_and_flannel_without_policies():
    for backend in ("calico-bgp", "flannel-vxlan", "flannel-host-gw", "canal", "romana-style", "weave-style"):
        out = compiled([], backend)
        assert all(v == {"chains": {}, "jump": JUMP} for v in out.values())
    assert compiled(None) == compiled([])


@pytest.mark.parametrize("backend", ["calico-bgp", "calico-ipip", "calico-vxlan", "canal", "romana-style",
                                     "weave-style"])
def test_policy_backends(backend):
    assert compiled([ALLOW_WEB_DB], backend)["node2"]["chains"]


@pytest.mark.parametrize("backend", ["flannel-vxlan", "flannel-host-gw"])
def test_flannel_refuses_policies(backend):
    problems = problems_of([ALLOW_WEB_DB], backend)
    assert len(problems) == 1
    assert problems[0].startswith("host node1: podnet_network_policies: backend " + backend)
    assert "flannel implements none" in problems[0]


# --- validation ----------------------------------------------------------------------------------------

P = "host node1: podnet_network_policies"


def ingress_rule(**rule):
    return [{"name": "p", "selector": {"app": "db"}, "ingress": [rule]}]


@pytest.mark.parametrize(
    ("policies", "where", "words"),
    [
        pytest.param([{"name": "p", "selector": {"-app": "db"}}], f"{P}[p].selector", "label key '-app'",
                     id="label-key-leading-dash"),
        pytest.param([{"name": "p", "selector": {"a" * 64: "db"}}], f"{P}[p].selector", "at most 63",
                     id="label-key-too-long"),
        pytest.param([{"name": "p", "selector": {"Example.com/app": "db"}}], f"{P}[p].selector",
                     "DNS subdomain", id="label-prefix-uppercase"),
        pytest.param([{"name": "p", "selector": {"/app": "db"}}], f"{P}[p].selector", "prefix before '/' is empty",
                     id="label-prefix-empty"),
        pytest.param([{"name": "p", "selector": {"example.com/": "db"}}], f"{P}[p].selector", "name is empty",
                     id="label-name-empty"),
        pytest.param([{"name": "p", "selector": {"app": "db!"}}], f"{P}[p].selector", "value 'db!'",
                     id="label-value-bad-char"),
        pytest.param([{"name": "p", "selector": {"app": "d" * 64}}], f"{P}[p].selector", "at most 63",
                     id="label-value-too-long"),
        pytest.param([{"name": "p", "selector": {"app": 5}}], f"{P}[p].selector", "must be a string",
                     id="label-value-not-string"),
        pytest.param([{"name": "p", "selector": ["app=db"]}], f"{P}[p].selector", "must be a mapping",
                     id="selector-not-mapping"),
        pytest.param(ingress_rule(ports=[{"port": 70000}]), f"{P}[p].ingress[0].ports[0].port",
                     "70000 is out of range", id="port-out-of-range"),
        pytest.param(ingress_rule(ports=[{"port": 0}]), f"{P}[p].ingress[0].ports[0].port", "out of range",
                     id="port-zero"),
        pytest.param(ingress_rule(ports=[{"port": "http"}]), f"{P}[p].ingress[0].ports[0].port",
                     "named ports are not supported", id="named-port"),
        pytest.param(ingress_rule(ports=[{"port": 80, "end_port": 70}]), f"{P}[p].ingress[0].ports[0].end_port",
                     "below port 80", id="end-port-below-port"),
        pytest.param(ingress_rule(ports=[{"end_port": 70}]), f"{P}[p].ingress[0].ports[0].end_port",
                     "needs port", id="end-port-without-port"),
        pytest.param(ingress_rule(ports=[{"port": 80, "protocol": "sctp"}]),
                     f"{P}[p].ingress[0].ports[0].protocol", "'sctp' is not supported", id="protocol-sctp"),
        pytest.param(ingress_rule(ports=[{"port": 80, "protocol": "icmp"}]),
                     f"{P}[p].ingress[0].ports[0].protocol", "use tcp or udp", id="protocol-icmp"),
        pytest.param(ingress_rule(ports=[{"port": 80, "proto": "tcp"}]), f"{P}[p].ingress[0].ports[0]",
                     "unknown key 'proto'", id="port-unknown-key"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/33"}]}), f"{P}[p].ingress[0].from[0].cidr",
                     "is not an IPv4 network", id="cidr-prefix-too-long"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.1/8"}]}), f"{P}[p].ingress[0].from[0].cidr",
                     "has host bits set", id="cidr-host-bits"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0"}]}), f"{P}[p].ingress[0].from[0].cidr",
                     "CIDR notation", id="cidr-no-prefix"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "fd00::/8"}]}), f"{P}[p].ingress[0].from[0].cidr",
                     "not an IPv4 network", id="cidr-ipv6"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8", "selector": {}}]}),
                     f"{P}[p].ingress[0].from[0]", "must be {selector", id="peer-two-kinds"),
        pytest.param(ingress_rule(**{"from": [{"podSelector": {"app": "web"}}]}), f"{P}[p].ingress[0].from[0]",
                     "unknown key 'podSelector'", id="peer-unknown-key"),
        pytest.param(ingress_rule(to=[{"cidr": "10.0.0.0/8"}]), f"{P}[p].ingress[0]", "unknown key 'to'",
                     id="ingress-rule-with-to"),
        pytest.param([{"name": "p", "selector": {}, "podSelector": {}}], f"{P}[p]", "unknown key 'podSelector'",
                     id="policy-unknown-key"),
        pytest.param([{"selector": {}}], f"{P}[0].name", "is required", id="policy-without-name"),
        pytest.param([{"name": "Allow_Web", "selector": {}}], f"{P}[Allow_Web].name", "lowercase",
                     id="policy-name-syntax"),
        pytest.param([{"name": "p", "selector": {}}, {"name": "p", "selector": {}}], f"{P}[p].name",
                     "duplicate policy name", id="duplicate-policy-name"),
        pytest.param([{"name": "p"}], f"{P}[p].selector", "is required", id="policy-without-selector"),
        pytest.param([{"name": "p", "selector": {}, "policy_types": ["Both"]}], f"{P}[p].policy_types",
                     "'Both' is not Ingress or Egress", id="bad-policy-type"),
        pytest.param([{"name": "p", "selector": {}, "policy_types": ["Egress"],
                       "ingress": [{"from": [{"cidr": "10.0.0.0/8"}]}]}], f"{P}[p].ingress",
                     "policy_types does not list Ingress", id="ingress-rules-not-in-types"),
        pytest.param([{"name": "p", "selector": {}, "ingress": {"from": []}}], f"{P}[p].ingress",
                     "must be a list of rules", id="ingress-not-a-list"),
        pytest.param({"name": "p"}, P, "must be a list of policies", id="policies-not-a-list"),
        pytest.param(["allow-all"], f"{P}[0]", "must be a mapping", id="policy-not-a-mapping"),
    ],
)
def test_bad_policy_is_reported_with_host_policy_and_field(policies, where, words):
    problems = problems_of(policies)
    assert any(p.startswith(where + ":") and words in p for p in problems), problems


def test_bad_pod_labels_name_the_host_and_pod():
    nodes = copy.deepcopy(NODES)
    nodes["node3"]["pods"][0]["labels"] = {"app": "web", "bad key": "x"}
    problems = problems_of([ALLOW_WEB_DB], nodes=nodes)
    assert problems == ["host node3: podnet_pods[web2].labels: label key 'bad key': name 'bad key' must be at "
                        "most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a "
                        "letter or digit"]


def test_every_problem_is_reported_at_once():
    policies = [
        {"name": "a", "selector": {"app": "db"}, "bogus": 1,
         "ingress": [{"from": [{"cidr": "300.0.0.0/8"}], "ports": [{"port": 99999, "protocol": "sctp"}]}]},
        {"name": "b", "selector": {"app": "db"}, "egress": [{"to": [{"selector": {"k": "v" * 70}}]}]},
    ]
    problems = problems_of(policies)
    assert [p.split(":")[1].strip() for p in problems] == [
        "podnet_network_policies[a]", "podnet_network_policies[a].ingress[0].from[0].cidr",
        "podnet_network_policies[a].ingress[0].ports[0].protocol",
        "podnet_network_policies[a].ingress[0].ports[0].port",
        "podnet_network_policies[b].egress[0].to[0].selector"]


@pytest.mark.parametrize("key", ["app", "app.kubernetes.io/name", "example.com/Tier_1", "a", "A-b.c_d",
                                 "x" * 63, ("d" * 63 + ".") * 3 + "d/n"])
def test_valid_label_keys(key):
    assert label_key_problems(key) == []


def test_policy_types_case_and_strings_for_ports():
    (policy,) = validate_policies("canal", [{"name": "p", "selector": {}, "policy_types": ["EGRESS"],
                                             "egress": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}], "n")
    assert policy.types == ("Egress",) and policy.rules["Egress"][0].ports[0].port == 5432


# --- reachability model --------------------------------------------------------------------------------


def test_flow_allowed_matches_the_policy():
    policies = validate_policies("calico-bgp", [ALLOW_WEB_DB], "node1")
    assert flow_allowed(policies, NODES, ("node1", "web"), ("node2", "db"), "tcp", 5432)
    assert not flow_allowed(policies, NODES, ("node1", "web"), ("node2", "db"), "tcp", 5433)
    assert not flow_allowed(policies, NODES, ("node1", "web"), ("node2", "db"), "icmp")
    assert not flow_allowed(policies, NODES, ("node1", "other"), ("node2", "db"), "tcp", 5432)
    assert flow_allowed(policies, NODES, ("node2", "db"), ("node1", "other"), "icmp")  # db's egress is open
    assert flow_allowed(policies, NODES, ("node1", "other"), ("node3", "web2"), "icmp")


# --- iptables-save text and the chain planner ----------------------------------------------------------


def test_save_string_quotes_like_iptables_save():
    assert save_string("allow-web_db") == "allow-web_db"
    assert save_string("a.b") == '"a.b"'
    assert save_string("node1/web ingress") == '"node1/web ingress"'
    assert save_string('say "hi"') == '"say \\"hi\\""'
    assert save_string("") == '""'


SAVED = """# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 28 08:32:29 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:OTHER-CHAIN - [0:0]
:PODNET-FORWARD - [0:0]
:PODNET-OLD - [0:0]
-A FORWARD -s 10.88.0.0/16 -j ACCEPT
-A FORWARD -j PODNET-FORWARD
-A FORWARD -s 10.77.0.0/16 -j ACCEPT
-A OTHER-CHAIN -j RETURN
-A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A PODNET-FORWARD -o cali1 -j PODNET-OLD
-A PODNET-OLD -j DROP
COMMIT
# Completed on Sat Nov 28 08:32:29 2026
"""


def test_parse_save():
    table = parse_save(SAVED, "filter")
    assert list(table.chains) == ["INPUT", "FORWARD", "OUTPUT", "OTHER-CHAIN", "PODNET-FORWARD", "PODNET-OLD"]
    assert table.chains["FORWARD"] == "DROP" and table.chains["OTHER-CHAIN"] == "-"
    assert table.rules["FORWARD"][1] == "-A FORWARD -j PODNET-FORWARD"
    assert parse_save("", "filter").chains == {"INPUT": "ACCEPT", "FORWARD": "ACCEPT", "OUTPUT": "ACCEPT"}


def test_overridden_plan_from_a_used_table_and_idempotence():
    want, problems = normalize_chains(compiled([ALLOW_WEB_DB])["node2"]["chains"], "PODNET-")
    assert problems == []
    have = parse_save(SAVED, "filter")
    plan = plan_chains(have, want, JUMP, "PODNET-", "overridden")
    assert plan.problems == []
    kinds = [op.kind for op in plan.ops]
    assert kinds[:3] == ["declare"] * 3 and kinds[-1] == "insert"
    payload = plan.payload("filter").splitlines()
    assert payload[0] == "*filter" and payload[-1] == "COMMIT"
    assert ":PODNET-FORWARD - [0:0]" in payload and "-F PODNET-OLD" in payload and "-X PODNET-OLD" in payload
    assert payload.index("-F PODNET-OLD") < payload.index("-X PODNET-OLD")
    assert "-D FORWARD -j PODNET-FORWARD" in payload and payload[-2] == "-I FORWARD 1 -j PODNET-FORWARD"
    after = simulate(have, plan.ops)
    assert after.rules["FORWARD"] == ["-A FORWARD -j PODNET-FORWARD", "-A FORWARD -s 10.88.0.0/16 -j ACCEPT",
                                      "-A FORWARD -s 10.77.0.0/16 -j ACCEPT"]
    assert after.rules["OTHER-CHAIN"] == have.rules["OTHER-CHAIN"] and "PODNET-OLD" not in after.chains
    assert {c: after.rules[c] for c in want} == want
    assert plan_chains(after, want, JUMP, "PODNET-", "overridden").ops == []
    assert plan.commands("filter")[0] == "iptables -t filter -F PODNET-FORWARD"
    assert "iptables -t filter -N " + ingress_chain("lab-node2-db") in plan.commands("filter")


def test_jump_past_the_end_of_a_short_chain_and_duplicates():
    have = parse_save(SAVED, "filter")
    jump = dict(JUMP, position=9)
    want = {"PODNET-FORWARD": have.rules["PODNET-FORWARD"], "PODNET-OLD": have.rules["PODNET-OLD"]}
    plan = plan_chains(have, want, jump, "PODNET-", "merged")
    after = simulate(have, plan.ops)
    assert after.rules["FORWARD"][-1] == "-A FORWARD -j PODNET-FORWARD"
    assert plan_chains(after, want, jump, "PODNET-", "merged").ops == []
    doubled = copy.deepcopy(after)
    doubled.rules["FORWARD"].insert(0, "-A FORWARD -j PODNET-FORWARD")
    fixed = plan_chains(doubled, want, jump, "PODNET-", "merged")
    assert [op.kind for op in fixed.ops] == ["delete", "delete", "insert"]
    assert simulate(doubled, fixed.ops).rules["FORWARD"] == after.rules["FORWARD"]


def test_merged_keeps_other_podnet_chains_deleted_removes_them_all():
    have = parse_save(SAVED, "filter")
    plan = plan_chains(have, {"PODNET-NEW": ["-A PODNET-NEW -j RETURN"]}, None, "PODNET-", "merged")
    assert [op.line for op in plan.ops] == [":PODNET-NEW - [0:0]", "-A PODNET-NEW -j RETURN"]
    gone = plan_chains(have, {}, None, "PODNET-", "deleted")
    after = simulate(have, gone.ops)
    assert podnet_view(after, "PODNET-") == []
    assert after.rules["FORWARD"] == ["-A FORWARD -s 10.88.0.0/16 -j ACCEPT", "-A FORWARD -s 10.77.0.0/16 -j ACCEPT"]
    assert plan_chains(after, {}, None, "PODNET-", "deleted").ops == []
    assert plan_chains(Table.empty("filter"), {}, JUMP, "PODNET-", "deleted").ops == []


def test_a_foreign_rule_using_a_podnet_chain_blocks_its_removal():
    have = parse_save(SAVED, "filter")
    have.rules["OTHER-CHAIN"].append("-A OTHER-CHAIN -s 10.1.0.0/16 -j PODNET-OLD")
    plan = plan_chains(have, {}, None, "PODNET-", "deleted")
    assert plan.problems == ["chain PODNET-OLD is still used by the rule '-A OTHER-CHAIN -s 10.1.0.0/16 -j "
                             "PODNET-OLD' (not podnet's): remove that rule first"]


def test_wanted_rules_are_checked():
    _, problems = normalize_chains({"OTHER": ["-j DROP"], "PODNET-A": ["-A PODNET-B -j DROP", "-j PODNET-C"],
                                    "PODNET-" + "X" * 30: []}, "PODNET-")
    assert any("does not start with the prefix" in p for p in problems)
    assert any("appends to PODNET-B, not PODNET-A" in p for p in problems)
    assert any("jumps to PODNET-C, which is not listed" in p for p in problems)
    assert any("not a valid chain name" in p for p in problems)
    want, _ = normalize_chains({"PODNET-A": ["-j   DROP"]}, "PODNET-")
    assert want == {"PODNET-A": ["-A PODNET-A -j DROP"]}
