# Copyright: podnet contributors
# Apache License 2.0
"""The iptables_rules resource: what podnet.dataplane.iptables_rules does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    RULE_COMMENT,
    iptables_command,
    iptables_rule_args,
    iptables_rule_tag,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import (
    PERSIST_OPTION,
    persist_result,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import STATES, Resource

# podnet's rules carry exactly this comment (builders.iptables_rule_tag); "podnet:legacy-vpn" is not one.
RULE_TAG = re.compile(re.escape(RULE_COMMENT) + r":[0-9a-f]{12}")

CHAIN_SPEC = {
    "table": {"type": "str", "choices": ["filter", "nat", "mangle", "raw"], "default": "filter"},
    "chain": {"type": "str", "required": True},
}
RULE_SPEC = {**CHAIN_SPEC, "rule": {"type": "list", "elements": "str", "required": True}}
ARGUMENT_SPEC = {
    "persist_dir": PERSIST_OPTION,
    "rules": {"type": "list", "elements": "dict", "options": RULE_SPEC, "default": []},
    "chains": {"type": "list", "elements": "dict", "options": CHAIN_SPEC,
               "default": [{"table": "nat", "chain": "POSTROUTING"}, {"table": "filter", "chain": "FORWARD"}]},
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}


class Chains:
    """Reads each (table, chain) once and indexes podnet's rules in it by tag."""

    def __init__(self, module: AnsibleModule):
        self.module = module
        self.binary = module.get_bin_path("iptables", required=True)
        self._cache: dict[tuple[str, str], dict[str, list[str]]] = {}

    def podnet_rules(self, table: str, chain: str) -> dict[str, list[str]]:
        key = (table, chain)
        if key not in self._cache:
            rc, out, err = self.module.run_command([self.binary, "-w", "-t", table, "-S", chain])
            if rc != 0:
                self.module.fail_json(msg=f"podnet.iptables_rules: cannot read {table}/{chain}: {err.strip()}")
            found: dict[str, list[str]] = {}
            for line in out.splitlines():
                words = shlex.split(line)
                if len(words) < 2 or words[0] != "-A" or "--comment" not in words:
                    continue
                tag = words[words.index("--comment") + 1]
                if RULE_TAG.fullmatch(tag):
                    found[tag] = words[2:]
            self._cache[key] = found
        return self._cache[key]

    def run(self, table: str, action: str, chain: str, args: list[str]) -> None:
        rc, _out, err = self.module.run_command([self.binary, "-w", "-t", table, action, chain, *args])
        if rc != 0:
            self.module.fail_json(msg=f"podnet.iptables_rules: iptables -t {table} {action} {chain} "
                                      f"{shlex.join(args)}: {err.strip()}")


def given_rule(table: str, chain: str, args: list[str]) -> dict[str, Any] | None:
    """The `rules` entry a rule of podnet's was given as: its arguments without podnet's comment, when they
    hash to the comment's tag again (so that, given back, it is the same rule); None when iptables prints
    the rule otherwise than it was given."""
    at = args.index("--comment")
    rule = {"table": table, "chain": chain, "rule": args[:at - 2] + args[at + 2:]}
    return rule if args[at - 2:at] == ["-m", "comment"] and iptables_rule_tag(rule) == args[at + 1] else None


Step = tuple[str, str, str, list[str]]  # table, -A or -D, chain, arguments


class IptablesRules(Resource):
    name = "iptables_rules"

    def rendered(self) -> dict[str, Any]:
        return {"rendered": [iptables_command(r["table"], "-A", r["chain"], iptables_rule_args(r))
                             for r in self.p["rules"]]}

    @contextmanager
    def reading(self) -> Iterator[Chains]:
        self.chains = Chains(self.module)
        self.searched = sorted({(c["table"], c["chain"]) for c in self.p["chains"]}
                               | {(r["table"], r["chain"]) for r in self.p["rules"]})
        yield self.chains

    def _found(self, chains: Chains) -> list[tuple[str, str, list[str]]]:
        return [(t, c, args) for t, c in self.searched for args in chains.podnet_rules(t, c).values()]

    def gathered(self, have: Chains) -> dict[str, Any]:
        """podnet's rules in the searched chains as `rules` entries, and those `chains`."""
        rules = [given_rule(t, c, args) for t, c, args in self._found(have)]
        return {"rules": [r for r in rules if r is not None],
                "chains": [{"table": t, "chain": c} for t, c in self.searched]}

    def gathered_facts(self, have: Chains) -> dict[str, Any]:
        """Every rule as `iptables -S` prints it, and those whose printed form is not how they were given."""
        found = self._found(have)
        return {"lines": [iptables_command(t, "-A", c, args) for t, c, args in found],
                "not_given_back": [iptables_command(t, "-A", c, args) for t, c, args in found
                                   if given_rule(t, c, args) is None]}

    def plan(self, have: Chains) -> list[Step]:
        planned: list[Step] = []
        wanted = {iptables_rule_tag(r) for r in self.p["rules"]}
        for table, chain in self.searched if self.state in ("deleted", "overridden") else ():
            for tag, args in have.podnet_rules(table, chain).items():
                # deleted: the listed rules, or all of podnet's; overridden: all of podnet's not listed
                listed = tag in wanted
                if (self.state == "overridden" and not listed) or \
                        (self.state == "deleted" and (listed or not self.p["rules"])):
                    planned.append((table, "-D", chain, args))
        if self.state != "deleted":
            for rule in self.p["rules"]:
                if iptables_rule_tag(rule) not in have.podnet_rules(rule["table"], rule["chain"]):
                    planned.append((rule["table"], "-A", rule["chain"], iptables_rule_args(rule)))
        return planned

    def write(self, have: Chains, planned: list[Step]) -> None:
        for table, action, chain, args in planned:
            have.run(table, action, chain, args)

    def result(self, planned: list[Step]) -> dict[str, Any]:
        before = [iptables_command(t, "-A", c, a) for t, act, c, a in planned if act == "-D"]
        after = [iptables_command(t, "-A", c, a) for t, act, c, a in planned if act == "-A"]
        return {"changed": bool(planned), "commands": [iptables_command(*step) for step in planned],
                "diff": {"before": "".join(f"{x}\n" for x in before), "after": "".join(f"{x}\n" for x in after)}}

    def record(self) -> None:
        persist_result(self.module, "iptables_rules", iptables=[
            {"table": r["table"], "chain": r["chain"], "args": iptables_rule_args(r)} for r in self.p["rules"]])


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    IptablesRules(module).run()
