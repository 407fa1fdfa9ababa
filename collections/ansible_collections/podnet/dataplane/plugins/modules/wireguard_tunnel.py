#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: wireguard_tunnel
short_description: Manage a WireGuard device between nodes (flannel's flannel-wg, calico's wireguard.cali)
version_added: "0.5.0"
description:
  - A WireGuard device of podnet's own (alias C(podnet:wireguard)), up, with its MTU, the node's C(/32), its
    listen port and private key, and one peer per other node - its public key, its endpoint and the pod
    subnet it may send from and is sent to (allowed IPs). The routes to the peers' subnets over the device are
    M(podnet.dataplane.pod_route)'s.
  - The private key stays in its file on the node (I(private_key_file), made by
    M(podnet.dataplane.wireguard_key)). The module reads it only to write it to the kernel; plans, diffs,
    commands, results and boot records hold the file's path and the public key it gives, never the key.
  - One netlink dump (the device over rtnetlink, its settings and peers over the generic netlink family
    C(wireguard)), a diff, and only the difference written; check mode and diff are exact.
  - The rendered commands use C(wg) (package wireguard-tools) with the key as a file reference, as
    C(wg set DEV listen-port P private-key FILE); the module itself needs no C(wg).
author:
  - podnet maintainers (@podnet)
requirements:
  - the wireguard kernel module on the managed node (built in, or loadable; not needed for I(state=rendered))
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
    description: The device (flannel names it C(flannel-wg), calico C(wireguard.cali)).
    type: str
    required: true
  mtu:
    description: Device MTU. Defaults to the MTU of the interface holding I(local) minus 60 (outer IPv4, UDP and
      WireGuard's header and tag).
    type: int
  local:
    description: This node's underlay address; used to find the underlay MTU when I(mtu) is not given.
    type: str
  listen_port:
    description: The UDP port the device receives on (flannel's and calico's 51820).
    type: int
    default: 51820
  private_key_file:
    description:
      - The node's private key file, in C(wg genkey)'s format (made by M(podnet.dataplane.wireguard_key)). It is
        read without following a symbolic link (a link there is refused), and only into the kernel's request.
      - Omitted, the device's key is left as it is (what C(gathered) gives back, since the kernel does not say
        which file a key came from).
    type: path
  address:
    description: The device's address in CIDR form, e.g. C(10.244.0.0/32).
    type: str
  peers:
    description: The other nodes.
    type: list
    elements: dict
    default: []
    suboptions:
      public_key:
        description: The peer's public key (C(wg pubkey)'s form).
        type: str
        required: true
      endpoint:
        description: Where the peer is reached, C(address:port).
        type: str
      allowed_ips:
        description: The networks the peer may send from and is sent to (its pod subnet).
        type: list
        elements: str
        default: []
  state:
    description:
      - C(merged) configures the device and adds or corrects the listed peers; C(replaced) and C(overridden)
        also remove the device's other peers and addresses.
      - C(deleted) deletes the device when it is podnet's (its peers go with it); anyone else's is left alone.
      - C(gathered) returns the device as this module's options (valid input again, without
        I(private_key_file)); C(rendered) the commands, touching nothing.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
  - podnet.dataplane.ownership
"""

EXAMPLES = r"""
- name: The node's key (made on the node, never leaving it)
  podnet.dataplane.wireguard_key:
    device: flannel-wg
  register: key

- name: flannel-wg on node 192.168.0.4, with one peer
  podnet.dataplane.wireguard_tunnel:
    name: flannel-wg
    local: 192.168.0.4
    private_key_file: "{{ key.path }}"
    address: 10.244.0.0/32
    peers:
      - public_key: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
        endpoint: 192.168.0.5:51820
        allowed_ips: [10.244.1.0/24]
    state: overridden
"""

RETURN = r"""
commands:
  description: Changes as C(ip) and C(wg) commands (the private key as its file).
  returned: always
  type: list
  elements: str
mtu:
  description: The device MTU after the run (wanted MTU in check mode).
  returned: when state is merged, replaced or overridden
  type: int
  sample: 1440
public_key:
  description: This node's public key, from I(private_key_file).
  returned: when state is merged, replaced or overridden and I(private_key_file) is given
  type: str
rendered:
  description: The configuration as commands.
  returned: when state is rendered
  type: list
  elements: str
gathered:
  description:
    - The device as this module's options (name, mtu, listen_port, its one address, peers); C({}) when there is
      no such device.
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
  description: With I(state=gathered), whether the device carries podnet's marker (alias C(podnet:wireguard)).
  returned: when state is gathered and the device exists
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.wireguard_tunnel_resource import (
    ARGUMENT_SPEC,
    run,
)


def main() -> None:
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True))


if __name__ == "__main__":
    main()
