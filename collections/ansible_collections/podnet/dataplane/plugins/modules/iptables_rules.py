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
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
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
      - C(gathered) returns podnet's rules as this module's options; C(rendered) the commands, without
        touching the host.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
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
  description:
    - podnet's rules in the searched chains as this module's options - C(rules) (table, chain, rule without
      podnet's comment) and those C(chains).
    - Valid input again - given back as this module's options (state merged or overridden), it changes nothing.
      A rule iptables prints otherwise than it was given is listed in C(not_given_back) instead.
  returned: when state is gathered
  type: dict
lines:
  description: With I(state=gathered), every podnet rule as C(iptables -S) prints it.
  returned: when state is gathered
  type: list
  elements: str
not_given_back:
  description: With I(state=gathered), podnet's rules whose printed form does not hash to their tag.
  returned: when state is gathered
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.iptables_rules_resource import (
    ARGUMENT_SPEC,
    run,
)


def main() -> None:
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True))


if __name__ == "__main__":
    main()
