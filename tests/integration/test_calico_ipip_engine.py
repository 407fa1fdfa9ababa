"""calico-ipip through podnet's engine alone, on the three-node lab, in a kernel with the ipip module.

The Ansible-driven calico-ipip tests (test_calico_ipip.py) need ~50 min in the QEMU guest under
software emulation, where every module start is a Python start. This one covers the same kernel state
in a few minutes there: it plans the lab with the planner (`plan_cluster`), builds each node's objects
with the builders the modules use (tunl0, peer routes, routed pods, felix's sysctls), records them as
the modules do (persist.py), and converges every node with `boot_apply` run inside the node's namespace
(from the warm node_runner) — the engine's gather / plan / apply, the same code the modules call. Check mode is `boot_apply --check`.

Runs inside the guest that test_ipip_vm.py boots (``pytest -m ipip``); skipped where ipip is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    pod_objects,
    proxy_arp_objects,
    route_objects,
    sysctl_objects,
    tunnel_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import save
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import plan_cluster

from .labkit import Lab
from .modulekit import shared_lab
from .node_runner import node_runner
from .test_calico_ipip import (
    FOREIGN_ROUTE,
    GUEST_ONLY,
    IPIP_OVERHEAD,
    NODES,
    PODS,
    TUNNEL,
    assert_ipip_state,
    assert_pods_reach_each_other,
    foreign_state,
    kernel_state,
)

pytestmark = GUEST_ONLY
BOOT_APPLY = "ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply"


def state_dir(lab: Lab, host: str) -> str:
    return f"/run/podnet-lab/{lab.prefix}/{host}/engine-state"


def record_plan(lab: Lab) -> None:
    """Plan the lab as site.yml would and record each node's objects as the modules record theirs."""
    hostvars = {host: {"podnet_node_ip": ip, "podnet_backend": "calico-ipip",
                       "podnet_pods": [{"name": pod} for pod in PODS],
                       "podnet_pod_netns_prefix": f"{lab.prefix}-{host}-"} for host, ip in NODES.items()}
    cluster = plan_cluster(list(NODES), hostvars)
    leases = Path(f"/run/podnet-lab/{lab.prefix}/leases.json")
    leases.parent.mkdir(parents=True, exist_ok=True)
    leases.write_text(json.dumps(cluster["leases"]))
    for host, node in cluster["nodes"].items():
        mtu = lab.json(host, "link", "show", "eth0")[0]["mtu"] - IPIP_OVERHEAD
        objects = sysctl_objects(node["sysctls"]) + tunnel_objects(dict(node["tunnel"], mtu=mtu))
        objects += route_objects(node["routes"])
        for pod in node["pods"]:
            node_side, pod_side = pod_objects(pod, None, mtu, "routed")
            objects += node_side + pod_side + proxy_arp_objects(pod["host_interface"])
        save(state_dir(lab, host), "calico-ipip", objects)


def converge(lab: Lab, host: str, check: bool = False) -> list[str]:
    """boot_apply in the node's namespace; the commands it ran (or, with check, would run)."""
    rc, stdout, stderr = node_runner().run(lab.node_ns(host), BOOT_APPLY,
                                           [state_dir(lab, host)] + (["--check"] if check else []), 600)
    assert rc == 0, stdout + stderr
    return [line for line in stdout.splitlines() if not line.startswith(("podnet-apply:", "#"))]


@pytest.fixture(scope="module")
def engine_lab(guest_lab):
    with shared_lab(guest_lab) as lab:
        record_plan(lab)
        yield lab


def test_check_then_converge_then_nothing_to_do(engine_lab):
    lab = engine_lab
    before = kernel_state(lab)
    preview = {host: converge(lab, host, check=True) for host in NODES}
    assert all(preview.values()), preview
    assert kernel_state(lab) == before  # check mode changed nothing
    done = {host: converge(lab, host) for host in NODES}
    # On a fresh node the pods' ends of the veths only appear during the run, so the preview of the
    # pod side is coarser there (mtu + up instead of up); the node side must match exactly. Exact
    # previews of every kind are asserted on the drifted lab below.
    assert {h: [c for c in done[h] if not c.startswith("ip netns exec ")] for h in NODES} == \
        {h: [c for c in preview[h] if not c.startswith("ip netns exec ")] for h in NODES}
    assert_ipip_state(lab)
    assert_pods_reach_each_other(lab)
    assert {host: converge(lab, host, check=True) for host in NODES} == {host: [] for host in NODES}
    assert {host: converge(lab, host) for host in NODES} == {host: [] for host in NODES}


def test_drift_is_repaired_and_foreign_state_kept(engine_lab):
    lab = engine_lab
    lab.exec("node2", ["ip", "route", "add", FOREIGN_ROUTE, "via", "172.30.0.1", "dev", "eth0", "proto", "static"],
             check=True)
    lab.exec("node3", ["ip", "link", "add", "foreign0", "type", "dummy"], check=True)
    foreign = foreign_state(lab)
    subnets = json.loads(Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text())
    lab.exec("node2", ["ip", "route", "del", subnets["node1"], "proto", "152"], check=True)
    lab.exec("node3", ["ip", "link", "set", TUNNEL, "mtu", "1400"], check=True)
    lab.exec("node3", ["ip", "addr", "flush", "dev", TUNNEL], check=True)
    before = kernel_state(lab)
    preview = {host: converge(lab, host, check=True) for host in NODES}
    assert kernel_state(lab) == before
    assert preview["node1"] == [] and preview["node2"] and preview["node3"], preview
    assert {host: converge(lab, host) for host in NODES} == preview
    assert_ipip_state(lab)
    assert_pods_reach_each_other(lab)
    assert foreign_state(lab) == foreign
