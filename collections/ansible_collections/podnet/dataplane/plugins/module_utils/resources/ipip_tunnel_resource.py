# Copyright: podnet contributors
# Apache License 2.0
"""The ipip_tunnel resource: what podnet.dataplane.ipip_tunnel does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    IPIP_OVERHEAD,
    tunnel_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    Engine,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    Address,
    Link,
    is_owned_alias,
)
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

ARGUMENT_SPEC = {
    "name": {"type": "str", "default": "tunl0"},
    "mtu": {"type": "int"},
    "local": {"type": "str"},
    "address": {"type": "str"},
    "persist_dir": PERSIST_OPTION,
    "take_over": TAKE_OVER_OPTION,
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    p = module.params
    state, name = p["state"], p["name"]
    problems = check_interface_name("name", name)
    if p["local"]:
        problems += check_ipv4("local", p["local"])
    if p["mtu"] is not None and not 68 <= p["mtu"] <= 65535:
        problems.append(f"mtu: {p['mtu']} is out of range 68..65535")
    if problems:
        module.fail_json(msg="podnet.ipip_tunnel: " + "; ".join(problems))
    tunnel = {"name": name, "mtu": p["mtu"], "address": p["address"]}
    if state == "rendered":
        module.exit_json(changed=False, rendered=[c for o in tunnel_objects(tunnel) for c in o.add_commands()])

    with Engine() as engine:
        have = engine.gather({Address})
        existing = have.objects.get(("link", None, name))
        addresses = [a for a in have.of_type(Address) if a.dev == name]
        if state == "gathered":
            module.exit_json(changed=False, gathered={} if existing is None else {
                "name": name, "kind": existing.kind, "mtu": existing.mtu, "up": existing.up,
                "addresses": [a.cidr for a in addresses]})
        if existing is not None and existing.kind != "ipip":
            module.fail_json(msg=f"podnet.ipip_tunnel: device {name} exists but is a {existing.kind} device")
        extra: dict = {}
        if state == "deleted":
            # Only a tunnel podnet configured (alias podnet:tunnel) is taken back; anyone else's stays.
            changes = []
            if existing is not None and is_owned_alias(existing.alias):
                changes = [Change("delete", None, a) for a in addresses]
                changes.append(Change("update", Link(name=name, kind="ipip", up=False, alias=""), existing,
                                      ["up", "alias"]))
        else:
            if not tunnel["mtu"]:
                tunnel["mtu"] = underlay_mtu(module, have) - IPIP_OVERHEAD
            purge = (lambda o: isinstance(o, Address) and o.dev == name) if state != "merged" else None
            changes = plan_owned(module, tunnel_objects(tunnel), have, purge)
            extra["mtu"] = tunnel["mtu"]
        if changes and not module.check_mode:
            fail_on_engine_error(module, engine.apply, changes, have)
    persist_result(module, f"ipip_tunnel-{name}", tunnel_objects(tunnel))
    module.exit_json(**result_for(changes, **extra))


def underlay_mtu(module: AnsibleModule, have) -> int:
    if not module.params["local"]:
        module.fail_json(msg="podnet.ipip_tunnel: give mtu, or local so podnet can derive it from the underlay")
    lower = have.device_holding(module.params["local"])
    if lower is None:
        module.fail_json(msg=f"podnet.ipip_tunnel: local address {module.params['local']} is not on any "
                             "interface of this node")
    return lower.mtu
