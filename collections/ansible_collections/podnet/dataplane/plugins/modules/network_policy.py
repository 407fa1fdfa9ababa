#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: network_policy
short_description: Manage podnet's network-policy iptables chains, atomically and idempotently
version_added: "0.1.0"
description:
  - Manages whole iptables chains of podnet's, plus the one rule that jumps into them from a foreign chain
    (by default C(-A FORWARD -j PODNET-FORWARD) at position 1).
  - A chain cannot carry a comment, so its name marks it. podnet's chains are named by a fixed grammar,
    I(prefix) followed by C(FORWARD) or by one capital letter, C(-) and 12 lowercase hex digits (the
    planner's C(PODNET-I-0123456789ab), C(PODNET-E-...)). Chains of that grammar, and the chains a call
    lists in I(chains), are the only ones the module rewrites or removes; a chain such as C(PODNET-MINE),
    which only shares the prefix, is someone else's and is left alone with its jumps.
  - Reads the table once with C(iptables-save -t <table>) and compares podnet's chains, rule by rule and
    in order, with the wanted ones (rules are given exactly as C(iptables-save) prints them). When anything
    differs, everything is applied in B(one) C(iptables-restore -w --noflush) transaction fed on stdin -
    wanted chains declared with C(:NAME - [0:0]) (which creates or flushes them) and refilled, stale podnet
    chains flushed and removed with C(-X), the jump deleted and inserted where it belongs - so the kernel never
    sees a half-written policy. Nothing changes (and C(changed=false)) when the chains already match.
  - Chains and rules that are not podnet's are never changed. The only rules outside podnet's chains this
    module ever deletes or inserts are bare jumps, rules that are exactly C(-A <chain> -j <podnet chain>).
  - After applying, the table is read again; if the kernel prints a rule differently from how it was given
    (a rule not in C(iptables-save)'s canonical form, which would make every run change it again), the
    module fails and names the rule.
  - The podnet.dataplane.podnet_policy role feeds it the chains the planner compiles from
    C(podnet_network_policies) (see the module_utils C(policy) and the README section "Network policy").
  - Binaries are run with argument lists, never through a shell.
author:
  - podnet maintainers (@podnet)
requirements:
  - iptables (iptables-save and iptables-restore; nf_tables or legacy) on the managed node
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  chains:
    description:
      - Wanted chains, name -> list of rules. Each rule is written as C(iptables-save) prints it, with or
        without the leading C(-A <name>), for example
        C(-A PODNET-I-0123456789ab -s 10.244.1.2/32 -p tcp -m tcp --dport 5432 -m comment --comment allow-web-db -j RETURN).
      - Every name must start with I(prefix). A rule that jumps to a podnet chain must jump to a listed one.
      - With I(state=deleted), only the names count (the chains to delete; all podnet chains when empty).
    type: dict
    default: {}
  jump:
    description:
      - The rule that sends traffic from a foreign (usually built-in) chain into podnet's entry chain.
      - With I(state=merged), I(replaced) or I(overridden), it is inserted when missing and moved back to
        I(position) when another rule was inserted above it (duplicates are removed).
      - Its I(table) is the table the module works on; without I(jump) that is C(filter).
    type: dict
    suboptions:
      table:
        description: Table of the jump and of the chains.
        type: str
        choices: [filter, nat, mangle, raw]
        default: filter
      chain:
        description: Foreign chain holding the jump.
        type: str
        default: FORWARD
      target:
        description: podnet chain to jump to.
        type: str
        default: PODNET-FORWARD
      position:
        description: 1-based position of the jump in I(chain) (the end of the chain if it is shorter).
        type: int
        default: 1
  prefix:
    description:
      - Every chain podnet manages is named under this prefix; chains named by podnet's grammar under it
        (see the description) are podnet's.
    type: str
    default: PODNET-
  state:
    description:
      - C(merged) and C(replaced) give each listed chain exactly the listed rules (a chain is one resource)
        and put the jump in place; other podnet chains stay.
      - C(overridden) also removes podnet's chains (named by podnet's grammar) that are not listed, and bare
        jumps into podnet chains other than I(jump).
      - C(deleted) removes the listed chains (every chain named by podnet's grammar when none are listed) and
        the bare jumps to them.
      - C(gathered) returns podnet's chains and their jump as this module's options; C(rendered) returns the
        commands for a host that has none of them, without touching the host.
    type: str
    choices: [merged, replaced, overridden, deleted, gathered, rendered]
    default: merged
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
notes:
  - Supports check mode (the exact commands and C(iptables-restore) payload are returned, nothing is applied)
    and diff mode (podnet's chains and jumps before and after, as C(iptables-save) lines; jumps as
    C(-I <chain> <position> ...)).
  - Uses C(iptables-restore --wait), so it waits for the xtables lock like C(iptables -w).
  - With the prefix's chains referenced by a foreign rule that is not a bare jump, deleting them is refused
    with a message naming that rule.
"""

EXAMPLES = r"""
- name: Only pods labelled app=web may reach the db pod, on tcp/5432
  podnet.dataplane.network_policy:
    chains:
      PODNET-FORWARD:
        - -A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
        - -A PODNET-FORWARD -o cali1a2b3c4d5e6 -m comment --comment "node2/db ingress" -j PODNET-I-0123456789ab
      PODNET-I-0123456789ab:
        - -A PODNET-I-0123456789ab -s 10.244.0.2/32 -p tcp -m tcp --dport 5432 -m comment --comment allow-web-db -j RETURN
        - -A PODNET-I-0123456789ab -j DROP
    jump: {table: filter, chain: FORWARD, target: PODNET-FORWARD, position: 1}
    state: overridden

- name: What the role does (chains compiled by the planner from podnet_network_policies)
  podnet.dataplane.network_policy:
    chains: "{{ podnet_node.policy.chains }}"
    jump: "{{ podnet_node.policy.jump }}"
    state: "{{ 'overridden' if podnet_node.policy.chains else 'deleted' }}"

- name: Remove every podnet chain and the jump (open access again)
  podnet.dataplane.network_policy:
    state: deleted

- name: What is there now
  podnet.dataplane.network_policy:
    state: gathered
  register: policy_now
"""

RETURN = r"""
commands:
  description:
    - What the transaction does, as the equivalent C(iptables) commands in order (check mode included).
      The real change is one C(iptables-restore) run with I(payload).
  returned: always
  type: list
  elements: str
  sample:
    - iptables -t filter -N PODNET-FORWARD
    - iptables -t filter -A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
    - iptables -t filter -I FORWARD 1 -j PODNET-FORWARD
payload:
  description: The exact input fed to C(iptables-restore -w --noflush) (empty when nothing changes).
  returned: always
  type: str
rendered:
  description: The commands for a host without any podnet chain.
  returned: when state is rendered
  type: list
  elements: str
gathered:
  description:
    - podnet's chains (named as podnet names its own, or listed in I(chains)) with their rules as
      iptables-save prints them, the jump into them when there is exactly one, and the prefix.
    - Valid input again - given back as this module's options (state merged or overridden), it changes nothing.
  returned: when state is gathered
  type: dict
  sample:
    chains: {PODNET-FORWARD: ["-A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]}
    jump: {table: filter, chain: FORWARD, target: PODNET-FORWARD, position: 1}
    prefix: PODNET-
jumps:
  description: With I(state=gathered), every bare jump into podnet's chains.
  returned: when state is gathered
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.network_policy_resource import (
    ARGUMENT_SPEC,
    run,
)


def main() -> None:
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True))


if __name__ == "__main__":
    main()
