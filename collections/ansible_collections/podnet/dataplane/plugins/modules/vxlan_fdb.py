#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vxlan_fdb
short_description: Manage a VXLAN tunnel endpoint and its static peers (neighbour + fdb entries)
version_added: "0.1.0"
description:
  - Creates the VXLAN device a flannel- or calico-style overlay uses (for example C(flannel.1)) with
    its VNI, UDP port, local address, underlay device, MTU, MAC and C(nolearning), gives it its C(/32)
    address, and programs one permanent neighbour entry (peer VTEP address -> peer VTEP MAC) and one
    static forwarding entry (peer VTEP MAC -> peer node IP) per peer, exactly as
    C(ip neigh add) and C(bridge fdb add) would.
  - Reads the kernel once (one netlink dump per object kind), computes the difference and writes
    only that. Check mode and diff report exactly what a real run would change.
  - Only ever removes entries on the VXLAN device it manages; the device is marked as podnet's
    through its interface alias (C(podnet:vtep)).
author:
  - podnet maintainers (@podnet)
requirements:
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
    description: VXLAN device name, at most 15 characters.
    type: str
    required: true
  vni:
    description: VXLAN network identifier (1..16777215). flannel uses 1, calico 4096.
    type: int
    default: 1
  port:
    description: UDP destination port. flannel uses 8472, calico and IANA 4789.
    type: int
    default: 8472
  local:
    description: This node's underlay IPv4 address (the tunnel source). Required unless I(state=deleted) or I(state=gathered).
    type: str
  underlay_interface:
    description:
      - Underlay device the tunnel is bound to (C(dev) of C(ip link add ... type vxlan)).
      - Defaults to the interface that holds I(local).
    type: str
  mtu:
    description: Device MTU. Defaults to the underlay device's MTU minus the 50 bytes of VXLAN overhead.
    type: int
  mac:
    description: VTEP MAC address peers were told about. Defaults to whatever the kernel picks at creation.
    type: str
  address:
    description: Address of the VTEP in CIDR form, for flannel the node subnet's network address as C(/32).
    type: str
  learning:
    description: Whether the device learns remote MACs. podnet programs peers statically, so C(false).
    type: bool
    default: false
  tx_checksum_offload:
    description:
      - TX checksum offload (C(tx-checksum-ip-generic)) on the device.
      - C(auto) decides from the node's kernel (C(uname -r)). Before 5.7 it is turned off, as flannel does;
        those kernels send SNATed VXLAN packets with a wrong inner checksum and connections stall for about
        63 seconds (kubernetes issue 88986, calico issue 3145). From 5.7 on the bug is fixed and the device
        keeps the kernel's default, on; with the offload off the device also loses segmentation offload,
        which cost flannel-vxlan about five sixths of its throughput in podnet's benchmark.
        A kernel release that cannot be read counts as old (off).
      - C(off) or C(on) force it whatever the kernel. Some virtual NICs need C(off) on any kernel, for
        example vmxnet3 (VMware), whose tunnel checksum offload has had bugs of its own; C(true)/C(false)
        mean C(on)/C(off).
      - The decision and its reason are returned as RV(tx_checksum_offload), shown in the diff when the
        device is created or the feature changes, and recorded for the boot restore, which decides C(auto)
        again for the kernel that booted.
    type: str
    choices: [auto, "on", "off"]
    default: auto
  peers:
    description: The other nodes' endpoints.
    type: list
    elements: dict
    default: []
    suboptions:
      vtep_ip:
        description: The peer VTEP's overlay address (neighbour entry destination), e.g. C(10.244.2.0).
        type: str
        required: true
      mac:
        description: The peer VTEP's MAC address.
        type: str
        required: true
      node_ip:
        description: The peer's underlay IP (fdb entry destination).
        type: str
        required: true
  state:
    description:
      - C(merged) creates or updates the device and the listed peers, leaving other entries alone.
      - C(replaced) also removes stale entries of the listed peers (an old MAC of a listed node IP).
      - C(overridden) makes the device hold exactly the listed peers and address.
      - C(deleted) removes the listed peers' entries, or the whole device when no peers are listed.
        A device of that name that is not podnet's (its alias is not C(podnet:*)) is left as it is, and the
        result says so in C(left_alone).
      - C(gathered) returns the device and its peers as this module's options (valid input again).
      - C(rendered) returns the commands for the given configuration without touching the host.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
  - podnet.dataplane.ownership
"""

EXAMPLES = r"""
- name: flannel.1 as on node 192.168.0.4 of the seed topology, with one peer
  podnet.dataplane.vxlan_fdb:
    name: flannel.1
    vni: 1
    port: 8472
    local: 192.168.0.4
    mac: 56:ad:b6:5f:16:d7
    address: 10.244.0.0/32
    peers:
      - vtep_ip: 10.244.2.0
        mac: 22:3d:4d:c5:65:ff
        node_ip: 192.168.0.16
    state: overridden

- name: Show what the commands would be, touching nothing
  podnet.dataplane.vxlan_fdb:
    name: flannel.1
    local: 192.168.0.4
    underlay_interface: eth0
    state: rendered
  register: vtep

- name: Remove the VTEP and everything on it
  podnet.dataplane.vxlan_fdb:
    name: flannel.1
    state: deleted
"""

RETURN = r"""
left_alone:
  description: With I(state=deleted), why a device of that name was not removed (it is not podnet's).
  returned: when I(state=deleted) finds a device that is not podnet's
  type: str
commands:
  description: The changes made (or, in check mode, that would be made) as C(ip)/C(bridge) commands.
  returned: always
  type: list
  elements: str
  sample: ["ip neigh add 10.244.2.0 dev flannel.1 lladdr 22:3d:4d:c5:65:ff"]
changes:
  description: Structured form of I(commands), one entry per kernel object.
  returned: always
  type: list
  elements: dict
mtu:
  description: MTU of the VXLAN device after the run (wanted MTU in check mode).
  returned: when state is merged, replaced or overridden
  type: int
  sample: 1450
mac:
  description: MAC address of the VXLAN device after the run.
  returned: when state is merged, replaced or overridden
  type: str
tx_checksum_offload:
  description: The TX checksum offload decision for this node (see I(tx_checksum_offload)).
  returned: when state is merged, replaced or overridden
  type: dict
  contains:
    mode:
      description: The mode asked for.
      type: str
      sample: auto
    kernel:
      description: The node's kernel release the decision was made for.
      type: str
      sample: 6.1.0-28-amd64
    enabled:
      description: Whether the offload is on.
      type: bool
      sample: true
    reason:
      description: Why, in words.
      type: str
      sample: "auto: kernel 6.1.0-28-amd64 is 5.7 or newer: the kernel's default, on"
rendered:
  description:
    - The full configuration as commands, for I(state=rendered), the TX checksum offload decision for this
      node's kernel last (a comment with its reason, then the C(ethtool -K) command).
  returned: when state is rendered
  type: list
  elements: str
gathered:
  description:
    - The device and its peers as this module's options (name, vni, port, local, underlay_interface, learning,
      mtu, mac, address, tx_checksum_offload as C(on)/C(off), peers); C({}) when there is no such device.
      A peer is a permanent neighbour entry with the fdb entry of its MAC.
    - Valid input again - given back as this module's options (state merged or overridden), it changes nothing.
  returned: when state is gathered
  type: dict
kind:
  description: With I(state=gathered), the device's kind (C(vxlan) for a VTEP).
  returned: when state is gathered and the device exists
  type: str
owned:
  description: With I(state=gathered), whether the device carries podnet's marker (alias C(podnet:*)).
  returned: when state is gathered and the device exists
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.vxlan_fdb_resource import (
    ARGUMENT_SPEC,
    REQUIRED_IF,
    run,
)


def main() -> None:
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, required_if=REQUIRED_IF))


if __name__ == "__main__":
    main()
