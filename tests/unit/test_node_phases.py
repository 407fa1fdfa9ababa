"""Which of node_apply's remaining changes move traffic off a path it takes now (moves_paths): those make site.yml
split a node's run into prepare, switch and finish; anything else finishes in one run. The phases themselves run
against namespace labs in tests/integration/test_live_changes.py."""
from __future__ import annotations

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import KernelState
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import PODNET_RTPROTO, Route
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.ownership import RTPROT_BIRD
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_apply import (
    handed_to_bird,
    moves_paths,
)

NODE = {"routes": [{"dst": "10.244.1.0/24", "via": "10.244.1.0", "dev": "flannel.1", "onlink": True},
                   {"dst": "10.244.2.0/24", "via": "10.244.2.0", "dev": "flannel.1", "onlink": True}],
        "pods": [{"name": "pod1"}, {"name": "pod2"}]}


def step(*changes: tuple[str, dict], resource: str = "pod_route", name: str = "a step") -> dict:
    return {"resource": resource, "step": name, "changed": True,
            "changes": [{"op": op, "object": obj, "commands": []} for op, obj in changes]}


ROUTE = {"object": "route", "dst": "10.244.1.0/24", "via": "172.30.0.12", "dev": "eth0"}


@pytest.mark.parametrize("results", [
    [step(("update", ROUTE))],  # a peer's route moved to another device
    [step(("delete", {**ROUTE, "dst": "10.244.1.0/26"}))],  # a block route whose traffic a wanted /24 takes
    [step(("delete", {"object": "link", "name": "vxlan.calico", "alias": "podnet:vtep"}), resource="vxlan_fdb")],
    [step(("delete", {"object": "link", "name": "veth1", "alias": "podnet:pod:pod1"}), resource="pod_network")],
    [step(("update", {"object": "fdbentry", "mac": "0e:00:00:00:00:01", "dst": "172.30.0.99"}),
          resource="vxlan_fdb")],
    [{"resource": "bird", "step": "no BIRD where BGP is static or absent", "changed": True, "commands": []}],
], ids=["route-changed", "covered-route-removed", "old-vtep-removed", "pod-rewired", "peer-moved", "bird-stopped"])
def test_what_moves_traffic(results):
    assert moves_paths(results, NODE)


@pytest.mark.parametrize("results", [
    [],
    [step(("add", ROUTE), ("add", {"object": "link", "name": "cali1", "alias": "podnet:pod:pod1"}))],
    [step(("update", {"object": "link", "name": "flannel.1", "mtu": 1400}), resource="vxlan_fdb")],
    [step(("delete", {**ROUTE, "dst": "10.244.4.0/24"}),  # a removed node's route, entries and nothing else
          ("delete", {"object": "fdbentry", "mac": "0e:00:00:00:00:04", "dst": "172.30.0.14"}),
          ("delete", {"object": "neighbour", "dst": "10.244.4.0", "mac": "0e:00:00:00:00:04"}))],
    [step(("delete", {"object": "link", "name": "veth9", "alias": "podnet:pod:pod9"}),  # a removed pod
          ("delete", {"object": "route", "dst": "10.244.0.9/32", "dev": "veth9"}), resource="pod_network")],
    [{"resource": "bird", "step": "BIRD with podnet's configuration", "changed": True, "commands": []}],
], ids=["nothing", "only-added", "mtu-changed", "node-removed", "pod-removed", "bird-started"])
def test_what_does_not(results):
    assert not moves_paths(results, NODE)


BIRD_NODE = {"routes": [], "pods": [{"name": "pod1"}], "cluster_cidr": "10.244.0.0/16",
             "bgp": {"mode": "bird", "block": "10.244.0.0/24"}}


def test_static_routes_that_bird_takes_over_move_traffic():
    """A node changing to BGP on BIRD: its static routes to the peers' blocks go once BIRD's carry their traffic
    (the switch waits for that), so they are a move; a removed pod's /32 in the node's own block is not."""
    assert moves_paths([step(("delete", ROUTE))], BIRD_NODE)
    assert not moves_paths([step(("delete", {"object": "route", "dst": "10.244.0.9/32", "dev": "cali9"}))], BIRD_NODE)
    assert not moves_paths([step(("delete", ROUTE))], {**BIRD_NODE, "bgp": {"mode": "static", "block": "10.244.0.0/24"}})


def test_the_switch_to_bird_waits_for_a_bird_route_to_every_static_destination():
    """Which static routes BIRD takes over, and which of them it has no route to yet (the dump keeps podnet's route
    as the destination's object and every route's protocol beside it)."""
    static = [Route(dst=dst, via=via, dev="eth0") for dst, via in
              (("10.244.1.0/24", "172.30.0.12"), ("10.244.2.0/24", "172.30.0.13"), ("10.244.0.5/32", None))]
    state = KernelState(objects={r.key(): r for r in static},
                        route_protos={("route", None, "10.244.1.0/24"): {PODNET_RTPROTO, RTPROT_BIRD},
                                      ("route", None, "10.244.2.0/24"): {PODNET_RTPROTO},
                                      ("route", None, "10.244.0.5/32"): {PODNET_RTPROTO}})
    assert handed_to_bird(BIRD_NODE, state) == (["10.244.1.0/24", "10.244.2.0/24"], ["10.244.2.0/24"])
