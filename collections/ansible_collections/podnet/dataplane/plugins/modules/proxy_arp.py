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
      - C(gathered) returns the current values; C(rendered) the C(sysctl -w) commands, touching nothing.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - podnet.dataplane.persist
notes:
  - Supports check mode and diff mode.
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
  description: Current values per interface.
  returned: when state is gathered
  type: dict
"""

import fnmatch
import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.builders import (
    CALICO_HOST_SYSCTLS,
    proxy_arp_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.netlink import (
    Change,
    EngineError,
    KernelState,
    plan,
    read_sysctls,
    write_sysctl,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.objects import Sysctl
from ansible_collections.podnet.dataplane.plugins.module_utils.persist import PERSIST_OPTION, persist_result
from ansible_collections.podnet.dataplane.plugins.module_utils.resource import STATES, result_for
from ansible_collections.podnet.dataplane.plugins.module_utils.validate import check_interface_name

ARGUMENT_SPEC = {
    "interfaces": {"type": "list", "elements": "str", "required": True},
    "settings": {"type": "dict", "default": dict(CALICO_HOST_SYSCTLS)},
    "state_file": {"type": "path", "default": "/var/lib/podnet/proxy_arp.json"},
    "persist_dir": PERSIST_OPTION,
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}
SYS_NET = "/sys/class/net"


def matching(patterns: list[str]) -> list[str]:
    present = sorted(os.listdir(SYS_NET))
    return [name for name in present if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)]


def read_values(names) -> KernelState:
    return KernelState(objects=read_sysctls(names))


def write_values(changes: list[Change]) -> None:
    for change in changes:
        try:
            write_sysctl(change.want)
        except OSError as exc:
            raise EngineError(f"{'; '.join(change.commands)}: {exc}") from exc


def load_saved(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}


def save(path: str, saved: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(saved, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    state = p["state"]
    problems = [m for pat in p["interfaces"] if not any(c in pat for c in "*?[")
                for m in check_interface_name("interfaces", pat)]
    if problems:
        module.fail_json(msg="podnet.proxy_arp: " + "; ".join(problems))
    settings = {name: str(value) for name, value in p["settings"].items()}

    if state == "rendered":
        names = [pat for pat in p["interfaces"] if not any(c in pat for c in "*?[")]
        module.exit_json(changed=False, rendered=[c for n in names for o in proxy_arp_objects(n, settings)
                                                  for c in o.add_commands()])
    interfaces = matching(p["interfaces"])
    wanted = [o for name in interfaces for o in proxy_arp_objects(name, settings)]
    have = read_values(o.name for o in wanted)
    if state == "gathered":
        module.exit_json(changed=False, interfaces=interfaces,
                         gathered={o.name: o.value for o in have.objects.values()})

    saved = load_saved(p["state_file"])
    if state == "deleted":
        restore = [Sysctl(name=o.name, value=saved[o.name]) for o in wanted if o.name in saved]
        changes = plan(restore, have)
        remaining = {k: v for k, v in saved.items() if k not in {o.name for o in wanted}}
    else:
        changes = plan(wanted, have)
        remaining = dict(saved)
        for change in changes:
            if change.have is not None:
                remaining.setdefault(change.have.name, change.have.value)
        # Interfaces that are gone take their remembered values with them.
        present = {o.name for o in read_values(remaining).objects.values()}
        remaining = {k: v for k, v in remaining.items() if k in present}
    if not module.check_mode:
        try:
            write_values(changes)
        except EngineError as exc:
            module.fail_json(msg=f"podnet.proxy_arp: {exc}")
        if remaining != saved:
            save(p["state_file"], remaining)
    persist_result(module, "proxy_arp", wanted)
    module.exit_json(**result_for(changes, interfaces=interfaces))


if __name__ == "__main__":
    main()
