"""A node's run without a controller: podnet's node_apply module executed as Ansible executes it on a node,
for the namespace lab inside the QEMU guest.

Under the guest's software emulation a site.yml run costs 7-8 min, nearly all of it Ansible's controller
and module start-up. What the run does on a node is one node_apply module: the planner (`plan_cluster`,
which the `podnet.dataplane.plan` filter calls) gives the node its state, the node role passes it with its
options, and the module runs in the node. This kit does those three steps and nothing else: it plans with
the planner, builds node_apply's arguments as roles/node/tasks/main.yml builds them for site.yml on the lab
inventory (inventories/lab), and runs the module in the node's namespace with its arguments in a JSON file
as `python node_apply.py args.json` (Ansible's way of running a module by hand) does - the module's own
main, argument spec, lock and result - from a warm Python that forks per run (node_runner.py), since a
Python start that imports the module costs ~5 s under the guest's emulation.

test_modulekit.py (on this machine) keeps them in step with the role: the same options, and no change
after a site.yml run.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import yaml
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import PODNET_RTPROTO
from ansible_collections.podnet.dataplane.plugins.module_utils.node.render import node_commands
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import plan_cluster

from .labkit import REPO_ROOT, Lab, LabError, remove_netns
from .node_runner import node_runner

COLLECTION = REPO_ROOT / "collections" / "ansible_collections" / "podnet" / "dataplane"
MODULE_PACKAGE = "ansible_collections.podnet.dataplane.plugins.modules"
LAB_MODULE_PACKAGE = "ansible_collections.podnet.lab.plugins.modules"
LAB_GROUP_VARS = yaml.safe_load((REPO_ROOT / "inventories" / "lab" / "group_vars" / "podnet_nodes.yml").read_text())
NODE_ROLE = COLLECTION / "roles" / "node"
LAB_HOSTS = yaml.safe_load((REPO_ROOT / "inventories" / "lab" / "hosts.yml").read_text())["podnet_nodes"]["hosts"]
# The lab inventory's podnet_cluster_cidr (group_vars), which the planner and reset's `networks` use.
LAB_CLUSTER_CIDR = LAB_GROUP_VARS["podnet_cluster_cidr"]
MODULE_TIMEOUT = 900  # one module start under software emulation takes seconds; a converge, a minute at most


def lab_hostvars(lab: Lab, **variables: Any) -> dict[str, dict[str, Any]]:
    """The planner's view of the lab inventory (hosts.yml, group_vars) with these variables set for every
    node, as `-e` gives them."""
    return {host: {**values, "podnet_cluster_cidr": LAB_CLUSTER_CIDR,
                   "podnet_pod_netns_prefix": f"{lab.prefix}-{host}-",
                   "podnet_wireguard_key_dir": f"{lab_state_dir(lab, host)}/wireguard", **variables}
            for host, values in LAB_HOSTS.items()}


def plan(lab: Lab, **variables: Any) -> dict[str, dict[str, Any]]:
    """Each node's planned state, with the subnets leased on the lab's lease file as the plan role keeps it."""
    leases_file = Path(lab_state_dir(lab)) / "leases.json"
    leases = json.loads(leases_file.read_text()) if leases_file.exists() else {}
    cluster = plan_cluster(list(LAB_HOSTS), lab_hostvars(lab, **variables), leases)
    leases_file.parent.mkdir(parents=True, exist_ok=True)
    leases_file.write_text(json.dumps(cluster["leases"]))
    return cluster["nodes"]


def lab_state_dir(lab: Lab, host: str | None = None) -> str:
    base = f"/run/podnet-lab/{lab.prefix}"
    return f"{base}/{host}" if host else base


def role_defaults() -> dict[str, Any]:
    """roles/node/defaults/main.yml with its own templates rendered (podnet_pod_sysctls' rp_filter)."""
    defaults = yaml.safe_load((NODE_ROLE / "defaults" / "main.yml").read_text())
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)

    def rendered(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rendered(v) for k, v in value.items()}
        if isinstance(value, str) and "{{" in value:
            return yaml.safe_load(environment.from_string(value).render(defaults))
        return value
    return rendered(defaults)


def node_args(lab: Lab, host: str, node: dict[str, Any] | None, state: str = "overridden") -> dict[str, Any]:
    """node_apply's arguments for this lab node as site.yml's node role passes them (reset.yml's with state
    deleted): the lab inventory's per-node paths, the role's defaults, the node lock, the node's policy."""
    defaults, base = role_defaults(), lab_state_dir(lab, host)
    args: dict[str, Any] = {
        "persist_dir": f"{base}/state",
        "subnet_env": f"{base}/flannel/subnet.env",
        "proxy_arp_state_file": f"{base}/proxy_arp.json",
        "rt_protos_file": f"{base}/iproute2/rt_protos.d/podnet.conf",
        "node_record": f"{base}/node.json",
        "bird_dir": f"{base}/bird",
        "birdc": defaults["podnet_birdc_binary"],
        "other_vteps": ["flannel.1", "vxlan.calico", "vxlan-6784"],  # the plan role's podnet_other_vteps
        "lock": {"owner": {"run": f"modulekit-{os.getpid()}"}, "path": f"{base}/node.lock", "wait_timeout": 600},
        "wireguard_key_dir": f"{base}/wireguard",
    }
    if state == "deleted":
        # reset.yml adds flannel.<podnet_vxlan_vni> to the VTEPs it removes: flannel.1, listed already
        return {**args, "state": "deleted", "bridge": "cni0", "networks": [LAB_CLUSTER_CIDR]}
    assert node is not None
    if (node.get("bgp") or {}).get("mode") == "bird":
        raise ValueError("BIRD's configuration comes from the node role's template: run site.yml for BIRD")
    return {**args, "node": node, "pod_sysctls": defaults["podnet_pod_sysctls"], "phase": defaults["podnet_node_phase"],
            "policy": node.get("policy") or {}, "wireguard_keys": {}}


def render_options(lab: Lab, host: str) -> dict[str, Any]:
    """The node options render.yml gives the render (podnet_render_options), for this lab node."""
    args = node_args(lab, host, {})
    keys_file = Path(lab_state_dir(lab)) / "wireguard_keys.json"
    return {key: args.get(key) for key in ("subnet_env", "rt_protos_file", "node_record", "pod_sysctls", "bird_dir")} | {
        "bird": None, "wireguard_keys": json.loads(keys_file.read_text()) if keys_file.exists() else {}}


def run_module(lab: Lab, host: str | None, module: str, args: dict[str, Any], check: bool = False,
               package: str = MODULE_PACKAGE, may_fail: bool = False) -> dict[str, Any]:
    """A podnet module run in the node's namespace (host None: on the controller), as Ansible runs it there
    (`python <module> args.json`, from the warm node_runner); its result (a failure raises, unless may_fail)."""
    invocation = dict(args, _ansible_check_mode=check)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"{module}-", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": invocation}, handle)
    try:
        rc, stdout, stderr = node_runner().run(lab.node_ns(host) if host else None, f"{package}.{module}",
                                               [handle.name], MODULE_TIMEOUT)
    finally:
        os.unlink(handle.name)
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{module} on {host or 'the controller'} printed no result (rc {rc}):\n{stdout}\n"
                             f"{stderr}") from None
    assert may_fail or not result.get("failed"), (host, module, result.get("msg"), result.get("step"))
    return result


def run_node_apply(lab: Lab, host: str, args: dict[str, Any], check: bool = False) -> dict[str, Any]:
    """node_apply run in the node's namespace, as the module runs there; its result (a failure raises)."""
    return run_module(lab, host, "node_apply", args, check)


def wireguard_keys(lab: Lab, nodes: dict[str, dict[str, Any]], check: bool = False) -> dict[str, Any]:
    """What the node role does before node_apply where the transport is WireGuard: each node's key made on the
    node (podnet.dataplane.wireguard_key), and every public key, recorded as the role records them (the lab's
    wireguard_keys.json, which render_options reads). The module's results by node ({} without WireGuard)."""
    results = {}
    for host, node in nodes.items():
        w = node.get("wireguard")
        if w:
            results[host] = run_module(lab, host, "wireguard_key", {
                "device": w["name"], "key_dir": w["key_dir"], "epoch": w["key_epoch"]}, check=check)
    keys_file = Path(lab_state_dir(lab)) / "wireguard_keys.json"
    if results and not check:
        recorded = json.loads(keys_file.read_text()) if keys_file.exists() else {}
        keys_file.write_text(json.dumps(recorded | {h: r["public_key"] for h, r in results.items()}))
    return results


def converge(lab: Lab, variables: dict[str, Any], check: bool = False) -> dict[str, dict[str, Any]]:
    """Every node's run, as site.yml with these variables gives it; the results by node."""
    nodes = plan(lab, **variables)
    keys = {h: r["public_key"] for h, r in wireguard_keys(lab, nodes, check).items() if r.get("public_key")}
    return {host: run_node_apply(lab, host, node_args(lab, host, nodes[host]) | {"wireguard_keys": keys},
                                 check=check)
            for host in LAB_HOSTS}


def changed(results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Whether each node's run changed anything, by node (`converge`'s results)."""
    return {host: result["changed"] for host, result in results.items()}


def build_from_scripts(lab: Lab, variables: dict[str, Any], scripts: Path) -> None:
    """Each node made by its rendered script alone (render.yml's filter, with render.yml's options; the scripts
    are kept in `scripts`) on a node as fresh as the lab makes it: the pods' namespaces are the script's to make."""
    nodes = plan(lab, **variables)
    for host, values in LAB_HOSTS.items():
        script = scripts / f"{host}.sh"
        lines = node_commands(nodes[host], os.uname().release, render_options(lab, host))
        script.write_text("#!/bin/sh\nset -eu\n" + "\n".join(lines) + "\n")
        for pod in values["podnet_pods"]:
            if Path(f"/run/netns/{lab.pod_ns(host, pod['name'])}").exists():
                subprocess.run(["ip", "netns", "del", lab.pod_ns(host, pod["name"])], check=True)
        built = subprocess.run(["nsenter", f"--net=/run/netns/{lab.node_ns(host)}", "sh", str(script)],
                               capture_output=True, text=True, timeout=300, check=False)
        assert built.returncode == 0, (host, built.stderr, script.read_text())


def reset_nodes(lab: Lab) -> None:
    """Every node as reset.yml leaves it: nothing of podnet's left (its routes, checked here, last of all)."""
    for host in LAB_HOSTS:
        run_node_apply(lab, host, node_args(lab, host, None, state="deleted"))
        assert lab.json(host, "route", "show", "table", "all", "proto", str(PODNET_RTPROTO)) == [], host


def lab_up_args(lab: Lab) -> dict[str, Any]:
    """podnet.lab.netns_lab's arguments as lab_up.yml gives them on the lab inventory (a namespaces lab)."""
    return {"prefix": lab.prefix, "underlay_cidr": LAB_GROUP_VARS["podnet_lab_underlay_cidr"],
            "gateway": LAB_GROUP_VARS["podnet_lab_gateway"], "state": "present",
            "nodes": [{"name": lab.node_ns(host), "address": str(values["podnet_node_ip"]),
                       "pods": [lab.pod_ns(host, pod["name"]) for pod in values.get("podnet_pods") or []]}
                      for host, values in LAB_HOSTS.items()]}


class ModuleLab(Lab):
    """The lab inventory's namespace lab, built and removed by podnet.lab.netns_lab itself with the arguments
    lab_up.yml and lab_down.yml give it, from the warm node runner: under the guest's emulation each of the two
    playbooks costs ~50 s. test_modulekit.py keeps lab_up_args in step with lab_up.yml."""

    def up(self) -> dict[str, Any]:  # type: ignore[override]
        return run_module(self, None, "netns_lab", lab_up_args(self), package=LAB_MODULE_PACKAGE)

    def down(self) -> dict[str, Any]:  # type: ignore[override]
        try:
            removed = run_module(self, None, "netns_lab", {"prefix": self.prefix, "state": "absent"},
                                 package=LAB_MODULE_PACKAGE)
            shutil.rmtree(lab_state_dir(self), ignore_errors=True)  # lab_down.yml's last task: the lab's files
        finally:
            leftovers = remove_netns(self.prefix)
        if leftovers:
            raise LabError(f"netns_lab left namespaces of {self.prefix} behind (removed now): {leftovers}")
        return removed


@contextlib.contextmanager
def shared_lab(lab: Lab) -> Iterator[Lab]:
    """A test module's use of the guest's one lab (conftest's guest_lab): given back reset, whatever happened."""
    try:
        yield lab
    finally:
        reset_nodes(lab)
