#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pod_network
short_description: Manage the node side of pod networking (pod bridge, pod veths, forwarding)
version_added: "0.1.0"
description:
  - Creates the pod bridge (flannel's C(cni0)) with the node subnet's gateway address, turns on
    C(net.ipv4.ip_forward), and wires pods the way the CNI bridge plugin (and seed 003) does
    it - a veth pair whose host end is enslaved to the bridge and whose other end lives in the pod's
    network namespace with the pod's address and a default route via the bridge.
  - Pods here are network namespaces (lab pods, or namespaces a runtime created). A missing pod
    namespace is created.
  - Reads the kernel once per namespace, diffs, and writes only the difference; check mode and diff
    report exactly what would change. Removes only devices marked as podnet's (alias C(podnet:...)).
author:
  - podnet maintainers (@podnet)
requirements:
  - Linux with rtnetlink; the module uses only the Python standard library on the node (no pyroute2)
  - iproute2's C(ip) on the node, to create pod network namespaces that do not exist
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  mode:
    description:
      - C(bridge) is flannel's wiring - host veth ends enslaved to I(bridge), pods routed via its address.
      - C(routed) is calico's - host veth ends without address or bridge, a C(/32) route per pod on the
        node, and inside the pod C(169.254.1.1 dev eth0) plus C(default via 169.254.1.1); the node answers
        for 169.254.1.1 by proxy ARP (set that with M(podnet.dataplane.proxy_arp)).
    type: str
    choices: [bridge, routed]
    default: bridge
  host_sysctls:
    description:
      - I(mode=routed) only - sysctls set on each pod's host interface in the same batch that creates its veth,
        before the pod's end gets its address and routes; C({}) in a name stands for the interface
        (C(net.ipv4.conf.{}.NAME) or C(net.ipv4.neigh.{}.NAME), whole-number values), as in
        M(podnet.dataplane.proxy_arp)'s I(settings).
      - Calico's CNI plugin sets proxy ARP and C(proxy_delay=0) on a new veth before the pod runs; set later, the
        pod's first ARP for C(169.254.1.1) goes unanswered, or is answered after a random delay of up to
        0.8 s. M(podnet.dataplane.node_apply) passes the pods' sysctls here; M(podnet.dataplane.proxy_arp) still
        remembers and gives back what it changes.
    type: dict
    default: {}
  bridge:
    description: The pod bridge (I(mode=bridge) only).
    type: dict
    suboptions:
      name:
        description: Bridge device name.
        type: str
        default: cni0
      address:
        description: Gateway address of the node's pod subnet in CIDR form, e.g. C(10.244.0.1/24).
        type: str
        required: true
  mtu:
    description: MTU of the bridge and of both ends of every pod veth (the overlay MTU).
    type: int
  forwarding:
    description: Set C(net.ipv4.ip_forward=1) on the node.
    type: bool
    default: true
  pods:
    description: Pods wired to the bridge.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Pod name (recorded in the host veth's alias).
        type: str
        required: true
      netns:
        description: The pod's network namespace name (under C(/run/netns)).
        type: str
        required: true
      address:
        description: Pod address in CIDR form, inside the node subnet.
        type: str
        required: true
      gateway:
        description: Default gateway inside the pod (the bridge address); C(169.254.1.1) in I(mode=routed).
        type: str
      interface:
        description: Interface name inside the pod.
        type: str
        default: eth0
      host_interface:
        description:
          - Host-side veth name. Defaults to C(veth) (bridge mode) or C(cali) (routed mode) plus hex digits
            derived from the pod namespace.
        type: str
      labels:
        description: The pod's labels. Not used here; network policy selects pods by them.
        type: dict
        default: {}
  state:
    description:
      - C(merged) creates or corrects the bridge and the listed pods.
      - C(replaced) is C(merged), plus removal of stray addresses on the bridge.
      - C(overridden) also removes podnet pod veths of pods no longer listed.
      - C(deleted) removes the listed pods' veths, or every podnet pod veth and the bridge when no pods are listed.
      - C(gathered) returns the bridge and podnet's pods as this module's options (valid input again).
      - C(rendered) returns the commands without touching the host.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
  - podnet.dataplane.ownership
"""

EXAMPLES = r"""
- name: cni0 and one pod, as on 192.168.0.4 in seed 003
  podnet.dataplane.pod_network:
    bridge: {name: cni0, address: 10.244.0.1/24}
    mtu: 1450
    pods:
      - name: web
        netns: web
        address: 10.244.0.3/24
        gateway: 10.244.0.1
    state: overridden
"""

RETURN = r"""
commands:
  description: Changes made (or that would be made in check mode) as commands.
  returned: always
  type: list
  elements: str
changes:
  description: Structured form of I(commands).
  returned: always
  type: list
  elements: dict
rendered:
  description: The configuration as commands.
  returned: when state is rendered
  type: list
  elements: str
gathered:
  description:
    - podnet's pods and their bridge as this module's options (mode, bridge, mtu, forwarding, pods). Each pod's
      namespace and interface are found from its veth's other end, its address and gateway read inside the
      pod; labels are not kernel state and do not come back.
    - Valid input again - given back as this module's options (state merged or overridden), it changes nothing.
  returned: when state is gathered
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.pod_network_resource import (
    ARGUMENT_SPEC,
    run,
)


def main() -> None:
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True))


if __name__ == "__main__":
    main()
