# Copyright: podnet contributors
# Apache License 2.0
"""Network policy with Kubernetes NetworkPolicy semantics, compiled to iptables chains podnet owns.

Pure Python, no host access (the planner calls `compile_policies` on the controller).

Inventory model (group var `podnet_network_policies`, pod labels in `podnet_pods[*].labels`)::

    podnet_network_policies:
      - name: allow-web-to-db
        selector: {app: db}                 # the pods this policy applies to ({} = every pod)
        policy_types: [Ingress]             # optional, see below
        ingress:
          - from:                                                # omitted or [] = any peer
              - selector: {app: web}
              - cidr: 10.0.0.0/8
                except: [10.1.0.0/16]                            # optional, strictly inside cidr
            ports: [{port: 5432, protocol: tcp}]                 # omitted or [] = every port
        egress:
          - to: [...]
            ports: [...]

Semantics: Kubernetes' (networking/v1 NetworkPolicy), without namespaces:
- A pod selected by at least one policy of a type (Ingress / Egress) gets default deny for that
  type; what the union of those policies' rules of that type allows passes.  Pods no policy selects
  for a type are open for it.
- `policy_types` omitted (or []) defaults as Kubernetes' API server does: Ingress always, plus Egress
  when `egress` is a non-empty list.  So an egress-only policy also denies every ingress to its pods,
  `egress: []` alone restricts nothing outgoing, and a policy with neither key denies all ingress.
  An explicit `policy_types` is taken as given; rules of a type it does not list are ignored (as
  Kubernetes ignores them), not refused.
- A rule's `from`/`to` omitted or [] means every peer; its `ports` omitted or [] every port and
  protocol (ICMP too).  `ingress: [{}]` allows everything; `ingress: []` or no `ingress` key (with
  Ingress among the types) allows nothing.
- Selectors match labels exactly (matchLabels: every listed label, equal values); a peer selector
  matches pods on every node (podnet knows every pod's address from the inventory).  `{selector: {}}`
  is every pod, not every address.
- A `cidr` peer matches addresses inside it except those inside one of its `except` blocks (ipBlock);
  each except block must lie strictly inside the cidr, as Kubernetes' validation demands.
- A port entry without `port` means every port of its protocol (tcp default); `end_port` makes a range.
- Replies of allowed connections (conntrack ESTABLISHED/RELATED) always pass.

Kernel shape (filter table, routed pod wiring: every pod's traffic crosses the node's FORWARD chain
through the pod's host-side veth):

    -A FORWARD -j PODNET-FORWARD                               (inserted at position 1)
    -A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
    -A PODNET-FORWARD -i <veth> -m comment --comment "<node>/<pod> egress" -j PODNET-E-<id>
    -A PODNET-FORWARD -o <veth> -m comment --comment "<node>/<pod> ingress" -j PODNET-I-<id>
    -A PODNET-I-<id> -s 10.244.1.2/32 -p tcp -m tcp --dport 5432 -m comment --comment <policy> -j RETURN
    -A PODNET-I-<id> -j DROP

podnet's chains only ever drop: traffic a policy allows RETURNs to FORWARD, whose own rules and
policy decide as they did before (podnet never turns a foreign DROP into an ACCEPT).  `<id>` is a
hash of the pod's network namespace; these are the only chain names podnet makes.

A cidr peer with `except` blocks becomes the CIDR blocks of `cidr` minus the except blocks (the
fewest, in address order), one RETURN rule each: 10.0.0.0/8 except 10.1.0.0/16 is the 8 blocks
10.0.0.0/16, 10.2.0.0/15, ..., 10.128.0.0/9.  The chain stays a plain "any RETURN allows, else DROP"
list, so an except block can never hide a source that another rule or policy allows (an exclusion
rule in front of the RETURNs would, and a sub-chain cannot end the pod chain without an ACCEPT or a
packet mark).  An except block of prefix length p inside a cidr of length c adds at most p - c rules
per port entry.

Every rule string is exactly what `iptables-save` prints, so the network_policy module compares
chains textually and a second run changes nothing.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.plan.backends import (
    CALICO_BACKENDS,
    FLANNEL_BACKENDS,
    KNOWN_BACKENDS,
    POLICY_STYLE_BACKENDS,
    PROFILES,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import PlanError

VAR = "podnet_network_policies"
PREFIX = "PODNET-"
FORWARD_CHAIN = "PODNET-FORWARD"
JUMP = {"table": "filter", "chain": "FORWARD", "target": FORWARD_CHAIN, "position": 1}
POLICY_BACKENDS = CALICO_BACKENDS + POLICY_STYLE_BACKENDS
MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1
INGRESS, EGRESS = "Ingress", "Egress"
PROTOCOLS = ("tcp", "udp")
ESTABLISHED_RULE = f"-A {FORWARD_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"

POLICY_KEYS = ("name", "selector", "policy_types", "ingress", "egress")
RULE_KEYS = {INGRESS: ("from", "ports"), EGRESS: ("to", "ports")}
PEER_KEYS = ("selector", "cidr", "except")
PORT_KEYS = ("port", "protocol", "end_port")

# Kubernetes label syntax (apimachinery validation): key = [prefix/]name, value = name or "".
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
LABEL_NAME_MAX = 63
LABEL_PREFIX_MAX = 253
POLICY_NAME_MAX = 253


# --- iptables-save's canonical text -----------------------------------------------------------------

_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def save_string(value: str) -> str:
    """A string argument as iptables-save prints it (xtables_save_string): bare when it is only
    letters, digits, '-' and '_', else in double quotes with '"', '\\' and "'" escaped."""
    if value and all(c in _NO_QUOTE for c in value):
        return value
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in value) + '"'


# xt_comment keeps at most XT_MAX_COMMENT_LEN (256) bytes including the NUL; iptables refuses longer.
MAX_COMMENT_BYTES = 255


def comment(text: str) -> str:
    """A comment match; the text cut to what xt_comment holds, on a character boundary (the kernel
    counts UTF-8 bytes, and half a character would not print back as it was written)."""
    cut = text.encode()[:MAX_COMMENT_BYTES].decode(errors="ignore")
    return f"-m comment --comment {save_string(cut)}"


def chain_id(netns: str) -> str:
    """Stable per-pod chain id: 12 hex digits of a hash of the pod's network namespace."""
    return hashlib.sha256(f"podnet-policy/{netns}".encode()).hexdigest()[:12]


def ingress_chain(netns: str) -> str:
    return f"{PREFIX}I-{chain_id(netns)}"


def egress_chain(netns: str) -> str:
    return f"{PREFIX}E-{chain_id(netns)}"


# --- validation --------------------------------------------------------------------------------------


def label_key_problems(key: Any) -> list[str]:
    """Why `key` is not a valid Kubernetes label key (empty list: it is)."""
    if not isinstance(key, str):
        return [f"label key {key!r} must be a string"]
    prefix, slash, name = key.rpartition("/")
    problems = []
    if slash:
        if not prefix:
            problems.append(f"label key {key!r}: the prefix before '/' is empty")
        elif len(prefix) > LABEL_PREFIX_MAX or not _DNS_SUBDOMAIN.fullmatch(prefix):
            problems.append(f"label key {key!r}: prefix {prefix!r} must be a DNS subdomain (lowercase "
                            f"letters, digits, '-' and '.', at most {LABEL_PREFIX_MAX} characters)")
    if not name:
        problems.append(f"label key {key!r}: the name is empty")
    elif len(name) > LABEL_NAME_MAX or not _LABEL_NAME.fullmatch(name):
        problems.append(f"label key {key!r}: name {name!r} must be at most {LABEL_NAME_MAX} characters of "
                        "letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
    return problems


def label_value_problems(key: Any, value: Any) -> list[str]:
    if not isinstance(value, str):
        return [f"label {key}: value {value!r} must be a string (quote it in YAML)"]
    if value and (len(value) > LABEL_NAME_MAX or not _LABEL_NAME.fullmatch(value)):
        return [f"label {key}: value {value!r} must be empty or at most {LABEL_NAME_MAX} characters of "
                "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"]
    return []


def label_problems(labels: Any) -> list[str]:
    if not isinstance(labels, dict):
        return [f"must be a mapping of label keys to values, got {labels!r}"]
    out = []
    for key, value in labels.items():
        found = label_key_problems(key)
        out += found or label_value_problems(key, value)
    return out


@dataclass(frozen=True)
class Port:
    protocol: str
    port: int | None = None
    end_port: int | None = None

    def args(self) -> str:
        if self.port is None:
            return f"-p {self.protocol}"
        ports = str(self.port) if self.end_port in (None, self.port) else f"{self.port}:{self.end_port}"
        return f"-p {self.protocol} -m {self.protocol} --dport {ports}"

    def matches(self, protocol: str, port: int | None) -> bool:
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        return port is not None and self.port <= port <= (self.end_port or self.port)


@dataclass(frozen=True)
class Peer:
    selector: dict[str, str] | None = None
    cidr: ipaddress.IPv4Network | None = None
    excepts: tuple[ipaddress.IPv4Network, ...] = ()  # ipBlock.except: inside cidr, not matched

    def matches_address(self, address: ipaddress.IPv4Address) -> bool:
        return (self.cidr is not None and address in self.cidr
                and not any(address in block for block in self.excepts))

    def blocks(self) -> list[ipaddress.IPv4Network]:
        """cidr minus the except blocks, as the fewest CIDR blocks in address order ([] for a selector)."""
        remaining = [self.cidr] if self.cidr is not None else []
        for excluded in self.excepts:
            kept: list[ipaddress.IPv4Network] = []
            for block in remaining:
                if excluded.subnet_of(block):
                    kept += block.address_exclude(excluded)
                elif not block.subnet_of(excluded):
                    kept.append(block)
            remaining = kept
        return list(ipaddress.collapse_addresses(remaining))


@dataclass
class Rule:
    peers: list[Peer] | None  # None: any peer
    ports: list[Port] | None  # None: every port and protocol


@dataclass
class Policy:
    name: str
    selector: dict[str, str]
    types: tuple[str, ...]
    rules: dict[str, list[Rule]] = field(default_factory=dict)  # type -> rules


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class _Checker:
    def __init__(self, host: str):
        self.host = host
        self.problems: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"host {self.host}: {where}: {message}")

    def unknown_keys(self, where: str, item: dict, allowed: tuple[str, ...]) -> None:
        for key in item:
            if key not in allowed:
                self.add(where, f"unknown key {key!r} (allowed: {', '.join(allowed)})")

    def selector(self, where: str, value: Any) -> dict[str, str] | None:
        found = label_problems(value)
        for message in found:
            self.add(where, message)
        return None if found else {str(k): v for k, v in value.items()}

    def port(self, where: str, item: Any) -> Port | None:
        if not isinstance(item, dict):
            self.add(where, f"must be a mapping like {{port: 5432, protocol: tcp}}, got {item!r}")
            return None
        self.unknown_keys(where, item, PORT_KEYS)
        ok = True
        protocol = item.get("protocol", "tcp")
        if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
            self.add(f"{where}.protocol", f"{protocol!r} is not supported; use tcp or udp")
            ok = False
        values: dict[str, int | None] = {}
        for key in ("port", "end_port"):
            raw = item.get(key)
            if raw is None:
                values[key] = None
                continue
            number = _int(raw)
            if number is None:
                self.add(f"{where}.{key}", f"{raw!r} must be a port number (named ports are not supported)")
                ok = False
            elif not 1 <= number <= 65535:
                self.add(f"{where}.{key}", f"{number} is out of range (1..65535)")
                ok = False
            values[key] = number
        if values["end_port"] is not None and ok:
            if values["port"] is None:
                self.add(f"{where}.end_port", "needs port (the start of the range)")
                ok = False
            elif values["end_port"] < values["port"]:
                self.add(f"{where}.end_port", f"{values['end_port']} is below port {values['port']}")
                ok = False
        return Port(protocol.lower(), values["port"], values["end_port"]) if ok else None

    def peer(self, where: str, item: Any) -> Peer | None:
        if not isinstance(item, dict) or len([k for k in ("selector", "cidr") if k in item]) != 1:
            self.add(where, f"must be {{selector: {{...}}}} or {{cidr: 10.0.0.0/8}}, got {item!r}")
            if isinstance(item, dict):
                self.unknown_keys(where, item, PEER_KEYS)
            return None
        self.unknown_keys(where, item, PEER_KEYS)
        if "selector" in item:
            if "except" in item:
                self.add(f"{where}.except", "belongs to a cidr peer (ipBlock), not to a selector")
                return None
            selector = self.selector(f"{where}.selector", item["selector"])
            return Peer(selector=selector) if selector is not None else None
        net = self.cidr(f"{where}.cidr", item["cidr"])
        raw_excepts = item.get("except")
        if raw_excepts is None:
            raw_excepts = []
        if not isinstance(raw_excepts, list):
            self.add(f"{where}.except", f"must be a list of CIDR blocks inside cidr, got {raw_excepts!r}")
            return None
        excepts = []
        for index, raw in enumerate(raw_excepts):
            block = self.cidr(f"{where}.except[{index}]", raw)
            # Kubernetes' validation: an except block must be a strict subset of the peer's cidr
            if block is not None and net is not None and not (block.subnet_of(net)
                                                              and block.prefixlen > net.prefixlen):
                self.add(f"{where}.except[{index}]", f"{block} is not strictly inside cidr {net} (an except "
                                                     "block must be a smaller block within the cidr)")
                block = None
            excepts.append(block)
        if net is None or any(block is None for block in excepts):
            return None
        return Peer(cidr=net, excepts=tuple(excepts))

    def cidr(self, where: str, raw: Any) -> ipaddress.IPv4Network | None:
        if not isinstance(raw, str) or "/" not in raw:
            self.add(where, f"{raw!r} is not an IPv4 network in CIDR notation (like 10.0.0.0/8)")
            return None
        try:
            # no strip(): like Kubernetes' ParseCIDR, the whole string must be the network
            return ipaddress.IPv4Network(raw, strict=True)
        except ValueError as exc:
            self.add(where, f"{raw!r} is not an IPv4 network ({exc})")
            return None

    def rule(self, where: str, item: Any, kind: str) -> Rule | None:
        if item is None:
            item = {}
        if not isinstance(item, dict):
            self.add(where, f"must be a mapping with {' and/or '.join(RULE_KEYS[kind])}, got {item!r}")
            return None
        peers_key = RULE_KEYS[kind][0]
        self.unknown_keys(where, item, RULE_KEYS[kind])
        peers_ok, peers = self.entries(f"{where}.{peers_key}", item.get(peers_key), self.peer, "a list of peers")
        ports_ok, ports = self.entries(f"{where}.ports", item.get("ports"), self.port,
                                       "a list of {port, protocol} mappings")
        return Rule(peers, ports) if peers_ok and ports_ok else None

    def entries(self, where: str, raw: Any, parse, shape: str) -> tuple[bool, list | None]:
        """A rule's peers or ports: (all valid, the parsed list, or None for "any" when omitted or [])."""
        if raw in (None, []):
            return True, None
        if not isinstance(raw, list):
            self.add(where, f"must be {shape}")
            return False, None
        parsed = [parse(f"{where}[{index}]", entry) for index, entry in enumerate(raw)]
        return all(entry is not None for entry in parsed), parsed


def validate_policies(backend: str, policies: Any, host: str, wiring: str | None = None) -> list[Policy]:
    """Normalized policies, or PlanError with every problem (each naming host, policy and field). `wiring`:
    the cluster's pod wiring (the backend preset's when None); policy needs the routed one."""
    check = _Checker(host)
    if policies in (None, ""):
        policies = []
    if not isinstance(policies, list):
        check.add(VAR, "must be a list of policies ({name, selector, ingress, egress})")
        raise PlanError(check.problems)
    if backend in PROFILES and (wiring or PROFILES[backend].pod_mode) == "bridge":
        if policies:
            why = ("flannel implements none" if backend in FLANNEL_BACKENDS and wiring in (None, "bridge")
                   else "its pods are wired to a bridge (podnet_pod_wiring: bridge)")
            check.add(VAR, f"backend {backend} has no network policy ({why}); use one of "
                           f"{', '.join(POLICY_BACKENDS)}, or podnet_pod_wiring: routed, or remove the policies")
            raise PlanError(check.problems)
    elif policies and backend not in KNOWN_BACKENDS:
        check.add(VAR, f"backend {backend!r} does not support network policy")
        raise PlanError(check.problems)
    out: list[Policy] = []
    names: set[str] = set()
    for index, item in enumerate(policies):
        name = item.get("name") if isinstance(item, dict) else None
        # the name labels every message of this policy: only a printable one of sane length may
        label = (name if isinstance(name, str) and name and name.isprintable() and len(name) <= POLICY_NAME_MAX
                 else str(index))
        where = f"{VAR}[{label}]"
        if not isinstance(item, dict):
            check.add(where, f"must be a mapping with {', '.join(POLICY_KEYS)}, got {item!r}")
            continue
        before = len(check.problems)
        check.unknown_keys(where, item, POLICY_KEYS)
        if not isinstance(name, str) or not name:
            check.add(f"{where}.name", "is required (a name like allow-web-to-db)")
        elif len(name) > POLICY_NAME_MAX or not _DNS_SUBDOMAIN.fullmatch(name):
            check.add(f"{where}.name", f"{name!r} must be lowercase letters, digits, '-' and '.', starting "
                                       f"and ending with a letter or digit (at most {POLICY_NAME_MAX})")
        elif name in names:
            check.add(f"{where}.name", f"duplicate policy name {name!r}")
        names.add(name if isinstance(name, str) else "")
        selector = None
        if "selector" not in item:
            check.add(f"{where}.selector", "is required ({} selects every pod)")
        else:
            selector = check.selector(f"{where}.selector", item["selector"] if item["selector"] is not None
                                      else {})
        types: list[str] = []
        raw_types = item.get("policy_types")
        if raw_types in (None, []):
            # Kubernetes' defaulting (absent and empty alike): Ingress always, Egress when there are
            # egress rules.  Rules of a type the policy does not have are ignored, as Kubernetes does.
            egress_rules = item.get("egress")
            types = [INGRESS] + ([EGRESS] if isinstance(egress_rules, list) and egress_rules else [])
        elif not isinstance(raw_types, list):
            check.add(f"{where}.policy_types",
                      f"must be a list of {INGRESS} and/or {EGRESS}, got {raw_types!r}")
        elif len(raw_types) > 2:
            check.add(f"{where}.policy_types", f"may not list more than two types, got {raw_types!r}")
        else:
            known = {t.lower(): t for t in (INGRESS, EGRESS)}
            for raw in raw_types:
                if not isinstance(raw, str) or raw.lower() not in known:
                    check.add(f"{where}.policy_types", f"{raw!r} is not {INGRESS} or {EGRESS}")
                elif known[raw.lower()] not in types:
                    types.append(known[raw.lower()])
        rules: dict[str, list[Rule]] = {}
        for kind, key in ((INGRESS, "ingress"), (EGRESS, "egress")):
            raw_rules = item.get(key)
            if raw_rules is None:
                rules[kind] = []
                continue
            if not isinstance(raw_rules, list):
                check.add(f"{where}.{key}", "must be a list of rules")
                continue
            rules[kind] = []
            for rule_index, raw in enumerate(raw_rules):
                rule = check.rule(f"{where}.{key}[{rule_index}]", raw, kind)
                if rule is not None:
                    rules[kind].append(rule)
        if len(check.problems) == before:
            out.append(Policy(name, selector or {}, tuple(t for t in (INGRESS, EGRESS) if t in types), rules))
    if check.problems:
        raise PlanError(check.problems)
    return out


def validate_pod_labels(nodes: dict[str, dict]) -> list[str]:
    problems = []
    for host, node in nodes.items():
        for pod in node.get("pods") or []:
            for message in label_problems(pod.get("labels") or {}):
                problems.append(f"host {host}: podnet_pods[{pod.get('name')}].labels: {message}")
    return problems


# --- compilation ---------------------------------------------------------------------------------------


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_ip(pod: dict) -> str:
    return str(ipaddress.ip_interface(pod["address"]).ip)


def _peer_nets(peers: list[Peer] | None, everyone: list[tuple[str, dict]]) -> list[str | None]:
    """Address matches for a rule's peers: [None] = any address; [] = matches nothing."""
    if peers is None:
        return [None]
    nets: list[str | None] = []
    for peer in peers:
        if peer.cidr is not None:
            # -s 0.0.0.0/0 prints as nothing
            candidates = [None if block.prefixlen == 0 else str(block) for block in peer.blocks()]
        else:
            candidates = [f"{_pod_ip(pod)}/32" for _host, pod in everyone
                          if selects(peer.selector or {}, pod.get("labels") or {})]
        for net in candidates:
            if net not in nets:
                nets.append(net)
    return nets


def _chain_rules(chain: str, kind: str, policies: list[Policy], everyone: list[tuple[str, dict]]) -> list[str]:
    flag = "-s" if kind == INGRESS else "-d"
    lines: list[str] = []
    for policy in policies:
        for rule in policy.rules.get(kind, []):
            for net in _peer_nets(rule.peers, everyone):
                for port in rule.ports if rule.ports is not None else [None]:
                    words = [f"-A {chain}"]
                    if net is not None:
                        words.append(f"{flag} {net}")
                    if port is not None:
                        words.append(port.args())
                    words += [comment(policy.name), "-j RETURN"]
                    line = " ".join(words)
                    if line not in lines:
                        lines.append(line)
    lines.append(f"-A {chain} -j DROP")
    return lines


def compile_policies(backend: str, policies: Any, nodes: dict[str, dict], wiring: str | None = None) -> dict[str, dict]:
    """Per node: {"chains": {name: [iptables-save lines]}, "jump": {table, chain, target, position}}.

    `nodes` is the planner's per-node state (pods with address, netns, host_interface, labels).
    Raises PlanError listing every problem; `chains` is empty on a node where no pod is selected."""
    first = next(iter(nodes), "(all)")
    problems = validate_pod_labels(nodes)
    try:
        normalized = validate_policies(backend, policies, first, wiring)
    except PlanError as exc:
        problems += exc.problems
        normalized = []
    if problems:
        raise PlanError(problems)
    normalized.sort(key=lambda p: p.name)
    everyone = [(host, pod) for host, node in nodes.items() for pod in node.get("pods") or []]
    out: dict[str, dict] = {}
    for host, node in nodes.items():
        chains: dict[str, list[str]] = {}
        forward = [ESTABLISHED_RULE]
        for pod in node.get("pods") or []:
            labels = pod.get("labels") or {}
            veth = pod["host_interface"]
            netns = pod.get("netns") or pod["name"]
            for kind, make_chain, direction, word in ((EGRESS, egress_chain, "-i", "egress"),
                                                      (INGRESS, ingress_chain, "-o", "ingress")):
                selecting = [p for p in normalized if kind in p.types and selects(p.selector, labels)]
                if not selecting:
                    continue
                chain = make_chain(netns)
                if chain in chains:
                    problems.append(f"host {host}: podnet_pods[{pod['name']}]: policy chain {chain} collides "
                                    "with another pod's (rename the pod)")
                    continue
                chains[chain] = _chain_rules(chain, kind, selecting, everyone)
                note = comment(f"{host}/{pod['name']} {word}")
                forward.append(f"-A {FORWARD_CHAIN} {direction} {veth} {note} -j {chain}")
        if chains:
            chains = {FORWARD_CHAIN: forward, **chains}
        out[host] = {"chains": chains, "jump": dict(JUMP)}
    if problems:
        raise PlanError(problems)
    return out


# --- expected reachability (verify.yml, tests) ---------------------------------------------------------


def flow_allowed(policies: list[Policy], nodes: dict[str, dict], src: tuple[str, str], dst: tuple[str, str],
                 protocol: str = "icmp", port: int | None = None) -> bool:
    """Whether the compiled chains let a new flow from pod src=(host, pod) to pod dst=(host, pod) through.
    `policies` are validate_policies()' result."""
    pods = {(host, pod["name"]): pod for host, node in nodes.items() for pod in node.get("pods") or []}
    src_pod, dst_pod = pods[src], pods[dst]

    def passes(kind: str, subject: dict, peer: dict) -> bool:
        selecting = [p for p in policies if kind in p.types and selects(p.selector, subject.get("labels") or {})]
        if not selecting:
            return True
        peer_ip = ipaddress.ip_address(_pod_ip(peer))
        for policy in selecting:
            for rule in policy.rules.get(kind, []):
                peer_ok = rule.peers is None or any(
                    p.matches_address(peer_ip)
                    or (p.selector is not None and selects(p.selector, peer.get("labels") or {}))
                    for p in rule.peers)
                port_ok = rule.ports is None or any(p.matches(protocol, port) for p in rule.ports)
                if peer_ok and port_ok:
                    return True
        return False

    return passes(EGRESS, src_pod, dst_pod) and passes(INGRESS, dst_pod, src_pod)


def ping_surprises(cluster: dict, results: list[dict]) -> list[str]:
    """pod_ping results ({source: "host/pod", target: "host/pod", ok}) that disagree with the policies in
    the plan: no answer although the policy lets ICMP through, or an answer although it does not."""
    policies = validate_policies(cluster["settings"]["podnet_backend"],
                                 cluster["settings"].get(VAR) or [], "(cluster)",
                                 cluster["settings"].get("podnet_pod_wiring"))
    out = []
    for result in results or []:
        src, dst = tuple(result["source"].split("/", 1)), tuple(result["target"].split("/", 1))
        allowed = flow_allowed(policies, cluster["nodes"], src, dst, "icmp")
        if bool(result["ok"]) != allowed:
            out.append(f"{result['source']} -> {result['target']}: "
                       + ("answered although the network policy denies it" if result["ok"] else "no answer"))
    return out
