#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pod_route
short_description: Manage routes to other nodes' pod subnets
version_added: "0.1.0"
description:
  - Installs the routes that carry pod traffic between nodes, for example
    C(10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink) (flannel-vxlan) or
    C(10.244.2.0/24 via 192.168.0.16 dev eth0) (flannel-host-gw), in the main table.
  - Every route podnet installs is tagged with podnet's own route protocol number (152), which is
    how C(overridden) and C(deleted) find podnet's routes and never touch anyone else's.
  - Routes through pod interfaces (C(/32) pod routes) belong to the pod wiring modules and are left alone.
author:
  - podnet maintainers (@podnet)
requirements:
  - pyroute2 on the managed node (not needed for I(state=rendered))
options:
  routes:
    description: The routes.
    type: list
    elements: dict
    default: []
    suboptions:
      dst:
        description: Destination network in CIDR form (a peer's pod subnet).
        type: str
        required: true
      via:
        description: Next hop (the peer VTEP's address, or the peer's node IP).
        type: str
      dev:
        description: Output device. Required with I(onlink).
        type: str
      onlink:
        description: Treat the next hop as directly reachable on I(dev) even without a matching subnet.
        type: bool
        default: false
  state:
    description:
      - C(merged) adds or corrects the listed routes.
      - C(replaced) is the same as C(merged) for routes (a destination has one route).
      - C(overridden) also removes every other podnet peer route.
      - C(deleted) removes the listed routes, or all podnet peer routes when none are listed.
      - C(gathered) returns podnet's peer routes as the kernel has them.
      - C(rendered) returns the C(ip route add) commands without touching the host.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - podnet.dataplane.persist
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: flannel-vxlan peer routes, and nothing else of podnet's
  podnet.dataplane.pod_route:
    routes:
      - {dst: 10.244.2.0/24, via: 10.244.2.0, dev: flannel.1, onlink: true}
    state: overridden

- name: host-gw
  podnet.dataplane.pod_route:
    routes:
      - {dst: 10.244.2.0/24, via: 192.168.0.16, dev: eth0}
"""

RETURN = r"""
commands:
  description: Changes made (or that would be made in check mode) as C(ip route) commands.
  returned: always
  type: list
  elements: str
  sample: ["ip route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"]
changes:
  description: Structured form of I(commands).
  returned: always
  type: list
  elements: dict
rendered:
  description: The listed routes as commands.
  returned: when state is rendered
  type: list
  elements: str
gathered:
  description: podnet's peer routes in the kernel.
  returned: when state is gathered
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.podnet.dataplane.plugins.module_utils.builders import POD_ALIAS_ROLE, route_objects
from ansible_collections.podnet.dataplane.plugins.module_utils.netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    Engine,
    KernelState,
    plan,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.objects import (
    PODNET_RTPROTO,
    Link,
    Route,
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
    check_ipv4_network,
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
    if problems:
        module.fail_json(msg="podnet.pod_route: " + "; ".join(problems), problems=problems)


def peer_route_owner(have: KernelState):
    """podnet's peer routes: podnet's protocol, not leaving through a podnet pod interface."""
    pod_devices = {o.name for o in have.of_type(Link)
                   if (o.alias or "").startswith(owner_alias(POD_ALIAS_ROLE) + ":")}

    def owned(obj) -> bool:
        return isinstance(obj, Route) and obj.proto == PODNET_RTPROTO and obj.dev not in pod_devices

    return owned


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    validate(module)
    state = module.params["state"]
    want = route_objects(module.params["routes"])
    if state == "rendered":
        module.exit_json(changed=False, rendered=[c for o in want for c in o.add_commands()])
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=str(PYROUTE2_IMPORT_ERROR))

    with Engine() as engine:
        have = engine.gather({Route})
        owned = peer_route_owner(have)
        if state == "gathered":
            module.exit_json(changed=False, gathered=[o.as_dict() for o in have.of_type(Route) if owned(o)])
        if state == "deleted":
            listed = {o.key() for o in want}
            changes = plan([], have, lambda o: owned(o) and (not listed or o.key() in listed))
        else:
            changes = plan(want, have, owned if state == "overridden" else None)
        if changes and not module.check_mode:
            fail_on_engine_error(module, engine.apply, changes, have)
    persist_result(module, "pod_route", want)
    module.exit_json(**result_for(changes))


if __name__ == "__main__":
    main()
