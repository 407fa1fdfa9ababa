"""modulekit runs node_apply as site.yml's node role runs it: the same options, and on a lab that site.yml
converged, a modulekit run changes nothing. The guest's IPIP tests (test_ipip_compositions.py) stand on it."""
from __future__ import annotations

import json

import pytest
import yaml

from .labkit import REPO_ROOT, Lab, netns_json
from .modulekit import (
    LAB_MODULE_PACKAGE,
    NODE_ROLE,
    ModuleLab,
    lab_up_args,
    node_args,
    plan,
    run_module,
    run_node_apply,
)
from .test_calico_ipip import NODES

pytestmark = pytest.mark.integration


def task_options(tasks_file: str) -> set[str]:
    tasks = yaml.safe_load((NODE_ROLE / "tasks" / tasks_file).read_text())
    return {key for task in tasks for key in task.get("podnet.dataplane.node_apply") or {}}


def test_node_apply_gets_the_options_the_node_role_gives():
    """Option for option (site.yml gives no pod_mode; BIRD's option is only for calico-bgp with BIRD)."""
    lab = Lab(prefix="modulekit")
    assert set(node_args(lab, "node1", {"name": "node1"})) == task_options("main.yml") - {"pod_mode", "bird"}
    assert set(node_args(lab, "node1", None, state="deleted")) == task_options("reset.yml")


@pytest.mark.parametrize("variables", [{"podnet_backend": "canal", "podnet_transport": "host-gw"}])
def test_a_modulekit_run_after_site_yml_changes_nothing(variables):
    with Lab(extra_vars=variables) as lab:
        converged = lab.run(REPO_ROOT / "playbooks" / "site.yml")
        assert converged.rc == 0, converged.output
        nodes = plan(lab, **variables)
        for host in NODES:
            check = run_node_apply(lab, host, node_args(lab, host, nodes[host]), check=True)
            assert not check["changed"], [r for r in check["results"] if r.get("changed")]
            done = run_node_apply(lab, host, node_args(lab, host, nodes[host]))
            assert not done["changed"] and done["kernel_reads"][""] == 1, done["kernel_reads"]


def test_the_lab_module_gets_the_arguments_lab_up_yml_gives():
    """On a lab that lab_up.yml built, netns_lab with modulekit's arguments has nothing to do; a ModuleLab is that
    same lab (namespaces, addresses, routes) and leaves nothing behind."""
    with Lab() as built:
        again = run_module(built, None, "netns_lab", lab_up_args(built), check=True, package=LAB_MODULE_PACKAGE)
        assert not again["changed"], again
        by_playbook = {ns.removeprefix(built.prefix): netns_state(ns) for ns in built.namespaces()}
    module_lab = ModuleLab()
    with module_lab:
        by_module = {ns.removeprefix(module_lab.prefix): netns_state(ns) for ns in module_lab.namespaces()}
    assert by_module == by_playbook
    assert module_lab.namespaces() == []


def netns_state(ns: str) -> tuple:
    """A lab namespace's devices, addresses and routes, without what differs between two labs (ifindex, MACs) or
    with time (a bridge's operstate turns UP once a port forwards: set up or not is the flag)."""
    links = sorted((link["ifname"], "UP" in link["flags"], link.get("link_type")) for link in netns_json(ns, "link", "show"))
    addresses = sorted((a["ifname"], i["local"], i["prefixlen"]) for a in netns_json(ns, "addr", "show")
                       for i in a["addr_info"] if i["family"] == "inet")
    routes = sorted(json.dumps(r, sort_keys=True) for r in netns_json(ns, "route", "show"))
    return links, addresses, routes
