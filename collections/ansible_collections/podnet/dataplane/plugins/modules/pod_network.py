#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pod_network
short_description: Manage the node side of pod networking (pod bridge, pod veths, forwarding)
version_added: "0.1.0"
description:
  - Creates the pod bridge (flannel's C(cni0)) with the node subnet's gateway address, turns on
    C(net.ipv4.ip_forward), and wires pods the way the CNI bridge plugin (and seed 003) does
    it - a veth pair whose host end is enslaved to the bridge and whose other end lives in the pod's
    network namespace with the pod's address and a default route via the bridge.
  - Pods here are network namespaces (lab pods, or namespaces a runtime created). A missing pod
    namespace is created.
  - Reads the kernel once per namespace, diffs, and writes only the difference; check mode and diff
    report exactly what would change. Removes only devices marked as podnet's (alias C(podnet:...)).
author:
  - podnet maintainers (@podnet)
requirements:
  - pyroute2 on the managed node (not needed for I(state=rendered))
options:
  mode:
    description:
      - C(bridge) is flannel's wiring - host veth ends enslaved to I(bridge), pods routed via its address.
      - C(routed) is calico's - host veth ends without address or bridge, a C(/32) route per pod on the
        node, and inside the pod C(169.254.1.1 dev eth0) plus C(default via 169.254.1.1); the node answers
        for 169.254.1.1 by proxy ARP (set that with M(podnet.dataplane.proxy_arp)).
    type: str
    choices: [bridge, routed]
    default: bridge
  bridge:
    description: The pod bridge (I(mode=bridge) only).
    type: dict
    suboptions:
      name:
        description: Bridge device name.
        type: str
        default: cni0
      address:
        description: Gateway address of the node's pod subnet in CIDR form, e.g. C(10.244.0.1/24).
        type: str
        required: true
  mtu:
    description: MTU of the bridge and of both ends of every pod veth (the overlay MTU).
    type: int
  forwarding:
    description: Set C(net.ipv4.ip_forward=1) on the node.
    type: bool
    default: true
  pods:
    description: Pods wired to the bridge.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Pod name (recorded in the host veth's alias).
        type: str
        required: true
      netns:
        description: The pod's network namespace name (under C(/run/netns)).
        type: str
        required: true
      address:
        description: Pod address in CIDR form, inside the node subnet.
        type: str
        required: true
      gateway:
        description: Default gateway inside the pod (the bridge address); C(169.254.1.1) in I(mode=routed).
        type: str
      interface:
        description: Interface name inside the pod.
        type: str
        default: eth0
      host_interface:
        description:
          - Host-side veth name. Defaults to C(veth) (bridge mode) or C(cali) (routed mode) plus hex digits
            derived from the pod namespace.
        type: str
      labels:
        description: The pod's labels. Not used here; network policy selects pods by them.
        type: dict
        default: {}
  state:
    description:
      - C(merged) creates or corrects the bridge and the listed pods.
      - C(replaced) is C(merged), plus removal of stray addresses on the bridge.
      - C(overridden) also removes podnet pod veths of pods no longer listed.
      - C(deleted) removes the listed pods' veths, or every podnet pod veth and the bridge when no pods are listed.
      - C(gathered) returns the bridge and podnet's pod veths.
      - C(rendered) returns the commands without touching the host.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - podnet.dataplane.persist
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: cni0 and one pod, as on 192.168.0.4 in seed 003
  podnet.dataplane.pod_network:
    bridge: {name: cni0, address: 10.244.0.1/24}
    mtu: 1450
    pods:
      - name: web
        netns: web
        address: 10.244.0.3/24
        gateway: 10.244.0.1
    state: overridden
"""

RETURN = r"""
commands:
  description: Changes made (or that would be made in check mode) as commands.
  returned: always
  type: list
  elements: str
changes:
  description: Structured form of I(commands).
  returned: always
  type: list
  elements: dict
rendered:
  description: The configuration as commands.
  returned: when state is rendered
  type: list
  elements: str
gathered:
  description: The bridge and podnet's pod veths as the kernel has them.
  returned: when state is gathered
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.podnet.dataplane.plugins.module_utils.builders import (
    CALICO_GATEWAY,
    POD_ALIAS_ROLE,
    bridge_objects,
    calico_veth_name,
    host_veth_name,
    pod_network_commands,
    pod_objects,
    sysctl_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    Change,
    Engine,
    plan,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.objects import (
    PODNET_RTPROTO,
    Address,
    Link,
    Route,
    is_owned_alias,
    owner_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.persist import PERSIST_OPTION, persist_result
from ansible_collections.podnet.dataplane.plugins.module_utils.resource import (
    STATES,
    fail_on_engine_error,
    result_for,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.validate import (
    check_interface_name,
    check_ipv4,
)

POD_SPEC = {
    "name": {"type": "str", "required": True},
    "netns": {"type": "str", "required": True},
    "address": {"type": "str", "required": True},
    "gateway": {"type": "str"},
    "interface": {"type": "str", "default": "eth0"},
    "host_interface": {"type": "str"},
    "labels": {"type": "dict", "default": {}},
}
ARGUMENT_SPEC = {
    "mode": {"type": "str", "choices": ["bridge", "routed"], "default": "bridge"},
    "bridge": {"type": "dict", "options": {"name": {"type": "str", "default": "cni0"},
                                           "address": {"type": "str", "required": True}}},
    "mtu": {"type": "int"},
    "forwarding": {"type": "bool", "default": True},
    "persist_dir": PERSIST_OPTION,
    "pods": {"type": "list", "elements": "dict", "options": POD_SPEC, "default": []},
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}
NETNS_DIR = "/run/netns"
POD_ALIAS_PREFIX = owner_alias(POD_ALIAS_ROLE) + ":"


def validate(module: AnsibleModule) -> None:
    p = module.params
    problems: list[str] = []
    routed = p["mode"] == "routed"
    if p["bridge"]:
        problems += check_interface_name("bridge.name", p["bridge"]["name"])
        if routed and p["state"] not in ("deleted", "gathered"):
            problems.append("bridge: not used with mode=routed")
    elif not routed and p["state"] not in ("deleted", "gathered"):
        problems.append("bridge: required with mode=bridge")
    for i, pod in enumerate(p["pods"]):
        naming = calico_veth_name if routed else host_veth_name
        pod["host_interface"] = pod["host_interface"] or naming(pod["netns"], pod["interface"])
        if routed:
            pod["gateway"] = pod["gateway"] or CALICO_GATEWAY
        elif not pod["gateway"]:
            problems.append(f"pods[{i}].gateway: required with mode=bridge")
        problems += check_interface_name(f"pods[{i}].interface", pod["interface"])
        problems += check_interface_name(f"pods[{i}].host_interface", pod["host_interface"])
        if pod["gateway"]:
            problems += check_ipv4(f"pods[{i}].gateway", pod["gateway"])
        if "/" in pod["netns"] or pod["netns"] in ("", ".", ".."):
            problems.append(f"pods[{i}].netns: {pod['netns']!r} is not a namespace name")
    if problems:
        module.fail_json(msg="podnet.pod_network: " + "; ".join(problems), problems=problems)


def node_wants(module: AnsibleModule) -> list:
    p = module.params
    want = sysctl_objects({"net.ipv4.ip_forward": 1}) if p["forwarding"] else []
    if p["bridge"]:
        want += bridge_objects(p["bridge"], p["mtu"])
    for pod in p["pods"]:
        want += pod_objects(pod, p["bridge"]["name"] if p["bridge"] else None, p["mtu"], p["mode"])[0]
    return want


def node_purge(module: AnsibleModule, have):
    p = module.params
    state = p["state"]
    bridge = p["bridge"]["name"] if p["bridge"] else None
    listed = {pod["host_interface"] for pod in p["pods"]}
    pod_devices = {o.name for o in have.of_type(Link) if (o.alias or "").startswith(POD_ALIAS_PREFIX)}

    def purge(obj) -> bool:
        if isinstance(obj, Address):
            return state != "deleted" and obj.dev == bridge  # the bridge holds exactly the gateway
        if isinstance(obj, Link) and obj.alias == owner_alias("bridge"):  # e.g. cni0 after a switch to calico
            return state == "overridden" and obj.name != bridge
        if isinstance(obj, Route):  # a pod's /32 whose pod moved or left (routed mode)
            return state != "deleted" and obj.proto == PODNET_RTPROTO and obj.dev in pod_devices
        if not isinstance(obj, Link) or not (obj.alias or "").startswith(POD_ALIAS_PREFIX):
            return False
        if state == "overridden":
            return True
        return state == "deleted" and (not listed or obj.name in listed)

    return purge


def ensure_netns(module: AnsibleModule) -> list[str]:
    """Create missing pod namespaces first: the node side moves each veth's peer into one."""
    missing = [pod["netns"] for pod in module.params["pods"]
               if not os.path.exists(os.path.join(NETNS_DIR, pod["netns"]))]
    if missing and not module.check_mode:
        from pyroute2 import netns as pyroute2_netns

        for name in missing:
            pyroute2_netns.create(name)
    return missing


def configure_pod(module: AnsibleModule, pod: dict, missing_netns: list[str]) -> list[Change]:
    """Bring the pod's end of the veth, its address and default route in line (inside the pod)."""
    p = module.params
    pod_side = pod_objects(pod, p["bridge"]["name"] if p["bridge"] else None, p["mtu"], p["mode"])[1]
    if module.check_mode and pod["netns"] in missing_netns:
        return [_as_update(Change("add", o, None)) for o in pod_side]
    with Engine(pod["netns"]) as engine:
        have = engine.gather({Address, Route})
        # The veth's pod end comes from the node side: configure it, never create it here.
        changes = [_as_update(c) for c in plan(pod_side, have)]
        if changes and not module.check_mode:
            fail_on_engine_error(module, engine.apply, changes, have)
    return changes


def _as_update(change: Change) -> Change:
    if change.op == "add" and isinstance(change.want, Link):
        return Change("update", change.want, None, ["mtu", "up"])
    return change


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    validate(module)
    p = module.params
    state = p["state"]
    if state == "rendered":
        lines = sysctl_objects({"net.ipv4.ip_forward": 1})[0].add_commands() if p["forwarding"] else []
        module.exit_json(changed=False, rendered=lines + pod_network_commands(p["bridge"], p["pods"], p["mtu"], p["mode"]))
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=str(PYROUTE2_IMPORT_ERROR))

    missing_netns = ensure_netns(module) if state != "deleted" else []
    with Engine() as engine:
        sysctls = ["net.ipv4.ip_forward"] if p["forwarding"] else []
        have = engine.gather({Address, Route}, sysctls)
        if state == "gathered":
            module.exit_json(changed=False, gathered=gathered(have, p["bridge"]))
        if state == "deleted":
            changes = plan([], have, node_purge(module, have))
            if not p["pods"] and p["bridge"]:
                bridge = have.objects.get(("link", None, p["bridge"]["name"]))
                if bridge is not None and is_owned_alias(bridge.alias):
                    changes.append(Change("delete", None, bridge))
        else:
            changes = plan(node_wants(module), have, node_purge(module, have))
        if changes and not module.check_mode:
            fail_on_engine_error(module, engine.apply, changes, have)
    if state != "deleted":
        for pod in p["pods"]:
            changes += configure_pod(module, pod, missing_netns)
    result = result_for(changes, created_netns=missing_netns)
    if missing_netns:
        result["changed"] = True
        result["commands"] = [f"ip netns add {name}" for name in missing_netns] + result["commands"]
    persist_result(module, "pod_network", node_wants(module) + [
        o for pod in p["pods"]
        for o in pod_objects(pod, p["bridge"]["name"] if p["bridge"] else None, p["mtu"], p["mode"])[1]])
    module.exit_json(**result)


def gathered(have, bridge: dict | None) -> dict:
    name = bridge["name"] if bridge else "cni0"
    link = have.objects.get(("link", None, name))
    pods = [{"host_interface": o.name, "pod": o.alias[len(POD_ALIAS_PREFIX):], "master": o.master, "mtu": o.mtu}
            for o in have.of_type(Link) if (o.alias or "").startswith(POD_ALIAS_PREFIX)]
    return {
        "bridge": None if link is None else {
            "name": name, "mtu": link.mtu, "up": link.up,
            "addresses": [a.cidr for a in have.of_type(Address) if a.dev == name]},
        "pods": pods,
    }


if __name__ == "__main__":
    main()
