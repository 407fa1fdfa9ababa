# Copyright: podnet contributors
# Apache License 2.0
"""The pod_route resource: what podnet.dataplane.pod_route does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import ipaddress

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    POD_ALIAS_ROLE,
    route_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Engine,
    KernelState,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    PODNET_RTPROTO,
    Link,
    Route,
    owner_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import (
    PERSIST_OPTION,
    persist_result,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    check_interface_name,
    check_ipv4,
    check_ipv4_network,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import (
    STATES,
    TAKE_OVER_OPTION,
    fail_on_engine_error,
    plan_owned,
    result_for,
)

ROUTE_SPEC = {
    "dst": {"type": "str", "required": True},
    "via": {"type": "str"},
    "dev": {"type": "str"},
    "onlink": {"type": "bool", "default": False},
}
ARGUMENT_SPEC = {
    "routes": {"type": "list", "elements": "dict", "options": ROUTE_SPEC, "default": []},
    "persist_dir": PERSIST_OPTION,
    "take_over": TAKE_OVER_OPTION,
    "networks": {"type": "list", "elements": "str", "default": []},
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}


def validate(module: AnsibleModule) -> None:
    problems: list[str] = []
    seen: set[str] = set()
    for i, route in enumerate(module.params["routes"]):
        problems += check_ipv4_network(f"routes[{i}].dst", route["dst"])
        if route["via"]:
            problems += check_ipv4(f"routes[{i}].via", route["via"])
        if route["dev"]:
            problems += check_interface_name(f"routes[{i}].dev", route["dev"])
        if route["onlink"] and not route["dev"]:
            problems.append(f"routes[{i}].onlink: needs dev")
        if not route["via"] and not route["dev"]:
            problems.append(f"routes[{i}]: needs via or dev")
        if route["dst"] in seen:
            problems.append(f"routes[{i}].dst: {route['dst']} is listed twice")
        seen.add(route["dst"])
    scopes = []
    for i, network in enumerate(module.params["networks"]):
        found = check_ipv4_network(f"networks[{i}]", network)
        problems += found
        if not found:
            scopes.append(ipaddress.IPv4Network(network))
    for i, route in enumerate(module.params["routes"]):
        if scopes and not check_ipv4_network("dst", route["dst"]) \
                and not any(ipaddress.IPv4Network(route["dst"]).subnet_of(s) for s in scopes):
            problems.append(f"routes[{i}].dst: {route['dst']} is outside networks ({', '.join(map(str, scopes))})")
    if problems:
        module.fail_json(msg="podnet.pod_route: " + "; ".join(problems), problems=problems)


def peer_route_owner(have: KernelState, networks: list[str] | None = None):
    """podnet's peer routes: podnet's protocol, not leaving through a podnet pod interface, and (when
    `networks` are given) to a destination inside them - podnet routes only to pod networks, so a route of
    protocol 152 elsewhere is some other program's that happens to use the number."""
    pod_devices = {o.name for o in have.of_type(Link)
                   if (o.alias or "").startswith(owner_alias(POD_ALIAS_ROLE) + ":")}
    scopes = [ipaddress.IPv4Network(n) for n in networks or []]

    def owned(obj) -> bool:
        return (isinstance(obj, Route) and obj.proto == PODNET_RTPROTO and obj.dev not in pod_devices
                and (not scopes or any(ipaddress.IPv4Network(obj.dst).subnet_of(s) for s in scopes)))

    return owned


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    validate(module)
    state = module.params["state"]
    want = route_objects(module.params["routes"])
    if state == "rendered":
        module.exit_json(changed=False, rendered=[c for o in want for c in o.add_commands()])

    with Engine() as engine:
        have = engine.gather({Route})
        owned = peer_route_owner(have, module.params["networks"])
        if state == "gathered":
            module.exit_json(changed=False, gathered=[o.as_dict() for o in have.of_type(Route) if owned(o)])
        if state == "deleted":
            listed = {o.key() for o in want}
            changes = plan_owned(module, [], have, lambda o: owned(o) and (not listed or o.key() in listed))
        else:
            changes = plan_owned(module, want, have, owned if state == "overridden" else None)
        if changes and not module.check_mode:
            fail_on_engine_error(module, engine.apply, changes, have)
    persist_result(module, "pod_route", want)
    module.exit_json(**result_for(changes))
