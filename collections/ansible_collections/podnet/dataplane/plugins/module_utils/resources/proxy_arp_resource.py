# Copyright: podnet contributors
# Apache License 2.0
"""The proxy_arp resource: what podnet.dataplane.proxy_arp does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import fnmatch
import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    CALICO_HOST_SYSCTLS,
    proxy_arp_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    EngineError,
    KernelState,
    plan,
    read_sysctls,
    write_sysctl,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import Sysctl
from ansible_collections.podnet.dataplane.plugins.module_utils.node import files
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import (
    PERSIST_OPTION,
    persist_result,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import check_interface_name
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import STATES, result_for

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
    """Remember the values podnet changed (0600, atomically); nothing left to remember: no file, so a node
    that switched back to flannel holds what a node that never ran a routed backend holds."""
    if saved:
        files.converge(path, json.dumps(saved, indent=1, sort_keys=True), 0o600, folder_mode=0o700)
    else:
        files.remove(path)


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
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
        if remaining != saved or (not remaining and os.path.lexists(p["state_file"])):
            save(p["state_file"], remaining)
    persist_result(module, "proxy_arp", wanted)
    module.exit_json(**result_for(changes, interfaces=interfaces))
