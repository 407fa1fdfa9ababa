# Copyright: podnet contributors
# Apache License 2.0
"""The iptables_rules resource: what podnet.dataplane.iptables_rules does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import re
import shlex

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
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import STATES

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


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    p = module.params
    state = p["state"]
    rules = p["rules"]
    if state == "rendered":
        module.exit_json(changed=False, rendered=[iptables_command(r["table"], "-A", r["chain"], iptables_rule_args(r))
                                                  for r in rules])
    chains = Chains(module)
    searched = {(c["table"], c["chain"]) for c in p["chains"]} | {(r["table"], r["chain"]) for r in rules}
    if state == "gathered":
        module.exit_json(changed=False, gathered=[
            iptables_command(t, "-A", c, args) for t, c in sorted(searched)
            for args in chains.podnet_rules(t, c).values()])

    planned: list[tuple[str, str, str, list[str]]] = []
    wanted = {iptables_rule_tag(r) for r in rules}
    if state == "deleted":
        for table, chain in sorted(searched):
            for tag, args in chains.podnet_rules(table, chain).items():
                if not rules or tag in wanted:
                    planned.append((table, "-D", chain, args))
    else:
        if state == "overridden":
            for table, chain in sorted(searched):
                for tag, args in chains.podnet_rules(table, chain).items():
                    if tag not in wanted:
                        planned.append((table, "-D", chain, args))
        for rule in rules:
            if iptables_rule_tag(rule) not in chains.podnet_rules(rule["table"], rule["chain"]):
                planned.append((rule["table"], "-A", rule["chain"], iptables_rule_args(rule)))
    if not module.check_mode:
        for table, action, chain, args in planned:
            chains.run(table, action, chain, args)
    commands = [iptables_command(*step) for step in planned]
    before = [iptables_command(t, "-A", c, a) for t, act, c, a in planned if act == "-D"]
    after = [iptables_command(t, "-A", c, a) for t, act, c, a in planned if act == "-A"]
    persist_result(module, "iptables_rules", iptables=[
        {"table": r["table"], "chain": r["chain"], "args": iptables_rule_args(r)} for r in rules])
    module.exit_json(changed=bool(planned), commands=commands,
                     diff={"before": "".join(f"{x}\n" for x in before), "after": "".join(f"{x}\n" for x in after)})
