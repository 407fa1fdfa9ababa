"""What podnet owns: devices by alias, routes by protocol, iptables rules by their exact tag, chains by their
exact name grammar, the route protocol's name by its file - and the refusals for everything else."""
from __future__ import annotations

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.iptables_chains import (
    Ownership,
    gathered,
    owns_chain,
    parse_save,
    plan_chains,
    podnet_view,
    simulate,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    ForeignObjectError,
    KernelState,
    plan,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    Address,
    FouPort,
    IpipInfo,
    Link,
    Route,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.ownership import (
    foreign_conflicts,
    foreign_fou_port,
    is_podnets_rt_protos,
    podnets_fou_port,
    rt_proto_claims,
    rt_protos_text,
    take_over_problems,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_apply import (
    wanted_devices,
    wanted_routes,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import PlanError, plan_cluster
from ansible_collections.podnet.dataplane.plugins.module_utils.resources import ipip_tunnel_resource
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.iptables_rules_resource import (
    RULE_TAG,
)


def state(*objects) -> KernelState:
    return KernelState(objects={o.key(): o for o in objects})


BRIDGE = Link(name="cni0", kind="bridge", mtu=1450, up=True, alias="podnet:bridge")


# --- devices and routes ------------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [
    Link(name="cni0", kind="bridge", mtu=1500, up=True, alias=None),          # the admin's bridge
    Link(name="cni0", kind="bridge", mtu=1500, up=True, alias="my-bridge"),   # an alias, not podnet's
    Link(name="cni0", kind="bridge", mtu=1500, up=True, alias="podnetx:bridge"),  # a look-alike prefix
    Link(name="cni0", kind="bond", mtu=1500, up=True, alias=None),            # another kind, same name
])
def test_a_foreign_device_is_never_changed_or_recreated(existing):
    have = state(existing, Address(dev="cni0", cidr="172.30.0.11/24"))
    want = [BRIDGE, Address(dev="cni0", cidr="10.244.0.1/24")]
    purge = lambda o: isinstance(o, Address) and o.dev == "cni0"  # noqa: E731  (what pod_network purges)
    with pytest.raises(ForeignObjectError) as raised:
        plan(want, have, purge)
    (problem,) = raised.value.problems
    assert problem.startswith("device cni0 exists and is not podnet's (a ")
    assert "podnet_take_over: [cni0]" in problem


def test_a_handed_over_device_is_marked_and_then_owned():
    foreign = Link(name="cni0", kind="bridge", mtu=1450, up=True, alias=None)
    changes = plan([BRIDGE], state(foreign), take_over=["cni0"])
    assert [(c.op, c.fields) for c in changes] == [("update", ["alias"])]
    assert plan([BRIDGE], state(BRIDGE)) == []


def test_podnets_own_device_and_the_kernels_fallback_tunnel_need_no_hand_over():
    assert plan([BRIDGE], state(BRIDGE)) == []
    tunl0 = Link(name="tunl0", kind="ipip", mtu=1480, up=False, alias=None)
    changes = plan([Link(name="tunl0", kind="ipip", mtu=1480, up=True, alias="podnet:tunnel")], state(tunl0))
    assert [c.op for c in changes] == ["update"]


def test_objects_inside_pod_namespaces_are_podnets():
    have = state(Link(name="eth0", kind="veth", mtu=1500, up=False, netns="web"))
    assert foreign_conflicts([Link(name="eth0", kind="veth", mtu=1450, up=True, netns="web")], have.objects) == []


@pytest.mark.parametrize("proto", [2, 3, 4, 12, 80])  # kernel, boot, static, bird, felix
def test_a_foreign_route_with_a_wanted_destination_is_not_replaced(proto):
    have = state(Route(dst="10.244.1.0/24", via="172.30.0.99", proto=proto))
    want = [Route(dst="10.244.1.0/24", via="172.30.0.12")]
    with pytest.raises(ForeignObjectError) as raised:
        plan(want, have)
    assert raised.value.problems == [
        f"route 10.244.1.0/24 exists and is not podnet's (proto {proto}, not 152 'podnet'): podnet will not "
        "replace it. Remove it, or hand it over with podnet_take_over: [10.244.1.0/24]"]
    assert [c.op for c in plan(want, have, take_over=["10.244.1.0/24"])] == ["update"]
    # the routes of podnet's own BIRD count as podnet's where the caller says so
    assert foreign_conflicts(want, have.objects, also_owned_protos=(proto,)) == []


def test_every_problem_is_named_and_nothing_is_planned():
    have = state(Link(name="cni0", kind="bridge", alias=None), Link(name="flannel.1", kind="vxlan", alias=None),
                 Route(dst="0.0.0.0/0", via="172.30.0.1", proto=4))
    want = [BRIDGE, Link(name="flannel.1", kind="vxlan", alias="podnet:vtep"),
            Route(dst="0.0.0.0/0", via="10.244.0.1")]
    problems = foreign_conflicts(want, have.objects)
    assert [p.split(" exists")[0] for p in problems] == ["device cni0", "device flannel.1", "route 0.0.0.0/0"]


@pytest.mark.parametrize("values, wrong", [
    ("br0", "must be a list"),
    (["br0\n"], "characters Linux does not allow"),
    (["10.244.1.1/24"], "without host bits"),
    (["10.244.1.0/24 dev x"], "not an IPv4 route destination"),
    ([["br0"]], "must be a device name or a route destination"),
])
def test_take_over_values_are_checked(values, wrong):
    (problem,) = take_over_problems(values)
    assert problem.startswith("podnet_take_over") and wrong in problem


def test_take_over_is_checked_by_the_planner_and_reaches_the_node():
    hosts = ["a", "b"]
    hostvars = {"a": {"podnet_node_ip": "192.168.0.4", "podnet_backend": "flannel-vxlan"},
                "b": {"podnet_node_ip": "192.168.0.16", "podnet_backend": "flannel-vxlan"}}
    hostvars["a"]["podnet_take_over"] = ["br0", "10.244.9.0/24", "default"]
    cluster = plan_cluster(hosts, hostvars)
    assert cluster["nodes"][hosts[0]]["take_over"] == ["br0", "10.244.9.0/24", "default"]
    assert cluster["nodes"][hosts[1]]["take_over"] == []
    hostvars[hosts[1]]["podnet_take_over"] = ["eth0; reboot"]
    with pytest.raises(PlanError) as raised:
        plan_cluster(hosts, hostvars)
    assert any(p.startswith(f"host {hosts[1]}: podnet_take_over[0]: ") for p in raised.value.problems)


def test_node_apply_checks_every_device_and_route_the_backend_touches():
    node = {"pod_mode": "routed", "vtep": {"name": "vxlan.calico"}, "tunnel": None, "bridge": None,
            "pods": [{"host_interface": "cali0123456789a", "address": "10.244.1.2"}],
            "routes": [{"dst": "10.244.2.0/26"}, {"dst": "default"}]}
    assert wanted_devices(node) == ["vxlan.calico", "cali0123456789a"]
    assert wanted_routes(node) == ["10.244.2.0/26", "0.0.0.0/0", "10.244.1.2/32"]


# --- the route protocol's name ------------------------------------------------------------------------


def test_the_protocol_name_file_and_other_claims(tmp_path):
    folder = tmp_path / "iproute2" / "rt_protos.d"
    folder.mkdir(parents=True)
    mine = folder / "podnet.conf"
    mine.write_text(rt_protos_text())
    assert rt_protos_text() == "# podnet:rt_protos\n152\tpodnet\n"
    assert is_podnets_rt_protos(mine.read_text()) and not is_podnets_rt_protos("152 podnet\n")
    assert rt_proto_claims(str(mine)) == []
    (tmp_path / "iproute2" / "rt_protos").write_text("# reserved\n4\tstatic\n0x98\tmyrouting  # mine\n")
    (folder / "other.conf").write_text("152 podnet\n153\tother\n")  # the same name elsewhere is no claim
    (folder / "notes.txt").write_text("152 notes\n")  # not a *.conf file: iproute2 does not read it
    assert rt_proto_claims(str(mine)) == [(f"{tmp_path}/iproute2/rt_protos", "myrouting")]


# --- iptables ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag, ours", [
    ("podnet:0123456789ab", True),
    ("podnet:legacy-vpn", False),
    ("podnet:0123456789AB", False),
    ("podnet:0123456789abc", False),
    ("podnet", False),
    ("my podnet:0123456789ab", False),
])
def test_rule_tags_are_matched_exactly(tag, ours):
    assert bool(RULE_TAG.fullmatch(tag)) is ours


@pytest.mark.parametrize("chain, ours", [
    ("PODNET-FORWARD", True),
    ("PODNET-I-0123456789ab", True),
    ("PODNET-E-0123456789ab", True),
    ("PODNET-MINE", False),
    ("PODNET-I-0123456789AB", False),
    ("PODNET-I-0123456789a", False),
    ("PODNET-FORWARD2", False),
    ("PODNET-i-0123456789ab", False),
    ("XPODNET-FORWARD", False),
])
def test_chains_are_podnets_by_their_exact_name_grammar(chain, ours):
    assert owns_chain(chain) is ours


SAVED = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:PODNET-FORWARD - [0:0]
:PODNET-I-0123456789ab - [0:0]
:PODNET-MINE - [0:0]
-A FORWARD -j PODNET-MINE
-A FORWARD -j PODNET-FORWARD
-A PODNET-FORWARD -o cali1 -j PODNET-I-0123456789ab
-A PODNET-I-0123456789ab -j DROP
-A PODNET-MINE -s 10.9.0.0/16 -j DROP
COMMIT
"""


@pytest.mark.parametrize("state", ["overridden", "deleted"])
def test_a_users_chain_that_shares_the_prefix_and_its_jump_survive(state):
    have = parse_save(SAVED, "filter")
    plan_ = plan_chains(have, {}, None, "PODNET-", state)
    assert plan_.problems == []
    after = simulate(have, plan_.ops)
    assert after.rules["PODNET-MINE"] == ["-A PODNET-MINE -s 10.9.0.0/16 -j DROP"]
    assert after.rules["FORWARD"] == ["-A FORWARD -j PODNET-MINE"]
    assert "PODNET-FORWARD" not in after.chains and "PODNET-I-0123456789ab" not in after.chains
    assert "PODNET-MINE" not in podnet_view(have, "PODNET-")[0] and "PODNET-MINE" not in gathered(have, "PODNET-")["chains"]


def test_a_chain_the_caller_lists_by_name_is_managed():
    have = parse_save(SAVED, "filter")
    listed = {"PODNET-MINE": ["-A PODNET-MINE -j RETURN"]}
    after = simulate(have, plan_chains(have, listed, None, "PODNET-", "merged").ops)
    assert after.rules["PODNET-MINE"] == ["-A PODNET-MINE -j RETURN"]
    assert Ownership("PODNET-", listed).owns("PODNET-MINE") and not Ownership("PODNET-").owns("PODNET-MINE")


def test_podnet_jumps_only_to_its_own_chains():
    have = parse_save(SAVED, "filter")
    jump = {"table": "filter", "chain": "FORWARD", "target": "PODNET-MINE", "position": 1}
    assert plan_chains(have, {}, jump, "PODNET-", "merged").problems == [
        "jump: target PODNET-MINE is not podnet's (not named like podnet's chains, not listed in chains): podnet "
        "jumps only to its own chains"]


SENDER = Link(name="flannel0", kind="ipip", alias="podnet:tunnel", ipip=IpipInfo(local="10.0.0.1", encap_dport=8285))


def test_a_fou_port_is_podnets_only_while_a_device_of_podnets_sends_to_it():
    port = FouPort(port=8285)
    have = {port.key(): port}
    assert foreign_fou_port(8285, {}) is None and foreign_fou_port(None, have) is None  # absent, or not wanted
    assert "FOU port 8285 exists and is not podnet's" in foreign_fou_port(8285, have)
    assert foreign_fou_port(8285, have | {SENDER.key(): SENDER}) is None
    for other in (Link(name="fou1", kind="ipip", alias="someone", ipip=IpipInfo(encap_dport=8285)),  # not podnet's
                  Link(name="flannel0", kind="ipip", alias="podnet:tunnel", ipip=IpipInfo(encap_dport=9000)),
                  Link(name="flannel0", kind="ipip", alias="podnet:tunnel", ipip=IpipInfo(encap_dport=8285),
                       netns="pod")):  # sends to it, but from another namespace
        assert foreign_fou_port(8285, have | {other.key(): other}), other


@pytest.mark.parametrize("obj, port", [
    (SENDER, 8285),
    (Link(name="flannel0", kind="ipip", alias="podnet:tunnel", ipip=IpipInfo(local="10.0.0.1")), None),
    (Link(name="tunl0", kind="ipip", alias="podnet:tunnel"), None),  # the fallback: no ipip info
    (Link(name="fou1", kind="ipip", alias="someone", ipip=IpipInfo(encap_dport=8285)), None),
    (Link(name="flannel0", kind="ipip", alias="podnet:tunnel", ipip=IpipInfo(encap_dport=8285), netns="pod"), None),
    (FouPort(port=8285), None),
    (None, None),  # no device of that name
])
def test_the_fou_port_a_device_makes_podnets(obj, port):
    assert podnets_fou_port(obj) == port


class FailJson(Exception):
    pass


class StubModule:
    check_mode = False

    def __init__(self, **params):
        self.params = {key: spec.get("default") for key, spec in ipip_tunnel_resource.ARGUMENT_SPEC.items()} | params

    def fail_json(self, msg, **extra):
        raise FailJson(msg)


def ipip_tunnel(**params) -> ipip_tunnel_resource.IpipTunnel:
    resource = ipip_tunnel_resource.IpipTunnel(StubModule(**params))
    assert resource.problems() == []
    return resource


def test_ipip_tunnel_takes_back_the_fou_port_by_the_same_rule():
    mine, other = FouPort(port=8285), FouPort(port=9000)
    have = state(SENDER, mine, other)
    planned = ipip_tunnel(name="flannel0", state="deleted").plan(have)
    assert [(c.op, c.have) for c in planned] == [("delete", mine), ("delete", SENDER)]
    foreign = Link(name="flannel0", kind="ipip", alias=None, ipip=IpipInfo(local="10.0.0.1", encap_dport=8285))
    assert ipip_tunnel(name="flannel0", state="deleted").plan(state(foreign, mine)) == []
    with pytest.raises(FailJson, match="FOU port 9000 exists and is not podnet's"):
        ipip_tunnel(name="flannel0", fou_port=9000, local="10.0.0.1", mtu=1472).plan(have)
