# Copyright: podnet contributors
# Apache License 2.0
"""podnet.dataplane.preflight's action: where only the node IP and kernel checks and the node's record are asked
for (what the plan play asks of every node before any node changes), one shell line on the node answers them -
`ip -j -d address show`, the kernel probe of kernel/features.py and the record's text (adopting: also
`ip -j route show` and subnet.env) - with no module run,
which costs ~0.3 CPU-s of Python and Ansible imports on the node and was a third of a no-op converge of a large
cluster. Anything else asked, or a
node whose `ip` gives no JSON, runs the module, which answers the same."""
from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.features import (
    kernel_report,
    missing_message,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.adoption import (
    found_on_node,
    routes_from_ip_json,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.node_record import parse_record
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.underlay import (
    ADDRESS_ONLY,
    PREFLIGHT_SPEC,
    UnderlayProblem,
    interfaces_from_ip_json,
    look,
    look_command,
    split_look,
)


class ActionModule(ActionBase):
    _supports_check_mode = True  # read-only either way

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=PREFLIGHT_SPEC)
        asked = {name for name, value in args.items() if value and value != PREFLIGHT_SPEC[name].get("default")}
        if asked - set(ADDRESS_ONLY):
            return {**result, **self._execute_module(task_vars=task_vars)}
        adopt = args["adopt"]
        dump = self._low_level_execute_command(look_command(args["node_record"], adopt))
        try:
            if dump["rc"] != 0:
                raise ValueError(f"rc {dump['rc']}")
            sections = split_look(dump["stdout"], args["node_record"], adopt)
            interfaces = interfaces_from_ip_json(sections.addresses)
            routes = routes_from_ip_json(sections.routes) if adopt else []
        except (ValueError, KeyError, TypeError):
            # no iproute2 with JSON output there: the module reads the same over netlink
            return {**result, **self._execute_module(task_vars=task_vars)}
        try:
            facts = look(interfaces, args["node_ip"], args["underlay_interface"])
        except UnderlayProblem as exc:
            return {**result, "failed": True, "msg": str(exc)}
        kernel, missing = kernel_report(sections.probe, args["kernel_features"])
        if missing:
            return {**result, "failed": True, "msg": missing_message(missing, kernel["release"]), "kernel": kernel}
        adoptable = found_on_node([i.seen() for i in interfaces], routes, sections.subnet_env, adopt) if adopt else None
        return {**result, "changed": False, **facts, "kernel": kernel, "paths": {}, "persisted": [],
                "iptables_prefix_present": None, "node_record": parse_record(sections.record), "adoptable": adoptable}
