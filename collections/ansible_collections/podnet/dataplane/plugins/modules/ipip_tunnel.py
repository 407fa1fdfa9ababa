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
    "File exists"; like calico, podnet configures the existing one, and where the module is not loaded yet
    its netlink request loads it and configures the C(tunl0) that appears; the rendered command is
    C(modprobe ipip)).
  - Sets its MTU (default - the underlay MTU minus the 20 bytes of the outer IPv4 header), brings it
    up and gives it its C(/32) tunnel address from the node's pod block.
  - One netlink dump, a diff, and only the difference written; check mode and diff are exact.
author:
  - podnet maintainers (@podnet)
requirements:
  - the ipip kernel module on the managed node (not needed for I(state=rendered))
  - Linux with rtnetlink; the module uses only the Python standard library on the node (no pyroute2)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
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
      - C(gathered) returns the device as this module's options (valid input again); C(rendered) the commands,
        touching nothing.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
  - podnet.dataplane.ownership
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
  description:
    - The device as this module's options (name, mtu, and its one address); C({}) when there is no such device.
    - Valid input again - given back as this module's options (state merged or overridden), it changes nothing.
  returned: when state is gathered
  type: dict
kind:
  description: With I(state=gathered), the device's kind.
  returned: when state is gathered and the device exists
  type: str
up:
  description: With I(state=gathered), whether the device is up.
  returned: when state is gathered and the device exists
  type: bool
owned:
  description: With I(state=gathered), whether the device carries podnet's marker (alias C(podnet:tunnel)).
  returned: when state is gathered and the device exists
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.ipip_tunnel_resource import (
    ARGUMENT_SPEC,
    run,
)


def main() -> None:
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True))


if __name__ == "__main__":
    main()
