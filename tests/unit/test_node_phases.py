"""Which of node_apply's remaining changes move traffic off a path it takes now (moves_paths): those make site.yml
split a node's run into prepare, switch and finish; anything else finishes in one run. The phases themselves run
against namespace labs in tests/integration/test_live_changes.py."""
from __future__ import annotations

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_apply import moves_paths

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
