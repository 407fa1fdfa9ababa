#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: cni_config
short_description: Write the node's CNI network configuration list for the reference CNI plugins
version_added: "0.1.0"
description:
  - Renders the node's CNI conflist from its podnet plan (the C(podnet_node) fact set by the
    C(podnet_plan) role) and writes it to I(dest), so that a container runtime, or anyone invoking the
    containernetworking reference plugins (C(/usr/lib/cni) on Debian), attaches pods to the network
    podnet built.
  - flannel-style backends (C(flannel-vxlan), C(flannel-host-gw)) get the C(bridge) plugin on the pod
    bridge (C(cni0)) with C(isGateway=true), C(ipMasq=false) (podnet installs flannel's masquerade rules
    itself), C(hairpinMode=true) and C(host-local) IPAM on the node's subnet with a route to the
    cluster CIDR - what flannel's own CNI plugin delegates to C(bridge).
  - calico-style backends (C(calico-*), C(canal), C(romana-style), C(weave-style)) get the C(ptp) plugin
    with C(host-local) IPAM. As with calico, each pod gets a host route to its /32 through its veth and
    reaches everything through a link-scope route to one gateway address. Unlike calico, the gateway
    is the subnet's first address (reserved by podnet), which ptp assigns as a /32 to every host-side
    veth, instead of C(169.254.1.1) answered by proxy ARP. ptp cannot use C(169.254.1.1) - it adds the
    IPAM routes via the gateway before the gateway is reachable and the kernel refuses them.
  - IPAM only hands out addresses that podnet's lab pods (C(podnet_pods)) do not use - the free addresses
    of the subnet become C(rangeStart)/C(rangeEnd) ranges of one host-local range set.
  - The file is written atomically (temporary file in the same directory, then renamed) with mode 0644.
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
  node:
    description:
      - This node's part of the podnet plan (C(podnet_node)); needs C(pod_mode), C(subnet), C(cluster_cidr)
        and uses C(bridge), C(pods), C(mtu) and C(render_mtu).
      - Required unless I(state=deleted).
    type: dict
  dest:
    description: Path of the conflist file.
    type: path
    default: /etc/cni/net.d/10-podnet.conflist
  name:
    description: Network name (the conflist's C(name); host-local keeps its leases under it).
    type: str
    default: podnet
  cni_version:
    description: CNI spec version written as C(cniVersion).
    type: str
    default: 1.0.0
  ipam_data_dir:
    description:
      - host-local's C(dataDir) (where it records leases). Default is the plugin's own,
        C(/var/lib/cni/networks). Nodes that share a filesystem (the namespace lab) need one each.
    type: path
  mtu:
    description: MTU of the pod veths. Defaults to the plan's MTU (C(podnet_mtu), or the underlay MTU minus the overlay's overhead).
    type: int
  default_route:
    description: Also route C(0.0.0.0/0) to the gateway (the cluster CIDR is always routed).
    type: bool
    default: false
  exclude:
    description: Further addresses of the node's subnet that IPAM must never hand out.
    type: list
    elements: str
    default: []
  extra_plugins:
    description: Plugin configurations appended to the list after the main plugin (for example C(portmap)).
    type: list
    elements: dict
    default: []
  state:
    description:
      - C(merged) writes the file when its content or mode differ.
      - C(deleted) removes the file.
      - C(rendered) returns the conflist without touching the node.
    type: str
    choices: [merged, deleted, rendered]
    default: merged
seealso:
  - name: CNI reference plugins
    description: The bridge, ptp and host-local plugins.
    link: https://www.cni.dev/plugins/current/
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: CNI configuration for the node's pods
  podnet.dataplane.cni_config:
    node: "{{ podnet_node }}"

- name: Per-node file and IPAM state (namespace lab)
  podnet.dataplane.cni_config:
    node: "{{ podnet_node }}"
    dest: "/run/podnet-lab/{{ podnet_lab_prefix }}/{{ inventory_hostname }}/cni/10-podnet.conflist"
    ipam_data_dir: "/run/podnet-lab/{{ podnet_lab_prefix }}/{{ inventory_hostname }}/cni/ipam"

- name: Show what would be written
  podnet.dataplane.cni_config:
    node: "{{ podnet_node }}"
    state: rendered
  register: cni

- name: Remove the configuration
  podnet.dataplane.cni_config:
    state: deleted
"""

RETURN = r"""
conflist:
  description: The network configuration list (rendered, or as written).
  returned: unless state is deleted
  type: dict
  sample:
    cniVersion: 1.0.0
    name: podnet
    plugins:
      - type: bridge
        bridge: cni0
        isGateway: true
        isDefaultGateway: false
        ipMasq: false
        hairpinMode: true
        mtu: 1450
        ipam:
          type: host-local
          ranges: [[{subnet: 10.244.1.0/24, rangeStart: 10.244.1.4, rangeEnd: 10.244.1.254, gateway: 10.244.1.1}]]
          routes: [{dst: 10.244.0.0/16}]
dest:
  description: The conflist file.
  returned: always
  type: str
rendered:
  description: The file content (JSON) that was, or would be, written.
  returned: unless state is deleted
  type: str
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.node.files import converge, remove
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.cni import (
    DEFAULT_CNI_VERSION,
    DEFAULT_DEST,
    DEFAULT_NAME,
    CNIError,
    dumps,
    render_conflist,
)

FILE_MODE = 0o644


def read_current(path: str) -> tuple[str | None, int | None]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = handle.read()
        return content, stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError:
        return "", stat.S_IMODE(os.stat(path).st_mode)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "node": {"type": "dict"},
            "dest": {"type": "path", "default": DEFAULT_DEST},
            "name": {"type": "str", "default": DEFAULT_NAME},
            "cni_version": {"type": "str", "default": DEFAULT_CNI_VERSION},
            "ipam_data_dir": {"type": "path"},
            "mtu": {"type": "int"},
            "default_route": {"type": "bool", "default": False},
            "exclude": {"type": "list", "elements": "str", "default": []},
            "extra_plugins": {"type": "list", "elements": "dict", "default": []},
            "state": {"type": "str", "choices": ["merged", "deleted", "rendered"], "default": "merged"},
        },
        required_if=[("state", "merged", ["node"]), ("state", "rendered", ["node"])],
        supports_check_mode=True,
    )
    p = module.params
    dest = p["dest"]
    before = read_current(dest)[0] if p["state"] != "rendered" else None

    if p["state"] == "deleted":
        changed = before is not None
        if changed and not module.check_mode:
            remove(dest)
        module.exit_json(changed=changed, dest=dest,
                         diff={"before": before or "", "after": "", "before_header": dest, "after_header": dest})

    try:
        conflist = render_conflist(p["node"], name=p["name"], cni_version=p["cni_version"],
                                   data_dir=p["ipam_data_dir"], mtu=p["mtu"], default_route=p["default_route"],
                                   exclude=p["exclude"], extra_plugins=p["extra_plugins"])
    except (CNIError, ValueError, KeyError, TypeError) as exc:
        module.fail_json(msg=f"podnet.cni_config: {exc}")
    content = dumps(conflist)
    if p["state"] == "rendered":
        module.exit_json(changed=False, dest=dest, conflist=conflist, rendered=content)

    try:
        changed = converge(dest, content, FILE_MODE, folder_mode=0o755, check=module.check_mode)
    except OSError as exc:
        module.fail_json(msg=f"podnet.cni_config: cannot write {dest}: {exc}")
    module.exit_json(changed=changed, dest=dest, conflist=conflist, rendered=content,
                     diff={"before": before or "", "after": content, "before_header": dest, "after_header": dest})


if __name__ == "__main__":
    main()
