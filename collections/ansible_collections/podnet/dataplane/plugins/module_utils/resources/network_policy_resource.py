# Copyright: podnet contributors
# Apache License 2.0
"""The network_policy resource: what podnet.dataplane.network_policy does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.iptables_chains import (
    Ownership,
    Table,
    gathered,
    normalize_chains,
    parse_save,
    plan_chains,
    podnet_view,
    simulate,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import (
    PERSIST_OPTION,
    persist_result,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import STATES, Resource

JUMP_SPEC = {
    "table": {"type": "str", "choices": ["filter", "nat", "mangle", "raw"], "default": "filter"},
    "chain": {"type": "str", "default": "FORWARD"},
    "target": {"type": "str", "default": "PODNET-FORWARD"},
    "position": {"type": "int", "default": 1},
}
ARGUMENT_SPEC = {
    "persist_dir": PERSIST_OPTION,
    "chains": {"type": "dict", "default": {}},
    "jump": {"type": "dict", "options": JUMP_SPEC},
    "prefix": {"type": "str", "default": "PODNET-"},
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}


def _text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


class NetworkPolicy(Resource):
    name = "network_policy"

    def problems(self) -> list[str]:
        p = self.p
        prefix, jump = p["prefix"], p["jump"]
        self.table = (jump or {}).get("table") or "filter"
        problems = []
        if not prefix:
            problems.append("prefix: must not be empty (it is how podnet recognises its own chains)")
        for name, rules in p["chains"].items():
            if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
                problems.append(f"chains: {name}: must be a list of rule strings")
        if jump is not None and (jump["position"] or 0) < 1:
            problems.append(f"jump: position {jump['position']} must be 1 or more")
        if jump is not None and not str(jump["target"]).startswith(prefix):
            problems.append(f"jump: target {jump['target']} does not start with the prefix {prefix!r}")
        if problems:
            return problems
        chains = {name: ([] if self.state == "deleted" else rules) for name, rules in p["chains"].items()}
        self.want, found = normalize_chains(chains, prefix)
        return found

    def rendered(self) -> dict[str, Any]:
        plan = plan_chains(Table.empty(self.table), self.want, self.p["jump"], self.p["prefix"], "merged")
        return {"rendered": plan.commands(self.table), "commands": plan.commands(self.table),
                "payload": plan.payload(self.table) if plan.ops else ""}

    def read(self) -> Table:
        rc, out, err = self.module.run_command([self.save, "-t", self.table])
        if rc != 0:
            self.fail(f"iptables-save -t {self.table} failed: {err.strip()}")
        return parse_save(out, self.table)

    @contextmanager
    def reading(self) -> Iterator[Table]:
        self.save = self.module.get_bin_path("iptables-save", required=True)
        self.restore = self.module.get_bin_path("iptables-restore", required=True)
        yield self.read()

    def gathered(self, have: Table) -> dict[str, Any]:
        """podnet's chains - named as podnet names its own, or listed in `chains` - with their rules as
        iptables-save prints them, the one jump into them when there is one, and the prefix: this module's
        options again."""
        self.found = found = gathered(have, Ownership(self.p["prefix"], self.want))
        return {"chains": found["chains"], "jump": found["jumps"][0] if len(found["jumps"]) == 1 else None,
                "prefix": self.p["prefix"]}

    def gathered_facts(self, have: Table) -> dict[str, Any]:
        return {"jumps": self.found["jumps"], "commands": [], "payload": ""}  # read by gathered(), just before

    def plan(self, have: Table) -> list[Any]:
        self.planned = plan_chains(have, self.want, self.p["jump"], self.p["prefix"], self.state)
        if self.planned.problems:
            self.fail("; ".join(self.planned.problems))
        self.mine = Ownership(self.p["prefix"], self.want)
        self.expected = simulate(have, self.planned.ops)
        payload = self.planned.payload(self.table) if self.planned.ops else ""
        self.outcome = {"changed": bool(self.planned.ops), "commands": self.planned.commands(self.table),
                        "payload": payload, "diff": {"before": _text(podnet_view(have, self.mine)),
                                                     "after": _text(podnet_view(self.expected, self.mine))}}
        return list(self.planned.ops)

    def write(self, have: Table, planned: list[Any]) -> None:
        """One iptables-restore --noflush transaction, then a read that must show what was written."""
        rc, _out, err = self.module.run_command([self.restore, "-w", "--noflush"], data=self.outcome["payload"],
                                                binary_data=True)
        if rc != 0:
            self.fail(f"iptables-restore refused the transaction (nothing was changed): {err.strip()}",
                      **self.outcome)
        now, expected = podnet_view(self.read(), self.mine), podnet_view(self.expected, self.mine)
        if now != expected:
            missing = [line for line in expected if line not in now]
            extra = [line for line in now if line not in expected]
            self.fail("the kernel shows the chains differently from how they were given, so every run would "
                      "change them again; give the rules exactly as iptables-save prints them. Given but not "
                      f"shown: {missing}; shown instead: {extra}", **self.outcome)

    def result(self, planned: list[Any]) -> dict[str, Any]:
        return self.outcome

    def record(self) -> None:
        persist_result(self.module, "network_policy", iptables_chains={
            "table": self.table, "prefix": self.p["prefix"], "chains": self.want, "jump": self.p["jump"]})


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    NetworkPolicy(module).run()
