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
  - Linux with rtnetlink; the module uses only the Python standard library on the node (no pyroute2)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
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
  networks:
    description:
      - The networks podnet's peer routes lie in (the cluster CIDR). A route of podnet's protocol C(152)
        whose destination lies outside all of them is someone else's, and I(state=overridden) or
        I(state=deleted) leave it alone.
      - Empty - every route of protocol C(152) (that does not leave through a pod's interface) is podnet's.
      - Listed routes must lie inside these networks.
    type: list
    elements: str
    default: []
  state:
    description:
      - C(merged) adds or corrects the listed routes.
      - C(replaced) is the same as C(merged) for routes (a destination has one route).
      - C(overridden) also removes every other podnet peer route.
      - C(deleted) removes the listed routes, or all podnet peer routes when none are listed.
      - C(gathered) returns podnet's peer routes as this module's options (valid input again).
      - C(rendered) returns the C(ip route add) commands without touching the host.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
  - podnet.dataplane.ownership
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
  description:
    - podnet's peer routes in the kernel as this module's options - C(routes) (dst, via, dev, onlink) and the
      C(networks) they were looked for in.
    - Valid input again - given back as this module's options (state merged or overridden), it changes nothing.
  returned: when state is gathered
  type: dict
  sample: {"routes": [{"dst": "10.244.1.0/24", "via": "10.244.1.0", "dev": "flannel.1", "onlink": true}],
           "networks": ["10.244.0.0/16"]}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.pod_route_resource import (
    ARGUMENT_SPEC,
    run,
)


def main() -> None:
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True))


if __name__ == "__main__":
    main()
