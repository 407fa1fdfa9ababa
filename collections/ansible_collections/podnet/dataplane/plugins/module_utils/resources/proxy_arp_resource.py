# Copyright: podnet contributors
# Apache License 2.0
"""The proxy_arp resource: what podnet.dataplane.proxy_arp does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    CALICO_HOST_SYSCTLS,
    proxy_arp_objects,
    sysctl_interface,
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
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    check_interface_name,
    check_pod_sysctls,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import (
    STATES,
    Resource,
    result_for,
)

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


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


class ProxyArp(Resource):
    name = "proxy_arp"

    def problems(self) -> list[str]:
        self.settings = {name: str(value) for name, value in self.p["settings"].items()}
        names = [m for pat in self.p["interfaces"] if not is_pattern(pat) for m in check_interface_name("interfaces", pat)]
        return names + check_pod_sysctls("settings", self.p["settings"])

    def rendered(self) -> dict[str, Any]:
        names = [pat for pat in self.p["interfaces"] if not is_pattern(pat)]
        return {"rendered": [c for n in names for o in proxy_arp_objects(n, self.settings) for c in o.add_commands()]}

    @contextmanager
    def reading(self) -> Iterator[KernelState]:
        self.interfaces = matching(self.p["interfaces"])
        self.wanted = [o for name in self.interfaces for o in proxy_arp_objects(name, self.settings)]
        yield read_values(o.name for o in self.wanted)

    def gathered(self, have: KernelState) -> dict[str, Any]:
        """The matching interfaces by name, and the settings they all hold alike (a setting whose value differs
        between them is left out, so that given back nothing changes; `values` has every value)."""
        common: dict[str, str] = {}
        for template in self.settings:
            values = {have.objects[key].value for name in self.interfaces
                      if (key := ("sysctl", None, template.format(sysctl_interface(name)))) in have.objects}
            if len(values) == 1:
                common[template] = values.pop()
        return {"interfaces": list(self.interfaces), "settings": common}

    def gathered_facts(self, have: KernelState) -> dict[str, Any]:
        return {"interfaces": list(self.interfaces), "values": {o.name: o.value for o in have.objects.values()}}

    def plan(self, have: KernelState) -> list[Change]:
        self.saved = load_saved(self.p["state_file"])
        if self.state == "deleted":
            restore = [Sysctl(name=o.name, value=self.saved[o.name]) for o in self.wanted if o.name in self.saved]
            self.remaining = {k: v for k, v in self.saved.items() if k not in {o.name for o in self.wanted}}
            return plan(restore, have)
        changes = plan(self.wanted, have)
        remaining = dict(self.saved)
        for change in changes:
            if change.have is not None:
                remaining.setdefault(change.have.name, change.have.value)
        # Interfaces that are gone take their remembered values with them.
        present = {o.name for o in read_values(remaining).objects.values()}
        self.remaining = {k: v for k, v in remaining.items() if k in present}
        return changes

    def write(self, have: KernelState, planned: list[Change]) -> None:
        try:
            write_values(planned)
        except EngineError as exc:
            self.fail(str(exc))

    def result(self, planned: list[Change]) -> dict[str, Any]:
        # what podnet found before its change is remembered even when the values already matched
        path = self.p["state_file"]
        if not self.module.check_mode and (self.remaining != self.saved
                                           or (not self.remaining and os.path.lexists(path))):
            save(path, self.remaining)
        return result_for(planned, interfaces=self.interfaces)

    def record(self) -> None:
        persist_result(self.module, "proxy_arp", self.wanted)


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    ProxyArp(module).run()
