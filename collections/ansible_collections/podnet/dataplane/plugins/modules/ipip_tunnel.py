#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: ipip_tunnel
short_description: Manage calico's IPIP tunnel device (tunl0)
version_added: "0.1.0"
description:
  - Configures the IPIP device calico uses, C(tunl0) - the fallback tunnel the kernel creates in every
    network namespace when the C(ipip) module loads (so C(ip tunnel add tunl0 mode ipip) would answer
    "File exists"; like calico, podnet configures the existing one and creates it only when missing).
  - Sets its MTU (default - the underlay MTU minus the 20 bytes of the outer IPv4 header), brings it
    up and gives it its C(/32) tunnel address from the node's pod block.
  - One netlink dump, a diff, and only the difference written; check mode and diff are exact.
author:
  - podnet maintainers (@podnet)
requirements:
  - pyroute2 and the ipip kernel module on the managed node (not needed for I(state=rendered))
options:
  name:
    description: Tunnel device.
    type: str
    default: tunl0
  mtu:
    description: Tunnel MTU. Defaults to the MTU of the interface holding I(local) minus 20.
    type: int
  local:
    description: This node's underlay address; used to find the underlay MTU when I(mtu) is not given.
    type: str
  address:
    description: Tunnel address in CIDR form, e.g. C(10.244.0.0/32).
    type: str
  state:
    description:
      - C(merged), C(replaced) and C(overridden) configure the device (the latter two also remove other
        addresses from it).
      - C(deleted) removes its address, takes it down and drops podnet's mark; the fallback C(tunl0)
        itself cannot be deleted while the ipip module is loaded.
      - C(gathered) returns the device as the kernel has it; C(rendered) the commands, touching nothing.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - podnet.dataplane.persist
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: tunl0 as calico-ipip wants it on node 192.168.0.4
  podnet.dataplane.ipip_tunnel:
    local: 192.168.0.4
    address: 10.244.0.0/32
"""

RETURN = r"""
commands:
  description: Changes as C(ip) commands.
  returned: always
  type: list
  elements: str
mtu:
  description: The tunnel MTU after the run (wanted MTU in check mode).
  returned: when state is merged, replaced or overridden
  type: int
  sample: 1480
rendered:
  description: The configuration as commands.
  returned: when state is rendered
  type: list
  elements: str
gathered:
  description: The device as read from the kernel.
  returned: when state is gathered
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.podnet.dataplane.plugins.module_utils.builders import IPIP_OVERHEAD, tunnel_objects
from ansible_collections.podnet.dataplane.plugins.module_utils.netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    Change,
    Engine,
    plan,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.objects import Address, Link, is_owned_alias
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

ARGUMENT_SPEC = {
    "name": {"type": "str", "default": "tunl0"},
    "mtu": {"type": "int"},
    "local": {"type": "str"},
    "address": {"type": "str"},
    "persist_dir": PERSIST_OPTION,
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
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
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=str(PYROUTE2_IMPORT_ERROR))

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
            changes = plan(tunnel_objects(tunnel), have, purge)
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


if __name__ == "__main__":
    main()
