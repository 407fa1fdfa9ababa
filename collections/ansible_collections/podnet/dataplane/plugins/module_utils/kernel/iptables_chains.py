# Copyright: podnet contributors
# Apache License 2.0
"""Whole iptables chains owned by podnet (named under a prefix, `PODNET-` by default), compared
textually with what `iptables-save` prints and changed in one `iptables-restore --noflush` transaction.

Which chains are podnet's: a chain cannot carry a comment, so its name is the marker. Chains podnet makes
on its own are named by a fixed grammar, `<prefix>FORWARD` or `<prefix><capital letter>-<12 lowercase hex
digits>` (`PODNET-I-3f2a9c01d4e7`); a run removes or rewrites only those, and the chains its caller lists by
name. A user's `PODNET-MINE`, which merely shares the prefix, is never touched, nor is a jump to it.

Pure functions (parse, plan, simulate) plus two small runners: one for the network_policy module
(through AnsibleModule.run_command) and one for boot_apply (subprocess).  A chain is one resource: its
rule list, in order.  podnet's rules outside its own chains are only "bare jumps" — rules that are
exactly `-A <foreign chain> -j <podnet chain>`; no other foreign rule is ever read for change,
deleted or moved.
"""
from __future__ import annotations

import copy
import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import shell_line

DEFAULT_PREFIX = "PODNET-"
MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1
# The names podnet gives its own chains, after the prefix (see the module docstring).
OWN_CHAIN_SUFFIX = r"(?:FORWARD|[A-Z]-[0-9a-f]{12})"
_CHAIN_NAME = re.compile(r"[A-Za-z0-9_.:+-]+")
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}


@dataclass
class Table:
    """One table as iptables-save prints it: chains (name -> policy, "-" for user chains) in order, and
    each chain's rules as full `-A <chain> ...` lines."""

    name: str
    chains: dict[str, str] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def empty(cls, name: str) -> Table:
        return cls(name, {c: "ACCEPT" for c in BUILTIN_CHAINS.get(name, ())},
                   {c: [] for c in BUILTIN_CHAINS.get(name, ())})


def parse_save(text: str, table: str) -> Table:
    """Parse `iptables-save -t <table>` output (comments and counters ignored)."""
    out = Table(table)
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = line[1:]
            continue
        if current != table:
            continue
        if line.startswith(":"):
            name, _sep, rest = line[1:].partition(" ")
            out.chains[name] = rest.split(" ")[0] if rest else "-"
            out.rules.setdefault(name, [])
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            out.rules.setdefault(chain, []).append(line)
            out.chains.setdefault(chain, "-")
    if not out.chains:
        return Table.empty(table)
    return out


def targets_of(line: str) -> list[str]:
    """Chains a rule line jumps or goes to."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "--jump", "-g", "--goto")]


class Ownership:
    """Which chains of a table are podnet's: named by podnet's grammar, or listed by the caller."""

    def __init__(self, prefix: str, listed: Iterable[str] = ()):
        self.prefix = prefix
        self.listed = frozenset(listed)
        self._grammar = re.compile(re.escape(prefix) + OWN_CHAIN_SUFFIX)

    def owns(self, chain: str) -> bool:
        return chain in self.listed or self._grammar.fullmatch(chain) is not None


def owns_chain(chain: str, prefix: str = DEFAULT_PREFIX) -> bool:
    """Whether `chain` is named the way podnet names the chains it makes on its own."""
    return Ownership(prefix).owns(chain)


def _ownership(mine: Ownership | str) -> Ownership:
    return mine if isinstance(mine, Ownership) else Ownership(mine)


def bare_jump(line: str, mine: Ownership | str) -> tuple[str, str] | None:
    """(chain, target) when the line is exactly `-A <chain> -j <podnet chain>` from a chain not podnet's.
    `mine`: an Ownership, or a prefix (then podnet's own chain grammar alone decides)."""
    mine = _ownership(mine)
    words = line.split(" ")
    if len(words) == 4 and words[0] == "-A" and words[2] == "-j" and mine.owns(words[3]) \
            and not mine.owns(words[1]):
        return words[1], words[3]
    return None


def normalize_chains(chains: dict[str, Any] | None, prefix: str) -> tuple[dict[str, list[str]], list[str]]:
    """Wanted chains as full `-A <chain> ...` lines; problems found in names and rules."""
    problems: list[str] = []
    out: dict[str, list[str]] = {}
    for name, rules in (chains or {}).items():
        name = str(name)
        if not name.startswith(prefix):
            problems.append(f"chains: {name!r} does not start with the prefix {prefix!r}; podnet manages "
                            "only its own chains")
        if len(name) > MAX_CHAIN_NAME or not _CHAIN_NAME.fullmatch(name):
            problems.append(f"chains: {name!r} is not a valid chain name (at most {MAX_CHAIN_NAME} letters, "
                            "digits and -_.:+)")
        lines = []
        for rule in rules or []:
            text = " ".join(str(rule).split())
            if text.startswith("-A "):
                chain = text.split(" ", 2)[1]
                if chain != name:
                    problems.append(f"chains: {name}: rule {text!r} appends to {chain}, not {name}")
            else:
                text = f"-A {name} {text}"
            lines.append(text)
        out[name] = lines
    for name, lines in out.items():
        for line in lines:
            for target in targets_of(line):
                if target.startswith(prefix) and target not in out:
                    problems.append(f"chains: {name}: rule {line!r} jumps to {target}, which is not listed")
    return out, problems


@dataclass
class Op:
    """One step of the transaction: how iptables-restore reads it and how a person would type it."""

    kind: str  # declare | delete | flush | append | remove | insert
    chain: str
    line: str
    command: list[str]


@dataclass
class ChainPlan:
    ops: list[Op]
    problems: list[str]

    def payload(self, table: str) -> str:
        return "".join(f"{line}\n" for line in [f"*{table}", *[op.line for op in self.ops], "COMMIT"])

    def argvs(self, table: str) -> list[list[str]]:
        return [["iptables", "-t", table, *op.command] for op in self.ops]

    def commands(self, table: str) -> list[str]:
        return [shell_line(argv) for argv in self.argvs(table)]


def plan_chains(have: Table, want: dict[str, list[str]], jump: dict | None, prefix: str, state: str) -> ChainPlan:
    """The operations that turn `have` into what `state` asks for.  States:
    merged/replaced: the listed chains get exactly the listed rules; the jump is put in place;
    overridden: also removes podnet chains not listed and bare jumps other than the wanted one;
    deleted: removes the listed chains (all podnet chains when none are listed) and the bare jumps to them."""
    problems: list[str] = []
    owner = Ownership(prefix, want)
    mine = [c for c in have.chains if owner.owns(c)]
    if state == "deleted":
        stale = [c for c in mine if not want or c in want]
        declare: list[str] = []
    else:
        stale = [c for c in mine if c not in want] if state == "overridden" else []
        declare = [c for c in want if c not in have.chains or have.rules.get(c, []) != want[c]]
    stale_set = set(stale)
    wanted_jump = (jump["chain"], jump["target"]) if jump and state != "deleted" else None
    if wanted_jump and wanted_jump[1] not in want and (wanted_jump[1] not in have.chains or wanted_jump[1] in stale_set):
        problems.append(f"jump: target {wanted_jump[1]} is neither listed in chains nor present")
    elif wanted_jump and not owner.owns(wanted_jump[1]):
        problems.append(f"jump: target {wanted_jump[1]} is not podnet's (not named like podnet's chains, not "
                        "listed in chains): podnet jumps only to its own chains")

    deletes: list[tuple[str, str]] = []
    removed_lines: dict[str, list[str]] = {}
    for chain in have.chains:
        if chain in stale_set or chain in declare:
            continue
        for line in have.rules.get(chain, []):
            found = bare_jump(line, owner)
            if found is not None and (found[1] in stale_set or (state == "overridden" and found != wanted_jump)):
                deletes.append(found)
                removed_lines.setdefault(chain, []).append(line)
            elif found is None and stale_set.intersection(targets_of(line)):
                whose = "podnet's chain that stays" if owner.owns(chain) else "not podnet's"
                problems.append(f"chain {', '.join(sorted(stale_set.intersection(targets_of(line))))} is still "
                                f"used by the rule {line!r} ({whose}): remove that rule first")
    insert: tuple[str, int] | None = None
    if wanted_jump:
        chain, target = wanted_jump
        if owner.owns(chain):
            problems.append(f"jump: chain {chain} is one of podnet's own chains; jump from a foreign chain")
        if chain not in have.chains:
            problems.append(f"jump: chain {chain} does not exist in table {have.name}")
        line = f"-A {chain} -j {target}"
        remaining = list(have.rules.get(chain, []))
        for gone in removed_lines.get(chain, []):
            remaining.remove(gone)
        at = [i for i, text in enumerate(remaining) if text == line]
        position = min(int(jump.get("position") or 1), len(remaining) - len(at) + 1)
        if not (len(at) == 1 and at[0] == position - 1):
            deletes += [wanted_jump] * len(at)
            insert = (chain, position)

    ops: list[Op] = []
    for name in declare:
        ops.append(Op("declare", name, f":{name} - [0:0]", ["-F" if name in have.chains else "-N", name]))
    for chain, target in deletes:
        ops.append(Op("delete", chain, f"-D {chain} -j {target}", ["-D", chain, "-j", target]))
    for name in stale:
        ops.append(Op("flush", name, f"-F {name}", ["-F", name]))
    for name in declare:
        for line in want[name]:
            ops.append(Op("append", name, line, shlex.split(line)))
    for name in stale:
        ops.append(Op("remove", name, f"-X {name}", ["-X", name]))
    if insert is not None:
        chain, position = insert
        ops.append(Op("insert", chain, f"-I {chain} {position} -j {wanted_jump[1]}",
                      ["-I", chain, str(position), "-j", wanted_jump[1]]))
    return ChainPlan(ops, problems)


def simulate(have: Table, ops: list[Op]) -> Table:
    """What the table looks like after the operations (as iptables-restore applies them)."""
    out = copy.deepcopy(have)
    for op in ops:
        if op.kind == "declare":
            out.chains.setdefault(op.chain, "-")
            out.rules[op.chain] = []
        elif op.kind == "flush":
            out.rules[op.chain] = []
        elif op.kind == "append":
            out.rules.setdefault(op.chain, []).append(op.line)
        elif op.kind == "delete":
            target = f"-A {op.chain} {op.line.split(' ', 2)[2]}"
            out.rules[op.chain].remove(target)
        elif op.kind == "remove":
            out.chains.pop(op.chain, None)
            out.rules.pop(op.chain, None)
        elif op.kind == "insert":
            _verb, chain, position, *rest = op.line.split(" ")
            out.rules[chain].insert(int(position) - 1, f"-A {chain} {' '.join(rest)}")
    return out


def podnet_view(table: Table, mine: Ownership | str) -> list[str]:
    """podnet's part of a table, for diffs: its chains and rules, then its bare jumps with their position."""
    mine = _ownership(mine)
    lines: list[str] = []
    for name in sorted(c for c in table.chains if mine.owns(c)):
        lines.append(f":{name} - [0:0]")
        lines += table.rules.get(name, [])
    lines += [f"-I {chain} {position} -j {target}" for chain, position, target in _jumps(table, mine)]
    return lines


def _jumps(table: Table, mine: Ownership) -> list[tuple[str, int, str]]:
    """podnet's bare jumps from chains not its own: (chain, 1-based position, target)."""
    found = []
    for chain in table.chains:
        if mine.owns(chain):
            continue
        for index, line in enumerate(table.rules.get(chain, [])):
            jump = bare_jump(line, mine)
            if jump is not None:
                found.append((chain, index + 1, jump[1]))
    return found


def gathered(table: Table, mine: Ownership | str) -> dict[str, Any]:
    mine = _ownership(mine)
    jumps = [{"table": table.name, "chain": chain, "target": target, "position": position}
             for chain, position, target in _jumps(table, mine)]
    return {"chains": {c: list(table.rules.get(c, [])) for c in table.chains if mine.owns(c)},
            "jumps": jumps}


# --- boot-time restore (boot_apply), without Ansible ---------------------------------------------------


def apply_record(record: dict[str, Any], save: str = "iptables-save", restore: str = "iptables-restore") -> list[str]:
    """Re-apply one recorded network_policy result ({table, prefix, chains, jump}) as `merged`: missing or
    changed chains are rewritten and the jump is put back; nothing else is removed.  Returns the commands."""
    table = record.get("table") or "filter"
    prefix = record.get("prefix") or DEFAULT_PREFIX
    want, problems = normalize_chains(record.get("chains") or {}, prefix)
    if problems or not want:
        return []
    text = subprocess.run([save, "-t", table], check=True, capture_output=True, text=True).stdout
    plan = plan_chains(parse_save(text, table), want, record.get("jump"), prefix, "merged")
    if plan.problems or not plan.ops:
        return []
    subprocess.run([restore, "-w", "--noflush"], input=plan.payload(table), check=True, capture_output=True,
                   text=True)
    return plan.commands(table)
