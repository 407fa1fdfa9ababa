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
    configured on one of its interfaces (and on I(underlay_interface) when that is given) - and reports
    the underlay device and its MTU, so a play can check that all nodes agree before any of them is
    touched.
  - Checks that the node's kernel has the pieces its transport needs (I(kernel_features)) and refuses,
    naming them, before anything changes.
  - Given only I(node_ip), I(underlay_interface) and I(kernel_features), its action plugin answers from one
    shell line on the node (C(ip -j -d address show) and a read of C(/sys/module), the kernel configuration
    and C(/lib/modules)), so no Python runs there; with any other option, or where C(ip) gives no JSON, the
    module runs.
    The answers are the same either way.
  - Also reports what the cleanup tasks of the roles need to know (which devices exist, which of
    them podnet owns, which files and recorded states exist, whether podnet's iptables chains are
    there), so a role can skip a cleanup module that would find nothing to clean. Each of these
    answers errs towards "present" when it cannot be read.
  - Never changes anything; C(changed) is always false.
author:
  - podnet maintainers (@podnet)
requirements:
  - iproute2's C(ip) (with JSON output) on the managed node, or Python 3 (standard library only)
attributes:
  check_mode:
    support: full
    details: Read-only; it runs the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  node_ip:
    description: The node's underlay IPv4 address (C(podnet_node_ip), a /prefix is ignored).
    type: str
    required: true
  underlay_interface:
    description: The underlay device the inventory names, if any.
    type: str
  paths:
    description: Files or directories to look at (see the C(paths) return value).
    type: list
    elements: path
    default: []
  persist_dir:
    description: The modules' C(persist_dir); the names of the records in it are returned as C(persisted).
    type: path
  iptables_prefix:
    description:
      - Prefix of podnet's own iptables chains (C(PODNET-)); when given, C(iptables_save) of
        I(iptables_table) is searched for it and C(iptables_prefix_present) says whether it occurs.
    type: str
  iptables_table:
    description: The table searched for I(iptables_prefix).
    type: str
    default: filter
  kernel_features:
    description:
      - Kernel pieces the node must have (the plan's C(kernel_features) for its transport). Each is there
        when its module is loaded, built in or installed under C(/lib/modules/<release>); C(fou) also needs
        C(CONFIG_NET_FOU_IP_TUNNELS).
      - The run fails, naming what is missing, when the node shows for certain that one is not there (its
        kernel configuration has it unset, or its module directory lacks it). A node that can tell neither
        (a container with no C(/lib/modules) and no kernel configuration) is reported, not refused.
    type: list
    elements: str
    choices: [vxlan, ipip, fou, wireguard]
    default: []
  node_record:
    description:
      - The node's own record, which podnet's run writes there (C(podnet_node_record)); its content is returned as
        C(node_record) when it is podnet's. The plan role compares it with the lease file before it allocates
        anything (C(podnet.dataplane.node_leases)).
    type: path
  adopt:
    description:
      - Look at what a node programmed by someone else (flanneld, calico, hands) runs, to adopt it
        (C(playbooks/adopt.yml)); returned as C(adoptable). Read-only, like everything here.
    type: dict
    suboptions:
      vtep:
        description: The VTEP device the node's backend uses (C(flannel.1)); its MAC and addresses are returned.
        type: str
      bridge:
        description: The pod bridge (C(cni0)); its addresses are returned.
        type: str
      subnet_env:
        description: flannel's C(subnet.env); its C(FLANNEL_*) values are returned.
        type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
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
links:
  description: Names of all network devices of the node (its own namespace, not the pods').
  returned: success
  type: list
  elements: str
  sample: [eth0, flannel.1, lo]
owned_links:
  description: The devices among C(links) whose alias marks them as podnet's (C(podnet) or C(podnet:...)).
  returned: success
  type: list
  elements: str
  sample: [flannel.1]
paths:
  description:
    - One entry per path of I(paths) - C(exists), C(isdir), C(mode) (octal string, or null) and, for a
      regular file of at most 1 MiB, C(checksum) (SHA-1 of its content, else null).
    - A path that cannot be examined (permissions) counts as existing.
  returned: success
  type: dict
  sample: {"/run/flannel/subnet.env": {"exists": true, "isdir": false, "mode": "0644", "checksum": "da39..."}}
persisted:
  description: Names of the records in I(persist_dir) (file names without C(.json)); empty without I(persist_dir).
  returned: success
  type: list
  elements: str
  sample: [pod_route, vxlan_fdb-flannel.1]
kernel:
  description:
    - The node's kernel release and, for each of I(kernel_features), whether it is there (C(available) true,
      false, or null when the node cannot tell) and how (C(loaded), C(built in), C(loadable module), or why not).
  returned: always
  type: dict
  sample: {"release": "6.1.0-28-amd64", "features": {"ipip": {"available": true, "how": "loadable module"}}}
node_record:
  description:
    - The node's record at I(node_record) - its pod subnet, VTEP MAC, backend, node IP and cluster CIDR as
      podnet's last run on it wrote them - or null where there is none, or what is there is not podnet's.
  returned: success
  type: dict
  sample: {"podnet": "node-record", "format": 1, "host": "node1", "node_ip": "172.30.0.11",
           "cluster_cidr": "10.244.0.0/16", "subnet": "10.244.0.0/24", "backend": "flannel-vxlan",
           "vtep_mac": "0e:7a:ac:1e:00:0b"}
adoptable:
  description:
    - With I(adopt), what the node runs - the VTEP's MAC and addresses, the bridge's addresses, subnet.env's values,
      and the host routes (/32) to devices that are not podnet's (a calico-style node's pods) - from which the plan
      role takes the node's subnet and VTEP MAC; null without I(adopt).
  returned: success
  type: dict
  sample: {"vtep": {"name": "flannel.1", "mac": "56:ad:b6:5f:16:d7", "networks": ["10.244.0.0/32"]},
           "bridge": {"name": "cni0", "mac": "2a:11:5e:00:01:02", "networks": ["10.244.0.1/24"]},
           "subnet_env": {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.0.1/24"}, "pod_routes": []}
iptables_prefix_present:
  description:
    - Whether I(iptables_prefix) occurs in the I(iptables_table) table; null when I(iptables_prefix) is
      not given or the table cannot be read (treat as present).
  returned: success
  type: bool
  sample: false
"""

import hashlib
import os
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.features import (
    FEATURE_PROBE_COMMAND,
    kernel_report,
    missing_message,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Engine,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import Address, Link, Route
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.adoption import (
    SUBNET_ENV_MAX,
    found_on_node,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.node_record import (
    RECORD_MAX,
    parse_record,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.underlay import (
    PREFLIGHT_SPEC,
    Interface,
    UnderlayProblem,
    look,
)

MAX_CHECKSUM_SIZE = 1 << 20


def describe_path(path: str) -> dict:
    """exists/isdir/mode/checksum of `path`; anything unreadable errs towards 'exists'."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"exists": False, "isdir": False, "mode": None, "checksum": None}
    except OSError:
        return {"exists": True, "isdir": None, "mode": None, "checksum": None}
    info = {"exists": True, "isdir": stat.S_ISDIR(st.st_mode), "mode": f"{stat.S_IMODE(st.st_mode):04o}",
            "checksum": None}
    if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_CHECKSUM_SIZE:
        try:
            with open(path, "rb") as handle:
                info["checksum"] = hashlib.sha1(handle.read()).hexdigest()  # noqa: S324 - same as copy's
        except OSError:
            pass
    return info


def persisted_records(directory: str | None) -> list[str]:
    if not directory:
        return []
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(e[:-len(".json")] for e in entries if e.endswith(".json"))


def iptables_prefix_present(module: AnsibleModule, prefix: str | None, table: str) -> bool | None:
    if not prefix:
        return None
    save = module.get_bin_path("iptables-save")
    if not save:
        return None
    rc, out, _err = module.run_command([save, "-t", table])
    return (prefix in out) if rc == 0 else None


def main() -> None:
    module = AnsibleModule(argument_spec=PREFLIGHT_SPEC, supports_check_mode=True)
    p = module.params
    adopt = p["adopt"]
    with Engine() as engine:
        have = engine.gather({Address, Route} if adopt else {Address})
    addresses: dict[str, list[str]] = {}
    for address in have.of_type(Address):
        addresses.setdefault(address.dev, []).append(address.cidr)
    interfaces = [Interface(link.name, link.mtu, link.alias, tuple(a.split("/")[0] for a in addresses.get(link.name, ())),
                            link.mac, tuple(a for a in addresses.get(link.name, ()) if ":" not in a))
                  for link in have.of_type(Link)]
    try:
        facts = look(interfaces, p["node_ip"], p["underlay_interface"])
    except UnderlayProblem as exc:
        module.fail_json(msg=str(exc))
    _rc, probe, _err = module.run_command(["sh", "-c", FEATURE_PROBE_COMMAND])
    kernel, missing = kernel_report(probe, p["kernel_features"])
    if missing:
        module.fail_json(msg=missing_message(missing, kernel["release"]), kernel=kernel)
    module.exit_json(changed=False, **facts, kernel=kernel,
                     paths={path: describe_path(path) for path in p["paths"]},
                     persisted=persisted_records(p["persist_dir"]),
                     iptables_prefix_present=iptables_prefix_present(module, p["iptables_prefix"],
                                                                     p["iptables_table"]),
                     node_record=read_record(p["node_record"]),
                     adoptable=found_on_node([i.seen() for i in interfaces],
                                             [{"dst": r.dst, "dev": r.dev} for r in have.of_type(Route)],
                                             read_text(adopt.get("subnet_env"), SUBNET_ENV_MAX), adopt) if adopt else None)


def read_text(path: str | None, limit: int) -> str | None:
    """A file's first limit + 1 characters (the action plugin reads the same with `head -c`); None: none there."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit + 1)
    except OSError:
        return None


def read_record(path: str | None) -> dict | None:
    """The node's record when it is podnet's."""
    return parse_record(read_text(path, RECORD_MAX))


if __name__ == "__main__":
    main()
