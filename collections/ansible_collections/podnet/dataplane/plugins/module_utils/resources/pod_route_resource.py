# Copyright: podnet contributors
# Apache License 2.0
"""The pod_route resource: what podnet.dataplane.pod_route does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import ipaddress
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    POD_ALIAS_ROLE,
    route_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
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
    NetlinkResource,
    plan_owned,
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


class PodRoute(NetlinkResource):
    name = "pod_route"
    kinds = frozenset({Route})

    def problems(self) -> list[str]:
        found: list[str] = []
        seen: set[str] = set()
        for i, route in enumerate(self.p["routes"]):
            found += check_ipv4_network(f"routes[{i}].dst", route["dst"])
            if route["via"]:
                found += check_ipv4(f"routes[{i}].via", route["via"])
            if route["dev"]:
                found += check_interface_name(f"routes[{i}].dev", route["dev"])
            if route["onlink"] and not route["dev"]:
                found.append(f"routes[{i}].onlink: needs dev")
            if not route["via"] and not route["dev"]:
                found.append(f"routes[{i}]: needs via or dev")
            if route["dst"] in seen:
                found.append(f"routes[{i}].dst: {route['dst']} is listed twice")
            seen.add(route["dst"])
        scopes = []
        for i, network in enumerate(self.p["networks"]):
            bad = check_ipv4_network(f"networks[{i}]", network)
            found += bad
            if not bad:
                scopes.append(ipaddress.IPv4Network(network))
        for i, route in enumerate(self.p["routes"]):
            if scopes and not check_ipv4_network("dst", route["dst"]) \
                    and not any(ipaddress.IPv4Network(route["dst"]).subnet_of(s) for s in scopes):
                found.append(f"routes[{i}].dst: {route['dst']} is outside networks "
                             f"({', '.join(map(str, scopes))})")
        if not found:
            self.want = route_objects(self.p["routes"])
        return found

    def rendered(self) -> dict[str, Any]:
        return {"rendered": [c for o in self.want for c in o.add_commands()]}

    def gathered(self, have: KernelState) -> dict[str, Any]:
        """podnet's peer routes as `routes` entries (and the `networks` they were looked for in)."""
        owned = peer_route_owner(have, self.p["networks"])
        return {"routes": [{"dst": o.dst, "via": o.via, "dev": o.dev, "onlink": bool(o.onlink)}
                           for o in sorted(have.of_type(Route), key=lambda r: r.dst) if owned(o)],
                "networks": list(self.p["networks"])}

    def plan(self, have: KernelState) -> list[Change]:
        owned = peer_route_owner(have, self.p["networks"])
        if self.state == "deleted":
            listed = {o.key() for o in self.want}
            return plan_owned(self.module, [], have, lambda o: owned(o) and (not listed or o.key() in listed))
        return plan_owned(self.module, self.want, have, owned if self.state == "overridden" else None)

    def record(self) -> None:
        persist_result(self.module, "pod_route", self.want)


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    PodRoute(module).run()
