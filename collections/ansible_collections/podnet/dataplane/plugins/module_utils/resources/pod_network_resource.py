# Copyright: podnet contributors
# Apache License 2.0
"""The pod_network resource: what podnet.dataplane.pod_network does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    CALICO_GATEWAY,
    POD_ALIAS_ROLE,
    bridge_objects,
    calico_veth_name,
    host_veth_name,
    pod_network_commands,
    pod_objects,
    sysctl_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    Engine,
    netns_path,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    PODNET_RTPROTO,
    Address,
    Link,
    Route,
    is_owned_alias,
    owner_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import shell_line
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import (
    PERSIST_OPTION,
    persist_result,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    check_interface_name,
    check_ipv4,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import (
    STATES,
    TAKE_OVER_OPTION,
    fail_on_engine_error,
    plan_owned,
    result_for,
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
    "take_over": TAKE_OVER_OPTION,
    "pods": {"type": "list", "elements": "dict", "options": POD_SPEC, "default": []},
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}
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
               if not os.path.exists(netns_path(pod["netns"]))]
    if missing and not module.check_mode:
        ip = module.get_bin_path("ip", required=True)
        for name in missing:
            rc, _out, err = module.run_command([ip, "netns", "add", name])
            if rc != 0:
                module.fail_json(msg=f"podnet.pod_network: ip netns add {name}: {err.strip()}")
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
        changes = [_as_update(c) for c in plan_owned(module, pod_side, have)]
        if changes and not module.check_mode:
            fail_on_engine_error(module, engine.apply, changes, have)
    return changes


def _as_update(change: Change) -> Change:
    if change.op == "add" and isinstance(change.want, Link):
        return Change("update", change.want, None, ["mtu", "up"])
    return change


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    validate(module)
    p = module.params
    state = p["state"]
    if state == "rendered":
        lines = sysctl_objects({"net.ipv4.ip_forward": 1})[0].add_commands() if p["forwarding"] else []
        module.exit_json(changed=False, rendered=lines + pod_network_commands(p["bridge"], p["pods"], p["mtu"], p["mode"]))

    missing_netns = ensure_netns(module) if state != "deleted" else []
    with Engine() as engine:
        sysctls = ["net.ipv4.ip_forward"] if p["forwarding"] else []
        have = engine.gather({Address, Route}, sysctls)
        if state == "gathered":
            module.exit_json(changed=False, gathered=gathered(have, p["bridge"]))
        if state == "deleted":
            changes = plan_owned(module, [], have, node_purge(module, have))
            if not p["pods"] and p["bridge"]:
                bridge = have.objects.get(("link", None, p["bridge"]["name"]))
                if bridge is not None and is_owned_alias(bridge.alias):
                    changes.append(Change("delete", None, bridge))
        else:
            changes = plan_owned(module, node_wants(module), have, node_purge(module, have))
        if changes and not module.check_mode:
            fail_on_engine_error(module, engine.apply, changes, have)
    if state != "deleted":
        for pod in p["pods"]:
            changes += configure_pod(module, pod, missing_netns)
    result = result_for(changes, created_netns=missing_netns)
    if missing_netns:
        result["changed"] = True
        result["commands"] = [shell_line(["ip", "netns", "add", name]) for name in missing_netns] + result["commands"]
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
