#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: ipip_tunnel
short_description: Manage calico's IPIP tunnel device (tunl0), or a UDP tunnel (foo-over-UDP)
version_added: "0.1.0"
description:
  - Configures the IPIP device calico uses, C(tunl0) - the fallback tunnel the kernel creates in every
    network namespace when the C(ipip) module loads (so C(ip tunnel add tunl0 mode ipip) would answer
    "File exists"; like calico, podnet configures the existing one, and where the module is not loaded yet
    its netlink request loads it and configures the C(tunl0) that appears; the rendered command is
    C(modprobe ipip)).
  - Sets its MTU (default - the underlay MTU minus the 20 bytes of the outer IPv4 header), brings it
    up and gives it its C(/32) tunnel address from the node's pod block.
  - With I(fou_port), the UDP transport instead (flannel's C(udp) backend without its daemon) - an IPIP device of
    podnet's own (I(name), not C(tunl0)) with foo-over-UDP encapsulation, whose every packet leaves as a UDP
    datagram from and to I(fou_port) with the inner IPv4 packet as its payload (the bytes flanneld's udp
    backend sends from its socket), and the FOU receive port (C(ip fou add port P ipproto 4)) that gives such
    datagrams to it. MTU default - the underlay MTU minus 28.
  - A FOU port has no place for an owner's mark; podnet takes one as its own only when podnet's device here
    sends to it, and refuses to create its tunnel over a port someone else made.
  - One netlink dump, a diff, and only the difference written; check mode and diff are exact.
author:
  - podnet maintainers (@podnet)
requirements:
  - the ipip kernel module on the managed node, and fou for I(fou_port) (not needed for I(state=rendered))
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
    description: Tunnel MTU. Defaults to the MTU of the interface holding I(local) minus 20 (minus 28 with
      I(fou_port)).
    type: int
  local:
    description:
      - This node's underlay address; used to find the underlay MTU when I(mtu) is not given.
      - With I(fou_port), also the device's local address (required), by which the kernel gives it the
        datagrams the peers send.
    type: str
  underlay_interface:
    description: With I(fou_port), the device the tunnel's packets leave by (C(ip link add ... dev)).
    type: str
  fou_port:
    description:
      - The UDP port of the UDP transport (flannel's udp backend uses 8285), on both ends. Needs a I(name)
        other than C(tunl0) and I(local).
    type: int
  address:
    description: Tunnel address in CIDR form, e.g. C(10.244.0.0/32).
    type: str
  state:
    description:
      - C(merged), C(replaced) and C(overridden) configure the device (the latter two also remove other
        addresses from it).
      - C(deleted) removes its address, takes it down and drops podnet's mark; the fallback C(tunl0)
        itself cannot be deleted while the ipip module is loaded. A device of podnet's own (a UDP tunnel) is
        deleted, with the FOU port it sends to.
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

- name: A UDP tunnel as flannel's udp backend sends (port 8285) on node 192.168.0.4
  podnet.dataplane.ipip_tunnel:
    name: flannel0
    local: 192.168.0.4
    underlay_interface: eth0
    fou_port: 8285
    address: 10.244.0.0/32
    state: overridden
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
    - The device as this module's options (name, mtu, and its one address; for a UDP tunnel also fou_port,
      local and underlay_interface); C({}) when there is no such device.
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
