# Copyright: podnet contributors
# Apache License 2.0
"""The ipip_tunnel resource: what podnet.dataplane.ipip_tunnel does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    IPIP_OVERHEAD,
    UDP_OVERHEAD,
    tunnel_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    KernelState,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    IPIP_FALLBACK,
    Address,
    FouPort,
    Link,
    is_owned_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.ownership import (
    foreign_fou_port,
    podnets_fou_port,
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
    NetlinkResource,
    plan_owned,
)

ARGUMENT_SPEC = {
    "name": {"type": "str", "default": "tunl0"},
    "mtu": {"type": "int"},
    "local": {"type": "str"},
    "underlay_interface": {"type": "str"},
    "fou_port": {"type": "int"},
    "address": {"type": "str"},
    "persist_dir": PERSIST_OPTION,
    "take_over": TAKE_OVER_OPTION,
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}


class IpipTunnel(NetlinkResource):
    name = "ipip_tunnel"
    kinds = frozenset({Address, FouPort})

    def problems(self) -> list[str]:
        p = self.p
        found = check_interface_name("name", p["name"])
        if p["local"]:
            found += check_ipv4("local", p["local"])
        if p["underlay_interface"]:
            found += check_interface_name("underlay_interface", p["underlay_interface"])
        if p["mtu"] is not None and not 68 <= p["mtu"] <= 65535:
            found.append(f"mtu: {p['mtu']} is out of range 68..65535")
        if p["fou_port"] is not None:
            if not 1 <= p["fou_port"] <= 65535:
                found.append(f"fou_port: {p['fou_port']} is out of range 1..65535")
            if p["name"] == IPIP_FALLBACK:
                found.append(f"fou_port: {IPIP_FALLBACK} is the ipip module's own device; a UDP tunnel needs a "
                             "device of its own (another name)")
            if not p["local"] and self.state not in ("deleted", "gathered"):
                found.append("fou_port: a UDP tunnel needs local (the node's address, which tells the kernel "
                             "which device receives the peers' datagrams)")
        self.tunnel = {"name": p["name"], "mtu": p["mtu"], "address": p["address"], "fou_port": p["fou_port"],
                       "local": p["local"], "underlay_interface": p["underlay_interface"]}
        return found

    def rendered(self) -> dict[str, Any]:
        return {"rendered": [c for o in tunnel_objects(self.tunnel) for c in o.add_commands()]}

    def gathered(self, have: KernelState) -> dict[str, Any]:
        """name, mtu and the one address: the options that give this tunnel again ({}: no such device)."""
        existing = have.objects.get(("link", None, self.p["name"]))
        if existing is None:
            return {}
        addresses = [a.cidr for a in have.of_type(Address) if a.dev == self.p["name"]]
        options = {"name": existing.name, "mtu": existing.mtu, "address": addresses[0] if addresses else None}
        if existing.ipip is not None and existing.ipip.encap_dport:
            options |= {"fou_port": existing.ipip.encap_dport, "local": existing.ipip.local,
                        "underlay_interface": existing.ipip.underlay}
        return options

    def gathered_facts(self, have: KernelState) -> dict[str, Any]:
        existing = have.objects.get(("link", None, self.p["name"]))
        return {} if existing is None else {"kind": existing.kind, "up": existing.up,
                                            "owned": is_owned_alias(existing.alias)}

    def plan(self, have: KernelState) -> list[Change]:
        name = self.p["name"]
        existing = have.objects.get(("link", None, name))
        addresses = [a for a in have.of_type(Address) if a.dev == name]
        if existing is not None and existing.kind != "ipip":
            self.fail(f"device {name} exists but is a {existing.kind} device")
        owned = existing is not None and is_owned_alias(existing.alias)
        own_port = podnets_fou_port(existing)
        self.extra: dict[str, Any] = {}
        if self.state == "deleted":
            # Only a tunnel podnet configured (alias podnet:tunnel) is taken back; anyone else's stays.
            if not owned:
                return []
            if name != IPIP_FALLBACK:  # podnet's own device goes, with its FOU port
                port = have.objects.get(("fou", None, own_port)) if own_port else None
                return ([Change("delete", None, port)] if port is not None else []) + [Change("delete", None, existing)]
            return [Change("delete", None, a) for a in addresses] + [
                Change("update", Link(name=name, kind="ipip", up=False, alias=""), existing, ["up", "alias"])]
        port = self.tunnel["fou_port"]
        foreign = foreign_fou_port(port, have.objects)
        if foreign:
            self.fail(foreign)
        if not self.tunnel["mtu"]:
            self.tunnel["mtu"] = self.underlay_mtu(have) - (UDP_OVERHEAD if port else IPIP_OVERHEAD)
        purge = None if self.state == "merged" else (
            lambda o: (isinstance(o, Address) and o.dev == name) or (isinstance(o, FouPort) and o.port == own_port))
        self.extra["mtu"] = self.tunnel["mtu"]
        return plan_owned(self.module, tunnel_objects(self.tunnel), have, purge)

    def record(self) -> None:
        persist_result(self.module, f"ipip_tunnel-{self.p['name']}", tunnel_objects(self.tunnel))


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    IpipTunnel(module).run()
