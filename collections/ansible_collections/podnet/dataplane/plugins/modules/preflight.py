#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: preflight
short_description: Check a node before podnet changes anything on any node (read-only)
version_added: "0.1.0"
description:
  - Confirms what the planner cannot know from the inventory alone - that the node's IP is really
    configured on one of its interfaces (and on I(underlay_interface) when that is given), and that
    pyroute2 works - and reports the underlay device and its MTU, so a play can check that all nodes
    agree before any of them is touched.
  - Never changes anything; C(changed) is always false.
author:
  - podnet maintainers (@podnet)
requirements:
  - pyroute2 on the managed node
options:
  node_ip:
    description: The node's underlay IPv4 address (C(podnet_node_ip), a /prefix is ignored).
    type: str
    required: true
  underlay_interface:
    description: The underlay device the inventory names, if any.
    type: str
"""

EXAMPLES = r"""
- name: Check the node before changing anything anywhere
  podnet.dataplane.preflight:
    node_ip: 172.30.0.11
  register: podnet_preflight
"""

RETURN = r"""
underlay_interface:
  description: The interface holding I(node_ip).
  returned: success
  type: str
  sample: eth0
underlay_mtu:
  description: Its MTU.
  returned: success
  type: int
  sample: 1500
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.podnet.dataplane.plugins.module_utils.netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    Engine,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.objects import Address


def main() -> None:
    module = AnsibleModule(argument_spec={"node_ip": {"type": "str", "required": True},
                                          "underlay_interface": {"type": "str"}},
                           supports_check_mode=True)
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=str(PYROUTE2_IMPORT_ERROR))
    node_ip = module.params["node_ip"].split("/")[0]
    named = module.params["underlay_interface"]
    with Engine() as engine:
        have = engine.gather({Address})
    holder = have.device_holding(node_ip)
    if holder is None:
        module.fail_json(msg=f"podnet preflight: podnet_node_ip {node_ip} is not configured on any interface of "
                             "this node; nothing was changed on any node")
    if named and holder.name != named:
        module.fail_json(msg=f"podnet preflight: podnet_underlay_interface {named} does not hold podnet_node_ip "
                             f"{node_ip} (it is on {holder.name}); nothing was changed on any node")
    module.exit_json(changed=False, underlay_interface=holder.name, underlay_mtu=holder.mtu)


if __name__ == "__main__":
    main()
