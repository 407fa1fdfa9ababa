"""Network policy: compilation to iptables-save lines, validation, and the chain planner (no root)."""
from __future__ import annotations

import copy
import ipaddress
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.iptables_chains import (
    Table,
    normalize_chains,
    parse_save,
    plan_chains,
    podnet_view,
    simulate,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import PlanError
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.policy import (
    ESTABLISHED_RULE,
    FORWARD_CHAIN,
    JUMP,
    MAX_COMMENT_BYTES,
    comment,
    egress_chain,
    flow_allowed,
    ingress_chain,
    label_key_problems,
    save_string,
    validate_policies,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.policy import (
    compile_policies as compile_,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


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
    chain, inbound = egress_chain("lab-node1-web"), ingress_chain("lab-node1-web")
    # egress rules without policy_types: Ingress and Egress (Kubernetes), so no ingress at all
    assert out["node1"]["chains"][FORWARD_CHAIN] == [
        ESTABLISHED_RULE, f'-A PODNET-FORWARD -i caliweb00000000 -m comment --comment "node1/web egress" -j {chain}',
        f'-A PODNET-FORWARD -o caliweb00000000 -m comment --comment "node1/web ingress" -j {inbound}']
    assert out["node1"]["chains"][inbound] == [f"-A {inbound} -j DROP"]
    assert out["node1"]["chains"][chain] == [
        f"-A {chain} -d 10.96.0.0/12 -p udp -m udp --dport 53 -m comment --comment web-out -j RETURN",
        f"-A {chain} -d 10.96.0.0/12 -p tcp -m tcp --dport 8000:8080 -m comment --comment web-out -j RETURN",
        f"-A {chain} -d 10.244.1.2/32 -m comment --comment web-out -j RETURN",
        f"-A {chain} -d 10.244.1.3/32 -m comment --comment web-out -j RETURN",
        f"-A {chain} -p udp -m comment --comment web-out -j RETURN",
        f"-A {chain} -j DROP",
    ]
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


def test_kubernetes_policy_types_defaulting():
    def types(**policy):
        (parsed,) = validate_policies("calico-bgp", [{"name": "p", "selector": {}, **policy}], "n")
        return parsed.types

    rule = [{"to": [{"cidr": "10.0.0.0/8"}]}]
    assert types() == ("Ingress",)
    assert types(egress=rule) == ("Ingress", "Egress")  # egress-only: ingress is denied too
    assert types(egress=[]) == ("Ingress",)  # no egress rules: egress stays open
    assert types(egress=None) == ("Ingress",)
    assert types(ingress=[], egress=rule) == ("Ingress", "Egress")
    assert types(policy_types=[], egress=rule) == ("Ingress", "Egress")  # [] is defaulted like absent
    assert types(policy_types=["Egress"]) == ("Egress",)
    assert types(policy_types=["Egress", "Ingress"], egress=[]) == ("Ingress", "Egress")
    # rules of a type the policy does not have are ignored (Kubernetes), not refused
    assert types(policy_types=["Egress"], ingress=[{}]) == ("Egress",)
    chain = egress_chain("lab-node2-db")
    out = compiled([{"name": "p", "selector": {"app": "db"}, "policy_types": ["Egress"], "ingress": [{}]}])
    assert out["node2"]["chains"][chain] == [f"-A {chain} -j DROP"]
    assert ingress_chain("lab-node2-db") not in out["node2"]["chains"]


def test_except_blocks_compile_to_the_cidr_minus_the_excepts():
    policy = {"name": "p", "selector": {"app": "db"}, "ingress": [
        {"from": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}, {"selector": {"app": "web"}}],
         "ports": [{"port": 5432}]}]}
    chain = ingress_chain("lab-node2-db")
    blocks = ["10.0.0.0/16", "10.2.0.0/15", "10.4.0.0/14", "10.8.0.0/13", "10.16.0.0/12", "10.32.0.0/11",
              "10.64.0.0/10", "10.128.0.0/9"]
    tail = "-p tcp -m tcp --dport 5432 -m comment --comment p -j RETURN"
    assert compiled([policy])["node2"]["chains"][chain] == [
        *(f"-A {chain} -s {block} {tail}" for block in blocks),
        f"-A {chain} -s 10.244.0.2/32 {tail}", f"-A {chain} -s 10.244.2.2/32 {tail}", f"-A {chain} -j DROP"]
    # overlapping and nested excepts, and excepts that together cover the whole cidr
    (parsed,) = validate_policies("calico-bgp", [{"name": "p", "selector": {}, "ingress": [{"from": [
        {"cidr": "0.0.0.0/0", "except": ["128.0.0.0/1", "64.0.0.0/2", "96.0.0.0/3", "0.0.0.1/32"]},
        {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/9", "10.128.0.0/9"]}]}]}], "n")
    first, second = parsed.rules["Ingress"][0].peers
    # 0.0.0.0/2 (what 128.0.0.0/1 and 64.0.0.0/2 leave; 96.0.0.0/3 lies within the latter) without 0.0.0.1
    assert len(first.blocks()) == 30 and [str(first.blocks()[i]) for i in (0, 1, -1)] == [
        "0.0.0.0/32", "0.0.0.2/31", "32.0.0.0/3"]
    assert sum(b.num_addresses for b in first.blocks()) == 2 ** 30 - 1
    assert second.blocks() == []
    nobody = {"name": "p", "selector": {"app": "db"}, "ingress": [
        {"from": [{"cidr": "10.0.0.0/8", "except": ["10.0.0.0/9", "10.128.0.0/9"]}]}]}
    assert compiled([nobody])["node2"]["chains"][chain] == [f"-A {chain} -j DROP"]


def test_comments_are_cut_to_255_utf8_bytes_on_a_character_boundary():
    assert comment("x" * 300) == "-m comment --comment " + "x" * 255
    text = "a" + "é" * 200  # 1 + 400 bytes: 127 two-byte characters fit after the "a", the 128th would not
    cut = comment(text).split(" ", 3)[3].strip('"')
    assert cut == "a" + "é" * 127 and len(cut.encode()) == 255 == MAX_COMMENT_BYTES
    assert comment("€" * 100).count("€") == 85  # 3 bytes each: 255 exactly
    assert comment("node1/web ingress") == '-m comment --comment "node1/web ingress"'


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
        pytest.param([{"name": "p", "selector": {}, "policy_types": "Ingress"}], f"{P}[p].policy_types",
                     "must be a list of Ingress and/or Egress", id="policy-types-not-a-list"),
        pytest.param([{"name": "p", "selector": {}, "policy_types": ["Ingress", "Egress", "Ingress"]}],
                     f"{P}[p].policy_types", "may not list more than two types", id="policy-types-three"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8",
                                               "except": ["10.1.0.0/16", "11.0.0.0/16"]}]}),
                     f"{P}[p].ingress[0].from[0].except[1]",
                     "11.0.0.0/16 is not strictly inside cidr 10.0.0.0/8", id="except-outside-cidr"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}]}),
                     f"{P}[p].ingress[0].from[0].except[0]", "not strictly inside", id="except-equals-cidr"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}]}),
                     f"{P}[p].ingress[0].from[0].except[0]", "not strictly inside",
                     id="except-wider-than-cidr"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.1/16"]}]}),
                     f"{P}[p].ingress[0].from[0].except[0]", "has host bits set", id="except-host-bits"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}]}),
                     f"{P}[p].ingress[0].from[0].except[0]", "not an IPv4 network", id="except-ipv6"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8\n"}]}), f"{P}[p].ingress[0].from[0].cidr",
                     "is not an IPv4 network", id="cidr-trailing-newline"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8", "except": [" 10.1.0.0/16"]}]}),
                     f"{P}[p].ingress[0].from[0].except[0]", "is not an IPv4 network", id="except-leading-space"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0"]}]}),
                     f"{P}[p].ingress[0].from[0].except[0]", "CIDR notation", id="except-no-prefix"),
        pytest.param(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8", "except": "10.1.0.0/16"}]}),
                     f"{P}[p].ingress[0].from[0].except", "must be a list of CIDR blocks",
                     id="except-not-a-list"),
        pytest.param(ingress_rule(**{"from": [{"selector": {}, "except": ["10.1.0.0/16"]}]}),
                     f"{P}[p].ingress[0].from[0].except", "belongs to a cidr peer", id="except-on-selector"),
        pytest.param(ingress_rule(**{"from": [{"except": ["10.1.0.0/16"]}]}),
                     f"{P}[p].ingress[0].from[0]", "must be {selector", id="except-without-cidr"),
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


def test_except_problem_message_in_full():
    problems = problems_of(ingress_rule(**{"from": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]}))
    assert problems == ["host node1: podnet_network_policies[p].ingress[0].from[0].except[0]: 11.0.0.0/16 is not "
                        "strictly inside cidr 10.0.0.0/8 (an except block must be a smaller block within the cidr)"]


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


OLD = "PODNET-I-0123456789ab"  # a podnet chain from an earlier run (named by podnet's grammar)
SAVED = """# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 28 08:32:29 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:OTHER-CHAIN - [0:0]
:PODNET-FORWARD - [0:0]
:PODNET-I-0123456789ab - [0:0]
-A FORWARD -s 10.88.0.0/16 -j ACCEPT
-A FORWARD -j PODNET-FORWARD
-A FORWARD -s 10.77.0.0/16 -j ACCEPT
-A OTHER-CHAIN -j RETURN
-A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A PODNET-FORWARD -o cali1 -j PODNET-I-0123456789ab
-A PODNET-I-0123456789ab -j DROP
COMMIT
# Completed on Sat Nov 28 08:32:29 2026
"""


def test_parse_save():
    table = parse_save(SAVED, "filter")
    assert list(table.chains) == ["INPUT", "FORWARD", "OUTPUT", "OTHER-CHAIN", "PODNET-FORWARD", OLD]
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
    assert ":PODNET-FORWARD - [0:0]" in payload and f"-F {OLD}" in payload and f"-X {OLD}" in payload
    assert payload.index(f"-F {OLD}") < payload.index(f"-X {OLD}")
    assert "-D FORWARD -j PODNET-FORWARD" in payload and payload[-2] == "-I FORWARD 1 -j PODNET-FORWARD"
    after = simulate(have, plan.ops)
    assert after.rules["FORWARD"] == ["-A FORWARD -j PODNET-FORWARD", "-A FORWARD -s 10.88.0.0/16 -j ACCEPT",
                                      "-A FORWARD -s 10.77.0.0/16 -j ACCEPT"]
    assert after.rules["OTHER-CHAIN"] == have.rules["OTHER-CHAIN"] and OLD not in after.chains
    assert {c: after.rules[c] for c in want} == want
    assert plan_chains(after, want, JUMP, "PODNET-", "overridden").ops == []
    assert plan.commands("filter")[0] == "iptables -t filter -F PODNET-FORWARD"
    assert "iptables -t filter -N " + ingress_chain("lab-node2-db") in plan.commands("filter")


def test_jump_past_the_end_of_a_short_chain_and_duplicates():
    have = parse_save(SAVED, "filter")
    jump = dict(JUMP, position=9)
    want = {"PODNET-FORWARD": have.rules["PODNET-FORWARD"], OLD: have.rules[OLD]}
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
    have.rules["OTHER-CHAIN"].append(f"-A OTHER-CHAIN -s 10.1.0.0/16 -j {OLD}")
    plan = plan_chains(have, {}, None, "PODNET-", "deleted")
    assert plan.problems == [f"chain {OLD} is still used by the rule '-A OTHER-CHAIN -s 10.1.0.0/16 -j "
                             f"{OLD}' (not podnet's): remove that rule first"]


def test_wanted_rules_are_checked():
    _, problems = normalize_chains({"OTHER": ["-j DROP"], "PODNET-A": ["-A PODNET-B -j DROP", "-j PODNET-C"],
                                    "PODNET-" + "X" * 30: []}, "PODNET-")
    assert any("does not start with the prefix" in p for p in problems)
    assert any("appends to PODNET-B, not PODNET-A" in p for p in problems)
    assert any("jumps to PODNET-C, which is not listed" in p for p in problems)
    assert any("not a valid chain name" in p for p in problems)
    want, _ = normalize_chains({"PODNET-A": ["-j   DROP"]}, "PODNET-")
    assert want == {"PODNET-A": ["-A PODNET-A -j DROP"]}


# --- Kubernetes' verdicts: a reference evaluator and the committed flow matrix -------------------------
#
# The reference below reads policies as Kubernetes' networking/v1 API documents them and imports nothing
# of podnet's; tests/unit/data/policy_flows.yaml holds its verdicts for every flow of a small cluster.
# Regenerate the verdicts (after changing the file's cluster or policies, and reviewing the result) with
#     PODNET_WRITE_FLOWS=1 .venv/bin/pytest -q tests/unit/test_policy.py -k committed_verdicts

FLOWS_FILE = Path(__file__).resolve().parent / "data" / "policy_flows.yaml"
FLOWS_HEADER = """\
# Kubernetes NetworkPolicy verdicts for every flow (source pod -> destination pod, per probe) of a small
# cluster under each scenario's podnet_network_policies. The verdicts were generated by the reference
# evaluator in tests/unit/test_policy.py (Kubernetes' documented semantics, nothing of podnet's) and
# reviewed; podnet's flow_allowed and its compiled iptables chains must agree with every one of them.
# Edit the cluster, probes or policies by hand; regenerate the verdicts with
#     PODNET_WRITE_FLOWS=1 .venv/bin/pytest -q tests/unit/test_policy.py -k committed_verdicts
"""


def k8s_policy_types(policy: dict) -> set[str]:
    """NetworkPolicySpec.policyTypes: "If this field is not specified, it will default based on the existence
    of ingress or egress rules; policies that contain an egress section are assumed to affect egress, and
    all policies (whether or not they contain an ingress section) are assumed to affect ingress."  The API
    server's defaulting (an empty list counts as unspecified): Ingress, plus Egress if len(egress) != 0."""
    given_types = policy.get("policy_types")
    if given_types:
        return {t.capitalize() for t in given_types}
    return {"Ingress", "Egress"} if policy.get("egress") else {"Ingress"}


def k8s_selects(match_labels: dict, labels: dict) -> bool:
    """matchLabels: every pair must be among the pod's labels; {} selects every pod."""
    return all(labels.get(key) == value for key, value in match_labels.items())


def k8s_peer_matches(peer: dict, pod: dict) -> bool:
    """NetworkPolicyPeer: podSelector (here: every pod, no namespaces) or ipBlock: "a particular CIDR ... that
    is allowed", "except is a slice of CIDRs that should not be included within an IPBlock"."""
    if "selector" in peer:
        return k8s_selects(peer["selector"], pod.get("labels") or {})
    address = ipaddress.ip_address(pod["address"].split("/")[0])
    return (address in ipaddress.ip_network(peer["cidr"])
            and not any(address in ipaddress.ip_network(block) for block in peer.get("except") or []))


def k8s_ports_match(ports: list | None, protocol: str, port: int | None) -> bool:
    """NetworkPolicyIngressRule.ports: "If this field is empty or missing, this rule matches all ports
    (traffic not restricted by port). If this field is present and contains at least one item, then this
    rule allows traffic only if the traffic matches at least one port in the list."  NetworkPolicyPort:
    protocol "defaults to TCP"; port "If this field is not provided, this matches all port names and
    numbers"; endPort: the range port..endPort."""
    if not ports:
        return True
    for entry in ports:
        if str(entry.get("protocol") or "TCP").upper() != protocol.upper():
            continue
        if entry.get("port") is None:
            return True
        if port is not None and int(entry["port"]) <= port <= int(entry.get("end_port") or entry["port"]):
            return True
    return False


def k8s_direction_allows(policies: list[dict], kind: str, subject: dict, peer: dict, protocol: str,
                         port: int | None) -> bool:
    """NetworkPolicySpec.ingress: "Traffic is allowed to a pod if there are no NetworkPolicies selecting the
    pod ... OR if the traffic matches at least one ingress rule across all of the NetworkPolicy objects whose
    podSelector matches the pod. If this field is empty then this NetworkPolicy does not allow any traffic";
    egress alike.  A rule's from/to: "If this field is empty or missing, this rule matches all sources"."""
    rules_key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    selecting = [p for p in policies
                 if kind in k8s_policy_types(p) and k8s_selects(p["selector"], subject.get("labels") or {})]
    if not selecting:
        return True
    return any((not (rule or {}).get(peers_key) or any(k8s_peer_matches(x, peer) for x in rule[peers_key]))
               and k8s_ports_match((rule or {}).get("ports"), protocol, port)
               for policy in selecting for rule in policy.get(rules_key) or [])


def k8s_allows(policies: list[dict], src: dict, dst: dict, protocol: str, port: int | None) -> bool:
    """A new connection from pod src to pod dst passes when src's egress and dst's ingress both allow it."""
    return (k8s_direction_allows(policies, "Egress", src, dst, protocol, port)
            and k8s_direction_allows(policies, "Ingress", dst, src, protocol, port))


def parse_probe(probe: str) -> tuple[str, int | None]:
    protocol, _, port = probe.partition("/")
    return protocol, int(port) if port else None


def load_flows() -> dict:
    return yaml.safe_load(FLOWS_FILE.read_text())


def cluster_nodes(cluster: dict) -> dict[str, dict]:
    """The file's cluster as the planner's per-node state (netns and host-side veth made up per pod)."""
    return {host: {"name": host, "pods": [
        {**p, "netns": f"lab-{host}-{p['name']}", "host_interface": f"cali{p['name']}"[:15]} for p in pods]}
        for host, pods in cluster.items()}


def reference_verdicts(data: dict, policies: list[dict]) -> dict[str, dict[str, str]]:
    pods = [p for pods in data["cluster"].values() for p in pods]
    out = {}
    for src in pods:
        for dst in pods:
            if src is not dst:  # a pod's traffic to itself never leaves it
                out[f"{src['name']} -> {dst['name']}"] = {
                    probe: "allow" if k8s_allows(policies, src, dst, *parse_probe(probe)) else "deny"
                    for probe in data["probes"]}
    return out


def flows_of(data: dict):
    """Every committed flow: (scenario, src (host, pod), dst (host, pod), probe, allowed)."""
    where = {p["name"]: host for host, pods in data["cluster"].items() for p in pods}
    for scenario in data["scenarios"]:
        for pair, verdicts in scenario["verdicts"].items():
            src, dst = pair.split(" -> ")
            for probe, verdict in verdicts.items():
                yield scenario, (where[src], src), (where[dst], dst), probe, verdict == "allow"


def test_committed_verdicts_are_the_reference_evaluators():
    data = load_flows()
    if os.environ.get("PODNET_WRITE_FLOWS"):
        for scenario in data["scenarios"]:
            scenario["verdicts"] = reference_verdicts(data, scenario["policies"])
        FLOWS_FILE.write_text(FLOWS_HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=None,
                                                            width=120))
        data = load_flows()
    for scenario in data["scenarios"]:
        assert scenario["verdicts"] == reference_verdicts(data, scenario["policies"]), scenario["name"]
    pods = sum(len(p) for p in data["cluster"].values())
    assert len(list(flows_of(data))) == len(data["scenarios"]) * pods * (pods - 1) * len(data["probes"])


def test_committed_verdicts_spot_checks():
    """A sample of the file read by hand against Kubernetes' documentation (so a wrong reference shows)."""
    verdicts = {s["name"]: s["verdicts"] for s in load_flows()["scenarios"]}
    assert set(verdicts["none"]["plain -> db-1"].values()) == {"allow"}
    defaulting = verdicts["defaulting"]
    assert defaulting["web-1 -> api-1"]["tcp/80"] == "deny"  # egress-only policy: api gets no ingress
    assert defaulting["api-1 -> db-2"] == {"icmp": "deny", "tcp/80": "deny", "tcp/5432": "allow",
                                           "tcp/9000": "deny", "udp/53": "deny", "tcp/53": "deny"}
    assert set(defaulting["batch -> plain"].values()) == {"allow"}  # egress: [] restricts nothing
    assert set(defaulting["plain -> batch"].values()) == {"deny"}  # ... but Ingress is defaulted
    assert defaulting["plain -> dns"]["udp/53"] == defaulting["plain -> dns"]["tcp/53"] == "allow"
    assert set(defaulting["dns -> plain"].values()) == {"deny"}  # Egress listed, no egress rules
    assert defaulting["dns -> db-1"]["udp/53"] == "deny"  # and dns may not even send to db-1
    assert defaulting["plain -> db-1"]["udp/53"] == "allow"  # cidr peer 10.244.2.0/24, udp any port
    assert defaulting["batch -> db-1"]["udp/53"] == "deny"
    assert defaulting["db-2 -> web-1"]["tcp/9000"] == "allow"  # {selector: {}}, the range 8000-9000
    assert defaulting["db-2 -> web-1"]["icmp"] == "deny"
    idioms = verdicts["ingress-idioms"]
    assert set(idioms["plain -> web-1"].values()) == {"allow"}  # ingress: [{}]
    assert set(idioms["web-1 -> plain"].values()) == {"deny"}  # ingress: []
    assert idioms["plain -> db-1"]["tcp/5432"] == "allow" and idioms["plain -> db-1"]["udp/53"] == "deny"
    assert set(idioms["api-2 -> dns"].values()) == {"allow"}  # ports: []
    assert set(idioms["plain -> batch"].values()) == {"deny"}  # its ingress: [{}] is ignored (types: Egress)
    assert set(idioms["batch -> web-1"].values()) == {"allow"}  # its egress rule (web-1 takes anyone)
    assert set(idioms["batch -> plain"].values()) == {"deny"}
    assert idioms["mon -> web-1"]["tcp/80"] == "allow"  # policy_types: [] with egress rules: Egress too
    assert idioms["mon -> web-1"]["icmp"] == "deny"
    excepts = verdicts["except"]
    assert excepts["web-1 -> db-1"]["tcp/5432"] == "allow"  # 10.244.0.0/16, not excepted
    assert excepts["plain -> db-1"]["tcp/5432"] == "deny"  # except 10.244.2.4/32
    assert excepts["batch -> db-1"]["tcp/5432"] == "allow"  # excepted 10.244.1.0/24, allowed by db-from-node2
    assert excepts["api-1 -> db-2"]["tcp/5432"] == "deny"  # api's egress excepts 10.244.2.0/24
    assert excepts["api-1 -> dns"]["udp/53"] == "allow" and excepts["api-1 -> dns"]["tcp/53"] == "deny"
    assert excepts["api-1 -> web-1"]["icmp"] == "deny"  # web's rule excepts 10.244.0.0/25 ...
    assert excepts["mon -> web-1"]["icmp"] == "allow"  # ... but its selector peer lets mon in
    assert excepts["db-1 -> web-1"]["icmp"] == "allow" and excepts["dns -> web-1"]["icmp"] == "deny"
    everywhere = verdicts["egress-everywhere"]
    assert everywhere["plain -> dns"]["udp/53"] == "allow"
    assert everywhere["plain -> db-1"]["tcp/5432"] == "deny"  # egress allows it, db's defaulted Ingress not
    assert sum(v == "allow" for flow in everywhere.values() for v in flow.values()) == 8


@dataclass(frozen=True)
class Packet:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    protocol: str
    port: int | None
    iif: str
    oif: str


def run_chain(chains: dict[str, list[str]], name: str, packet: Packet, depth: int = 0) -> str:
    """The verdict of user chain `name` for a new connection's first packet: "DROP" or "RETURN".  Knows
    only the words podnet emits, and fails on any other, so a new kind of rule cannot slip through."""
    assert depth < 8, "jump loop"
    for line in chains[name]:
        words = shlex.split(line)
        assert words[:2] == ["-A", name], line
        matches, target, index, modules = True, None, 2, set()
        while index < len(words):
            word, value = words[index], words[index + 1]
            index += 2
            if word in ("-s", "-d"):
                matches &= (packet.src if word == "-s" else packet.dst) in ipaddress.ip_network(value)
            elif word in ("-i", "-o"):
                matches &= (packet.iif if word == "-i" else packet.oif) == value
            elif word == "-p":
                assert value in ("tcp", "udp"), line
                matches &= packet.protocol == value
            elif word == "-m":
                assert value in ("tcp", "udp", "comment", "conntrack"), line
                assert value not in ("tcp", "udp") or f"-p {value}" in line, line
                modules.add(value)
            elif word == "--dport":
                assert modules & {"tcp", "udp"}, line
                low, _, high = value.partition(":")
                matches &= packet.port is not None and int(low) <= packet.port <= int(high or low)
            elif word == "--comment":
                assert "comment" in modules, line
            elif word == "--ctstate":
                assert "conntrack" in modules, line
                matches &= "NEW" in value.split(",")
            elif word == "-j":
                assert index == len(words), line
                target = value
            else:
                raise AssertionError(f"unknown word {word!r} in {line!r}")
        assert target is not None, line
        if not matches:
            continue
        if target in ("DROP", "RETURN"):
            return target
        assert target in chains, line
        if run_chain(chains, target, packet, depth + 1) == "DROP":
            return "DROP"
    return "RETURN"


def iptables_allows(out: dict, nodes: dict, src: tuple[str, str], dst: tuple[str, str], protocol: str,
                    port: int | None) -> bool:
    """Walk the compiled chains on the source's node, then (if another) the destination's: a packet leaves
    or enters a pod through its host-side veth, and crosses between nodes over the overlay device."""
    pods = {(h, p["name"]): p for h, node in nodes.items() for p in node["pods"]}
    sp, dp = pods[src], pods[dst]
    address = {key: ipaddress.ip_address(p["address"].split("/")[0]) for key, p in pods.items()}
    hops = [(src[0], sp["host_interface"], dp["host_interface"] if src[0] == dst[0] else "tunl0")]
    if src[0] != dst[0]:
        hops.append((dst[0], "tunl0", dp["host_interface"]))
    for host, iif, oif in hops:
        chains = out[host]["chains"]
        if not chains:
            continue  # no chain, no jump: FORWARD as if podnet were not there
        assert out[host]["jump"] == JUMP
        packet = Packet(address[src], address[dst], protocol, port, iif, oif)
        if run_chain(chains, FORWARD_CHAIN, packet) == "DROP":
            return False
    return True


def test_podnet_agrees_with_every_committed_verdict():
    """flow_allowed (what verify.yml expects) and the compiled chains, walked rule by rule: no difference."""
    data = load_flows()
    nodes = cluster_nodes(data["cluster"])
    differences, count = [], 0
    for scenario in data["scenarios"]:
        policies = validate_policies("calico-bgp", scenario["policies"], "node1")
        out = compile_("calico-bgp", scenario["policies"], copy.deepcopy(nodes))
        for flow_scenario, src, dst, probe, allowed in flows_of({**data, "scenarios": [scenario]}):
            protocol, port = parse_probe(probe)
            count += 1
            model = flow_allowed(policies, nodes, src, dst, protocol, port)
            kernel = iptables_allows(out, nodes, src, dst, protocol, port)
            if model != allowed or kernel != allowed:
                differences.append(f"{flow_scenario['name']}: {src[1]} -> {dst[1]} {probe}: Kubernetes "
                                   f"{allowed}, flow_allowed {model}, chains {kernel}")
    assert count == 2160
    assert differences == []


def test_the_chain_walker_sees_drops():
    """The walker itself: a policy's DROP is seen on either node, and foreign words are refused."""
    data = load_flows()
    nodes = cluster_nodes(data["cluster"])
    deny = [{"name": "deny", "selector": {"app": "db"}}]
    out = compile_("calico-bgp", deny, copy.deepcopy(nodes))
    assert not iptables_allows(out, nodes, ("node1", "web-1"), ("node2", "db-1"), "icmp", None)
    assert iptables_allows(out, nodes, ("node2", "db-1"), ("node1", "web-1"), "icmp", None)
    with pytest.raises(AssertionError, match="unknown word"):
        run_chain({"C": ["-A C ! -s 10.0.0.0/8 -j RETURN"]}, "C", Packet(
            ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), "tcp", 1, "a", "b"))


# --- properties: random policies, the reference, flow_allowed and the chains agree ---------------------

PROPERTY_NODES = cluster_nodes({
    "n1": [{"name": "a", "address": "10.1.0.2/24", "labels": {"app": "x"}},
           {"name": "b", "address": "10.1.0.130/24", "labels": {"app": "y"}}],
    "n2": [{"name": "c", "address": "10.1.1.2/24", "labels": {"app": "x", "t": "z"}},
           {"name": "d", "address": "10.1.1.3/24", "labels": {}}]})
LABEL_SETS = [{}, {"app": "x"}, {"app": "y"}, {"t": "z"}, {"app": "x", "t": "z"}]
CIDRS = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/23", "10.1.0.0/24", "10.1.1.0/24", "10.1.0.0/25",
         "10.1.0.128/25", "10.1.1.2/32", "10.1.1.2/31", "10.1.0.2/32"]


@st.composite
def ip_blocks(draw) -> dict:
    cidr = ipaddress.ip_network(draw(st.sampled_from(CIDRS)))
    inside = [c for c in CIDRS if ipaddress.ip_network(c).subnet_of(cidr)
              and ipaddress.ip_network(c).prefixlen > cidr.prefixlen]
    block: dict[str, Any] = {"cidr": str(cidr)}
    if inside:
        excepts = draw(st.lists(st.sampled_from(inside), max_size=3))
        if excepts or draw(st.booleans()):
            block["except"] = excepts
    return block


PEERS = st.one_of(st.builds(lambda s: {"selector": s}, st.sampled_from(LABEL_SETS)), ip_blocks())
PORTS = st.one_of(
    st.builds(lambda proto: {"protocol": proto}, st.sampled_from(["tcp", "udp"])),
    st.builds(lambda port, proto: {"port": port, "protocol": proto}, st.sampled_from([53, 80]),
              st.sampled_from(["tcp", "udp"])),
    st.just({"port": 50, "end_port": 80}))


@st.composite
def rules(draw, peers_key: str) -> dict:
    rule = {}
    if draw(st.booleans()):
        rule[peers_key] = draw(st.lists(PEERS, max_size=3))
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(PORTS, max_size=2))
    return rule


@st.composite
def policy_sets(draw) -> list[dict]:
    out = []
    for index in range(draw(st.integers(0, 3))):
        policy: dict[str, Any] = {"name": f"p{index}", "selector": draw(st.sampled_from(LABEL_SETS))}
        if draw(st.booleans()):
            policy["policy_types"] = draw(st.sampled_from([[], ["Ingress"], ["Egress"],
                                                           ["Ingress", "Egress"]]))
        for key, peers_key in (("ingress", "from"), ("egress", "to")):
            if draw(st.booleans()):
                policy[key] = draw(st.lists(rules(peers_key), max_size=2))
        out.append(policy)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets())
def test_random_policies_agree_with_the_reference(policies):
    parsed = validate_policies("calico-bgp", policies, "n1")
    out = compile_("calico-bgp", policies, copy.deepcopy(PROPERTY_NODES))
    pods = {(h, p["name"]): p for h, node in PROPERTY_NODES.items() for p in node["pods"]}
    for src in pods:
        for dst in pods:
            if src == dst:
                continue
            for protocol, port in (("icmp", None), ("tcp", 53), ("udp", 53), ("tcp", 80), ("tcp", 60)):
                want = k8s_allows(policies, pods[src], pods[dst], protocol, port)
                flow = (src, dst, protocol, port)
                assert flow_allowed(parsed, PROPERTY_NODES, src, dst, protocol, port) == want, flow
                assert iptables_allows(out, PROPERTY_NODES, src, dst, protocol, port) == want, flow
