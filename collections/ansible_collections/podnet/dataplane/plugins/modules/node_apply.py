#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_apply
short_description: Converge a node's whole backend (devices, peers, routes, pods, rules, subnet.env) in one run
version_added: "0.4.0"
description:
  - Applies one node's part of the plan (C(podnet_node), set by the C(podnet.dataplane.plan) role) in a
    single module run, which is what the C(podnet.dataplane.flannel) and C(podnet.dataplane.calico)
    roles call. Each piece is done by the code of its own module, in this order and with these states -
    so results, check mode, diffs and error messages are that module's.
  - "flannel backends: M(podnet.dataplane.vxlan_fdb) (the VTEP and static peers, flannel-vxlan),
    M(podnet.dataplane.vxlan_fdb) C(deleted) for every other VTEP in I(other_vteps),
    M(podnet.dataplane.ipip_tunnel) C(deleted), M(podnet.dataplane.pod_route) C(overridden),
    M(podnet.dataplane.proxy_arp) C(deleted) on C(cali*), M(podnet.dataplane.pod_network) (bridge)
    C(overridden), M(podnet.dataplane.iptables_rules) C(overridden), then C(subnet.env)."
  - "calico and the other routed backends: M(podnet.dataplane.vxlan_fdb) C(deleted) for the other
    VTEPs, the VTEP (calico-vxlan) or M(podnet.dataplane.ipip_tunnel) (calico-ipip),
    M(podnet.dataplane.pod_network) (routed) C(overridden), M(podnet.dataplane.proxy_arp) on the pods'
    host interfaces, M(podnet.dataplane.pod_route) C(overridden),
    M(podnet.dataplane.iptables_rules) C(overridden), then C(subnet.env) for canal (removed otherwise)."
  - The pods' MTU is the one the VTEP or tunnel got on the node (derived from the real underlay MTU),
    else the node's explicit C(mtu), else the planner's render-time value; C(subnet.env) carries the same.
  - The first failing step ends the run with that step's message; the steps before it stay applied,
    as separate tasks would have left them.
author:
  - podnet maintainers (@podnet)
requirements:
  - pyroute2 on the managed node
options:
  node:
    description:
      - This node's planned state, C(podnet_node) as the C(podnet.dataplane.plan) role sets it
        (C(backend), C(pod_mode), C(node_ip), C(vtep), C(tunnel), C(routes), C(pods), C(bridge),
        C(iptables), C(subnet_env), C(mtu), C(render_mtu)); C(pod_mode) C(bridge) selects the flannel
        steps below, C(routed) the calico ones.
    type: dict
    required: true
  other_vteps:
    description: VXLAN devices of the other backends, removed when this node's backend does not use them.
    type: list
    elements: str
    default: [flannel.1, vxlan.calico, vxlan-6784]
  subnet_env:
    description: Where flannel's C(subnet.env) is written (flannel backends, canal) or removed (the others).
    type: path
    default: /run/flannel/subnet.env
  proxy_arp_state_file:
    description: Where the proxy-ARP values podnet found before changing them are remembered (restored on a switch to flannel).
    type: path
    default: /var/lib/podnet/proxy_arp.json
  pod_sysctls:
    description:
      - What routed backends set on each host-side pod interface (C({}) stands for the interface).
        Defaults to felix's settings, as M(podnet.dataplane.proxy_arp) does.
    type: dict
extends_documentation_fragment:
  - podnet.dataplane.persist
notes:
  - Supports check mode and diff mode (one diff per step that would change).
  - For a single piece of state, use its own module; this module exists so that a node costs one
    module run instead of seven to nine.
seealso:
  - module: podnet.dataplane.vxlan_fdb
  - module: podnet.dataplane.pod_network
  - module: podnet.dataplane.pod_route
"""

EXAMPLES = r"""
- name: Converge this node's backend (podnet_node from the podnet.dataplane.plan role)
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
    persist_dir: /var/lib/podnet/state

- name: Preview what a converge would change, without changing it
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
  check_mode: true
  diff: true
"""

RETURN = r"""
commands:
  description: The ip/bridge/iptables/sysctl commands equivalent to what changed (or would change), in order.
  returned: always
  type: list
  elements: str
results:
  description:
    - One entry per step, in order - that module's own result plus C(step) (what it does) and
      C(resource) (the module name, or C(file) for C(subnet.env)).
    - The VTEP's and the tunnel's entries carry the C(mtu) they got.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.podnet.dataplane.plugins.module_utils.builders import CALICO_HOST_SYSCTLS
from ansible_collections.podnet.dataplane.plugins.module_utils.netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node_apply import (
    NodeRun,
    StepFailed,
    backend_of,
    summary,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.persist import PERSIST_OPTION

ARGUMENT_SPEC = {
    "node": {"type": "dict", "required": True},
    "other_vteps": {"type": "list", "elements": "str", "default": ["flannel.1", "vxlan.calico", "vxlan-6784"]},
    "subnet_env": {"type": "path", "default": "/run/flannel/subnet.env"},
    "proxy_arp_state_file": {"type": "path", "default": "/var/lib/podnet/proxy_arp.json"},
    "pod_sysctls": {"type": "dict"},
    "persist_dir": PERSIST_OPTION,
}
NODE_KEYS = ("backend", "pod_mode", "node_ip", "routes", "pods", "iptables", "render_mtu")
BRIDGE_NODE_KEYS = ("bridge", "subnet_env")


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    node = module.params["node"]
    wanted = NODE_KEYS + (BRIDGE_NODE_KEYS if node.get("pod_mode") == "bridge" else ())
    missing = [key for key in wanted if key not in node]
    if missing:
        module.fail_json(msg=f"podnet.node_apply: node lacks {', '.join(missing)}; pass podnet_node as the "
                             "podnet.dataplane.plan role sets it")
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=str(PYROUTE2_IMPORT_ERROR))
    if module.params["pod_sysctls"] is None:
        module.params["pod_sysctls"] = dict(CALICO_HOST_SYSCTLS)
    run = NodeRun(module)
    try:
        backend_of(node)(run, node)
    except StepFailed as exc:
        details = {k: v for k, v in exc.extra.items() if k not in ("msg", "step")}
        module.fail_json(msg=exc.msg, step=exc.step, **{**summary(run.results), **details})
    module.exit_json(**summary(run.results))


if __name__ == "__main__":
    main()
