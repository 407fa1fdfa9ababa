# Copyright: podnet contributors
# Apache License 2.0
"""The network_policy resource: what podnet.dataplane.network_policy does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

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
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import STATES

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


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    p = module.params
    state, prefix, jump = p["state"], p["prefix"], p["jump"]
    table = (jump or {}).get("table") or "filter"
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
        module.fail_json(msg="podnet.network_policy: " + "; ".join(problems))
    chains = {name: ([] if state == "deleted" else rules) for name, rules in p["chains"].items()}
    want, found = normalize_chains(chains, prefix)
    if found:
        module.fail_json(msg="podnet.network_policy: " + "; ".join(found))

    if state == "rendered":
        plan = plan_chains(Table.empty(table), want, jump, prefix, "merged")
        module.exit_json(changed=False, rendered=plan.commands(table), commands=plan.commands(table),
                         payload=plan.payload(table) if plan.ops else "")

    save = module.get_bin_path("iptables-save", required=True)
    restore = module.get_bin_path("iptables-restore", required=True)

    def read() -> Table:
        rc, out, err = module.run_command([save, "-t", table])
        if rc != 0:
            module.fail_json(msg=f"podnet.network_policy: iptables-save -t {table} failed: {err.strip()}")
        return parse_save(out, table)

    have = read()
    if state == "gathered":
        module.exit_json(changed=False, gathered=gathered(have, prefix), commands=[], payload="")

    plan = plan_chains(have, want, jump, prefix, state)
    mine = Ownership(prefix, want)
    if plan.problems:
        module.fail_json(msg="podnet.network_policy: " + "; ".join(plan.problems))
    expected = simulate(have, plan.ops)
    commands = plan.commands(table)
    payload = plan.payload(table) if plan.ops else ""
    result = {"changed": bool(plan.ops), "commands": commands, "payload": payload,
              "diff": {"before": _text(podnet_view(have, mine)), "after": _text(podnet_view(expected, mine))}}
    if plan.ops and not module.check_mode:
        rc, _out, err = module.run_command([restore, "-w", "--noflush"], data=payload, binary_data=True)
        if rc != 0:
            module.fail_json(msg=f"podnet.network_policy: iptables-restore refused the transaction (nothing was "
                                 f"changed): {err.strip()}", **result)
        now = podnet_view(read(), mine)
        if now != podnet_view(expected, mine):
            missing = [line for line in podnet_view(expected, mine) if line not in now]
            extra = [line for line in now if line not in podnet_view(expected, mine)]
            module.fail_json(msg="podnet.network_policy: the kernel shows the chains differently from how they "
                                 "were given, so every run would change them again; give the rules exactly as "
                                 f"iptables-save prints them. Given but not shown: {missing}; shown instead: "
                                 f"{extra}", **result)
    persist_result(module, "network_policy", iptables_chains={"table": table, "prefix": prefix, "chains": want,
                                                              "jump": jump})
    module.exit_json(**result)
