#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: proxy_arp
short_description: Set calico's proxy-ARP sysctls on host-side pod interfaces, and restore them
version_added: "0.1.0"
description:
  - On every matching interface sets what calico's felix sets on a pod's host-side veth -
    C(net.ipv4.conf.<if>.proxy_arp=1), C(net.ipv4.neigh.<if>.proxy_delay=0),
    C(net.ipv4.conf.<if>.forwarding=1), C(net.ipv4.conf.<if>.route_localnet=1) and
    C(net.ipv4.conf.<if>.rp_filter=1) - so the node answers ARP for C(169.254.1.1), routes everything a
    pod sends, and drops what a pod sends with someone else's source address.
  - Before changing a value for the first time it records the old one in I(state_file);
    I(state=deleted) writes the recorded values back.
  - Reads and writes C(/proc/sys) of the network namespace the task runs in; check mode and diff are exact.
author:
  - podnet maintainers (@podnet)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  interfaces:
    description: Interface names or shell-style globs (for example C(cali*)), matched against the node's interfaces.
    type: list
    elements: str
    required: true
  settings:
    description: Sysctls to set per interface; C({}) in a name stands for the interface.
    type: dict
    default:
      net.ipv4.conf.{}.proxy_arp: 1
      net.ipv4.neigh.{}.proxy_delay: 0
      net.ipv4.conf.{}.forwarding: 1
      net.ipv4.conf.{}.route_localnet: 1
      net.ipv4.conf.{}.rp_filter: 1
  state_file:
    description: Where original values are remembered (JSON, mode 0600).
    type: path
    default: /var/lib/podnet/proxy_arp.json
  state:
    description:
      - C(merged) (and C(replaced), C(overridden)) set the values on the matching interfaces.
      - C(deleted) restores the recorded values on the matching interfaces and forgets them.
      - C(gathered) returns the interfaces and their common values as this module's options; C(rendered) the
        C(sysctl -w) commands, touching nothing.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
notes:
  - Interfaces that do not exist are skipped (a glob that matches nothing is not an error).
"""

EXAMPLES = r"""
- name: Proxy ARP on every calico pod interface
  podnet.dataplane.proxy_arp:
    interfaces: ["cali*"]

- name: Put the old values back
  podnet.dataplane.proxy_arp:
    interfaces: ["cali*"]
    state: deleted
"""

RETURN = r"""
commands:
  description: The C(sysctl -w) commands run (or that would run in check mode).
  returned: always
  type: list
  elements: str
  sample: ["sysctl -w net.ipv4.conf.cali1234567890a.proxy_arp=1"]
interfaces:
  description: Interfaces that matched.
  returned: always
  type: list
  elements: str
gathered:
  description:
    - The matching interfaces by name and the C(settings) they all hold alike (a setting whose value differs
      between them is left out; C(values) has every value).
    - Valid input again - given back as this module's options (state merged or overridden), it changes nothing.
  returned: when state is gathered
  type: dict
values:
  description: With I(state=gathered), every value read (sysctl name -> value).
  returned: when state is gathered
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.proxy_arp_resource import (
    ARGUMENT_SPEC,
    run,
)


def main() -> None:
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True))


if __name__ == "__main__":
    main()
