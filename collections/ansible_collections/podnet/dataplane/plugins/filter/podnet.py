# Copyright: podnet contributors
# Apache License 2.0
"""Filters that plan and render podnet's per-node state on the controller (no host access)."""
from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import subnet_env_text
from ansible_collections.podnet.dataplane.plugins.module_utils.node.loss_probe import merge
from ansible_collections.podnet.dataplane.plugins.module_utils.node.render import RenderError, node_commands
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.adoption import (
    adopted_record,
    refuse_foreign,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.node_record import (
    LeaseConflict,
    reconcile,
    reconcile_macs,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import (
    CLUSTER_KEYS,
    NODE_KEYS,
    PATH_KEYS,
    PlanError,
    plan_cluster,
    vtep_mac_for,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.policy import ping_surprises
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    check_ipv4,
    check_netns_name,
)


def _node_vars(hostvars, host: str) -> dict:
    """Only the variables podnet reads, templated now, as plain data."""
    source = hostvars[host]
    out = {}
    for key in CLUSTER_KEYS + NODE_KEYS + PATH_KEYS:
        if key in source:
            out[key] = source[key]
    return out


def plan(hostvars, hosts, leases=None, vtep_macs=None) -> dict:
    """{{ hostvars | podnet.dataplane.plan(groups['podnet_nodes'], leases, vtep_macs) }}"""
    hosts = list(hosts or [])
    try:
        return plan_cluster(hosts, {h: _node_vars(hostvars, h) for h in hosts}, leases or {}, vtep_macs or {})
    except PlanError as exc:
        raise AnsibleFilterError(str(exc)) from None


def _held(cluster: dict, hostvars, asked: list[str]) -> dict:
    """What each node asked holds, as the preflight read it: podnet's record, or (adopting) what the node runs."""
    settings = cluster["settings"]
    cidr, prefix = ipaddress.IPv4Network(settings["podnet_cluster_cidr"]), settings["podnet_subnet_prefix"]
    held = {}
    for host in asked:
        if host not in hostvars:
            continue
        look = hostvars[host].get("podnet_preflight") or {}
        held[host] = look.get("node_record") or adopted_record(host, look.get("adoptable"), cidr, prefix)
    return held


def node_leases(leases, cluster: dict, hostvars, asked) -> dict:
    """{{ podnet_leases_in | podnet.dataplane.node_leases(podnet_cluster, hostvars, ansible_play_hosts) }}: the
    lease file's leases with every subnet a node holds (its record, or what an adoption found there, as the
    preflight read it) and the file lacks; fails where the file and the nodes disagree."""
    asked = list(asked or [])
    try:
        held = _held(cluster, hostvars, asked)
        refuse_foreign(cluster, {host: hostvars[host].get("podnet_preflight") or {} for host in asked
                                 if host in hostvars and not held.get(host)})
        return reconcile(dict(leases or {}), cluster, held, asked)
    except LeaseConflict as exc:
        raise AnsibleFilterError(str(exc)) from None


def node_vtep_macs(vtep_macs, cluster: dict, hostvars, asked) -> dict:
    """{{ podnet_vtep_macs_in | podnet.dataplane.node_vtep_macs(podnet_cluster, hostvars, ansible_play_hosts) }}:
    the VTEP MAC file's MACs with every MAC a node holds that is not podnet's default and the file lacks; fails
    where the file gives a node another MAC than it holds."""
    asked = list(asked or [])
    explicit = {host for host in cluster["nodes"]
                if host in hostvars and hostvars[host].get("podnet_vtep_mac") not in (None, "")}
    try:
        return reconcile_macs(dict(vtep_macs or {}), cluster, _held(cluster, hostvars, asked), explicit, vtep_mac_for)
    except LeaseConflict as exc:
        raise AnsibleFilterError(str(exc)) from None


def commands(node_state: dict, kernel: str | None = None, options: dict | None = None) -> list[str]:
    """{{ podnet_node | podnet.dataplane.commands(podnet_render_kernel, options) }}: the node's exact commands,
    one per line, for a node running kernel release `kernel` (default: render.RENDER_KERNEL); `options` are
    node_apply's as the roles give them (None values: node_apply's defaults)."""
    given = {key: value for key, value in (options or {}).items() if value is not None}
    try:
        return node_commands(node_state, kernel, given)
    except RenderError as exc:
        raise AnsibleFilterError(str(exc)) from None


PROBE_PODS_VAR = "podnet_probe_pods"


def _pods_of(cluster: dict, host: str, hostvars) -> list[dict]:
    """The pods of `host` to probe: its podnet_probe_pods where the inventory lists them (pods podnet did not wire,
    e.g. before adopting a running cluster), else the plan's."""
    given = hostvars[host].get(PROBE_PODS_VAR) if hostvars is not None and host in hostvars else None
    if given is None:
        return [{"name": pod["name"], "netns": pod["netns"], "address": pod["address"]}
                for pod in cluster["nodes"][host]["pods"]]
    if not isinstance(given, list) or not all(isinstance(pod, dict) for pod in given):
        raise AnsibleFilterError(f"{host}: {PROBE_PODS_VAR} must be a list of pods ({{name, netns, address}})")
    pods = []
    for at, pod in enumerate(given):
        field = f"{host}: {PROBE_PODS_VAR}[{at}]"
        address = str(pod.get("address", "")).split("/", maxsplit=1)[0]
        problems = (check_netns_name(f"{field}.name", pod.get("name")) + check_netns_name(f"{field}.netns", pod.get("netns"))
                    + check_ipv4(f"{field}.address", address))
        if problems:
            raise AnsibleFilterError("; ".join(problems))
        pods.append({"name": pod["name"], "netns": pod["netns"], "address": address})
    return pods


def pod_sources(cluster: dict, host: str, hostvars=None) -> list[dict]:
    """This node's pods as pod_ping and pod_probe sources (with `hostvars`: its podnet_probe_pods if it has them)."""
    return [{"name": f"{host}/{pod['name']}", "netns": pod["netns"]} for pod in _pods_of(cluster, host, hostvars)]


def pod_targets(cluster: dict, host: str, hostvars=None) -> list[dict]:
    """Every pod on the other nodes, as pod_ping and pod_probe targets (with `hostvars`: podnet_probe_pods where a
    node has them)."""
    return [{"name": f"{other}/{pod['name']}", "address": pod["address"].split("/")[0]}
            for other in cluster["nodes"] if other != host for pod in _pods_of(cluster, other, hostvars)]


def ping_matrix(results: list) -> str:
    """Format pod_ping results of all nodes as a source x target table (ok / LOSS)."""
    pairs = [r for result in results if result for r in result.get("results", [])]
    sources = sorted({r["source"] for r in pairs})
    targets = sorted({r["target"] for r in pairs} | set(sources))
    cell = {(r["source"], r["target"]): "ok" if r["ok"] else "LOSS" for r in pairs}
    width = max([len(t) for t in targets] + [6])
    lines = [" " * width + " | " + " ".join(t.ljust(width) for t in targets)]
    for source in sources:
        row = [cell.get((source, t), "-").ljust(width) for t in targets]
        lines.append(source.ljust(width) + " | " + " ".join(row))
    lost = sum(1 for v in cell.values() if v != "ok")
    lines.append(f"{len(cell)} pairs, {lost} without answer")
    return "\n".join(lines)


def probe_loss(results: list) -> list:
    """Every node's pod_probe reports (its `stopped` results) as one row per pod pair: sent, received, lost,
    longest_gap_ms."""
    return merge([report for result in results if result for report in result.get("reports", [])])


def subnet_env(values: dict, mtu) -> str:
    """flannel's /run/flannel/subnet.env (seed 004 format), with the MTU the node really got."""
    return subnet_env_text(values, mtu)


def drift(results: list) -> list[str]:
    """What check-mode task results say would change: their commands (or the task's path/msg)."""
    out: list[str] = []
    for result in results or []:
        for item in (result.get("results") or [result]) if isinstance(result, dict) else []:
            if not item.get("changed"):
                continue
            out.extend(item.get("commands") or [f"change {item.get('path') or item.get('dest') or 'a file'}"])
    return out


def _dot_id(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def topology_dot(cluster: dict) -> str:
    """The cluster as a Graphviz graph: nodes (underlay IP, pod subnet, VTEP/tunnel), their pods, and
    one edge per node pair labelled with how pod traffic crosses it (VXLAN, IPIP, plain route, BGP)."""
    nodes = cluster["nodes"]
    title = _dot_id(f"podnet: {next(iter(nodes.values()))['backend'] if nodes else ''}, cluster "
                    f"{cluster['settings']['podnet_cluster_cidr']}")
    lines = ["graph podnet {", f"  graph [rankdir=LR, fontname=Helvetica, labelloc=t, label={title}];",
             "  node [fontname=Helvetica, fontsize=10]; edge [fontname=Helvetica, fontsize=9];"]
    for name, node in nodes.items():
        device = (node.get("vtep") or node.get("tunnel") or {}).get("name")
        label = [name, f"node IP {node['node_ip']}", f"pods {node['subnet']}"]
        if device:
            label.append(f"{device} {(node.get('vtep') or {}).get('mac', '')}".strip())
        if node.get("bgp"):
            label.append(f"BGP AS {node['bgp']['asn']}" + (" (route reflector)" if node["bgp"]["route_reflector"]
                                                           else ""))
        lines.append(f"  {_dot_id(name)} [shape=box, style=rounded, label={_dot_id(chr(10).join(label))}];")
        for pod in node["pods"]:
            pod_id = f"{name}/{pod['name']}"
            lines.append(f"  {_dot_id(pod_id)} [shape=ellipse, label={_dot_id(pod['name'] + chr(10) + pod['address'])}];")
            lines.append(f"  {_dot_id(name)} -- {_dot_id(pod_id)} [style=dotted, label={_dot_id(pod['host_interface'])}];")
    names = list(nodes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            route = next((r for r in nodes[a]["routes"] if r["dst"] == nodes[b]["subnet"]), None)
            peer = next(p for p in nodes[a]["peers"] if p["name"] == b)
            if nodes[a].get("bgp") and nodes[a]["bgp"]["mode"] == "bird":
                sessions = {n["name"] for n in nodes[a]["bgp"]["neighbors"]}
                label, style = ("iBGP session" if b in sessions else "routes via reflector"), "solid"
            elif peer["encapsulated"] and nodes[a].get("vtep"):
                label, style = f"VXLAN {nodes[a]['vtep']['vni']} udp/{nodes[a]['vtep']['port']}", "bold"
            elif peer["encapsulated"] and nodes[a].get("wireguard"):
                wg = nodes[a]["wireguard"]
                label, style = f"WireGuard udp/{wg['listen_port']} ({wg['name']}, encrypted)", "bold"
            elif peer["encapsulated"] and (nodes[a].get("tunnel") or {}).get("fou_port"):
                label, style = f"UDP {nodes[a]['tunnel']['fou_port']} ({nodes[a]['tunnel']['name']}, foo-over-UDP)", "bold"
            elif peer["encapsulated"]:
                label, style = "IPIP (tunl0)", "bold"
            else:
                label, style = f"route via {route['via'] if route else peer['node_ip']}", "dashed"
            lines.append(f"  {_dot_id(a)} -- {_dot_id(b)} [label={_dot_id(label)}, style={style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


class FilterModule:
    def filters(self):
        return {"plan": plan, "node_leases": node_leases, "node_vtep_macs": node_vtep_macs, "commands": commands, "pod_sources": pod_sources,
                "pod_targets": pod_targets, "ping_matrix": ping_matrix, "probe_loss": probe_loss, "drift": drift, "subnet_env": subnet_env,
                "topology_dot": topology_dot, "ping_surprises": ping_surprises}
