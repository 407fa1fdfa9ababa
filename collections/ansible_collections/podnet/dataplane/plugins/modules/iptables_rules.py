#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: iptables_rules
short_description: Manage a set of podnet-owned iptables rules (for example flannel's masquerade rules)
version_added: "0.1.0"
description:
  - Appends the listed rules where they are missing, each tagged with a comment
    C(podnet:<id>) derived from its table, chain and arguments. The tag is how later runs recognise
    podnet's rules; rules without it are never touched.
  - Reads each chain once (C(iptables -S)), so a no-op run costs one command per chain.
  - Arguments are passed to C(iptables) as an argument list; no shell is involved.
author:
  - podnet maintainers (@podnet)
requirements:
  - iptables on the managed node
options:
  rules:
    description: Rules to manage.
    type: list
    elements: dict
    default: []
    suboptions:
      table:
        description: Table.
        type: str
        choices: [filter, nat, mangle, raw]
        default: filter
      chain:
        description: Built-in or existing chain.
        type: str
        required: true
      rule:
        description: Match and target arguments, one list element per argument, e.g. C([-s, 10.244.0.0/16, -j, ACCEPT]).
        type: list
        elements: str
        required: true
  chains:
    description:
      - Chains searched for podnet rules to remove with I(state=overridden) or I(state=deleted), in
        addition to the chains of the listed rules.
    type: list
    elements: dict
    default: [{table: nat, chain: POSTROUTING}, {table: filter, chain: FORWARD}]
    suboptions:
      table:
        description: Table.
        type: str
        choices: [filter, nat, mangle, raw]
        default: filter
      chain:
        description: Chain.
        type: str
        required: true
  state:
    description:
      - C(merged) and C(replaced) append missing rules.
      - C(overridden) also removes podnet rules that are not listed.
      - C(deleted) removes the listed rules, or every podnet rule in the searched chains when none are listed.
      - C(gathered) returns the podnet rules present; C(rendered) the commands, without touching the host.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - podnet.dataplane.persist
notes:
  - Supports check mode and diff mode.
"""

EXAMPLES = r"""
- name: flannel's masquerade rules for cluster 10.244.0.0/16, node subnet 10.244.0.0/24
  podnet.dataplane.iptables_rules:
    rules:
      - {table: nat, chain: POSTROUTING, rule: [-s, 10.244.0.0/16, -d, 10.244.0.0/16, -j, RETURN]}
      - {table: nat, chain: POSTROUTING, rule: [-s, 10.244.0.0/16, "!", -d, 224.0.0.0/4, -j, MASQUERADE]}
    state: overridden
"""

RETURN = r"""
commands:
  description: The iptables commands run (or that would run in check mode).
  returned: always
  type: list
  elements: str
rendered:
  description: The rules as commands.
  returned: when state is rendered
  type: list
  elements: str
gathered:
  description: podnet rules present, as C(iptables -S) prints them.
  returned: when state is gathered
  type: list
  elements: str
"""

import shlex

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.builders import (
    RULE_COMMENT,
    iptables_command,
    iptables_rule_args,
    iptables_rule_tag,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.persist import PERSIST_OPTION, persist_result
from ansible_collections.podnet.dataplane.plugins.module_utils.resource import STATES

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
                if tag.startswith(RULE_COMMENT + ":"):
                    found[tag] = words[2:]
            self._cache[key] = found
        return self._cache[key]

    def run(self, table: str, action: str, chain: str, args: list[str]) -> None:
        rc, _out, err = self.module.run_command([self.binary, "-w", "-t", table, action, chain, *args])
        if rc != 0:
            self.module.fail_json(msg=f"podnet.iptables_rules: iptables -t {table} {action} {chain} "
                                      f"{shlex.join(args)}: {err.strip()}")


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
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


if __name__ == "__main__":
    main()
