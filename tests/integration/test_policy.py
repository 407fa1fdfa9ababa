"""Network policy on the three-node namespace lab, against the real kernel: chains compiled from
`podnet_network_policies`, real TCP listeners in pod namespaces, and the iptables rules of others left
byte-for-byte alone.

Lab pods (labels in a copy of inventories/lab):
    node1: web {app: web}, other {app: other}
    node2: db {app: db},   web2 {app: web}
    node3: db2 {app: db},  plain (no labels)
Policy: pods app=db accept tcp/5432 from pods app=web, nothing else (cross-node and same-node flows).
A second policy set (on calico-bgp) checks Kubernetes' policy-type defaulting and ipBlock `except` with
real traffic against the reference evaluator of tests/unit/test_policy.py.
"""
from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.unit.test_policy import k8s_allows

from .labkit import LAB_INVENTORY, Lab, list_netns, netns_exec, netns_json, remove_netns, unique_prefix

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")
PODS = {
    "node1": [{"name": "web", "labels": {"app": "web"}}, {"name": "other", "labels": {"app": "other"}}],
    "node2": [{"name": "db", "labels": {"app": "db"}}, {"name": "web2", "labels": {"app": "web"}}],
    "node3": [{"name": "db2", "labels": {"app": "db"}}, {"name": "plain"}],
}
POLICIES = [{"name": "allow-web-to-db", "selector": {"app": "db"},
             "ingress": [{"from": [{"selector": {"app": "web"}}], "ports": [{"port": 5432, "protocol": "tcp"}]}]}]
PORT = 5432
LISTENERS = (("node2", "db"), ("node3", "db2"))
# (source, target, port or None for ping, expected): cross-node and same-node flows.
FLOWS = [
    (("node1", "web"), ("node2", "db"), PORT, True),       # cross-node, allowed
    (("node2", "web2"), ("node2", "db"), PORT, True),      # same node, allowed
    (("node1", "web"), ("node3", "db2"), PORT, True),      # the other selected pod
    (("node1", "other"), ("node2", "db"), PORT, False),    # wrong label, cross-node
    (("node3", "plain"), ("node3", "db2"), PORT, False),   # no label, same node
    (("node3", "db2"), ("node2", "db"), PORT, False),      # db pods do not select each other
    (("node1", "web"), ("node2", "db"), None, False),      # ports restrict to tcp/5432: no ping
    (("node1", "other"), ("node2", "db"), None, False),
    (("node2", "db"), ("node1", "web"), None, True),       # db's egress and web's ingress are open
    (("node1", "other"), ("node3", "plain"), None, True),  # unselected pods are untouched
]
CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()\n"
           "    print('ok')\n"
           "except TimeoutError:\n"
           "    print('timeout')\n"
           "except OSError as exc:\n"
           "    print(type(exc).__name__)\n")


def write_inventory(folder: Path, policies: list | None = POLICIES) -> Path:
    """A copy of inventories/lab with labelled pods and the policies as a group var."""
    target = folder / "lab"
    shutil.copytree(LAB_INVENTORY, target)
    hosts = yaml.safe_load((target / "hosts.yml").read_text())
    for host, pods in PODS.items():
        hosts["podnet_nodes"]["hosts"][host]["podnet_pods"] = pods
    (target / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    if policies is not None:
        with (target / "group_vars" / "podnet_nodes.yml").open("a") as handle:
            handle.write("\n" + yaml.safe_dump({"podnet_network_policies": policies}, sort_keys=False))
    return target


def pod_address(lab: Lab, host: str, pod: str) -> str:
    addrs = netns_json(lab.pod_ns(host, pod), "addr", "show", "dev", "eth0")[0]["addr_info"]
    return [a["local"] for a in addrs if a["family"] == "inet"][0]


def iptables_save(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


def foreign_lines(ns: str) -> dict[str, list[str]]:
    """iptables-save (every table) without podnet's own lines — its PODNET-* chains and jumps, and the
    `podnet:`-tagged rules of the backends (canal's masquerading) — and without counters.  A table that
    then holds nothing but built-in chains with policy ACCEPT counts as absent (nf_tables creates a
    table the first time podnet adds a rule to it)."""
    tables: dict[str, list[str]] = {}
    current = None
    for line in iptables_save(ns):
        if line.startswith("*"):
            current = line[1:]
            tables[current] = []
        elif line != "COMMIT" and current and "PODNET-" not in line and "podnet:" not in line:
            tables[current].append(re.sub(r" \[\d+:\d+\]$", "", line))
    return {name: lines for name, lines in tables.items()
            if not all(re.fullmatch(r":[A-Z]+ ACCEPT", line) for line in lines)}


def podnet_chains(lab: Lab, host: str) -> list[str]:
    return [line.split()[0][1:] for line in iptables_save(lab.node_ns(host)) if line.startswith(":PODNET-")]


def probe(lab: Lab, flows: list[tuple] = FLOWS) -> dict[tuple, str]:
    """Run every flow at once; each answers 'ok', 'timeout' or the error (ping: 'ok' / 'lost')."""
    running = {}
    for src, dst, port, _expected in flows:
        address = pod_address(lab, *dst)
        if port is None:
            argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", address]
        else:
            argv = ["python3", "-c", CONNECT, address, str(port), "3"]
        running[(src, dst, port)] = subprocess.Popen(["ip", "netns", "exec", lab.pod_ns(*src), *argv],
                                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = {}
    for key, proc in running.items():
        stdout, _ = proc.communicate(timeout=60)
        out[key] = ("ok" if proc.returncode == 0 else "lost") if key[2] is None else stdout.strip()
    return out


def assert_flows(lab: Lab, policy_on: bool) -> None:
    results = probe(lab)
    wrong = []
    for src, dst, port, expected in FLOWS:
        want = "ok" if (expected or not policy_on) else ("timeout" if port else "lost")
        got = results[(src, dst, port)]
        if got != want:
            wrong.append(f"{'/'.join(src)} -> {'/'.join(dst)} {f'tcp/{port}' if port else 'ping'}: {got}, "
                         f"expected {want}")
    assert not wrong, wrong


def start_listeners(lab: Lab) -> list[subprocess.Popen]:
    procs = [subprocess.Popen(["ip", "netns", "exec", lab.pod_ns(host, pod), "python3", "-m", "http.server",
                               str(PORT), "--bind", "0.0.0.0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for host, pod in LISTENERS]
    deadline = time.monotonic() + 20
    for host, pod in LISTENERS:  # listening (checked from inside the pod itself, no policy in the way)
        while netns_exec(lab.pod_ns(host, pod), ["python3", "-c", CONNECT, "127.0.0.1", str(PORT), "1"]
                         ).stdout.strip() != "ok":
            assert time.monotonic() < deadline, f"listener in {host}/{pod} did not start"
            time.sleep(0.2)
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def add_foreign_rules(lab: Lab) -> dict[str, dict[str, list[str]]]:
    """Rules podnet must leave alone: in FORWARD, a chain of their own, nat; returns their view per node."""
    for host in NODES:
        for argv in (["iptables", "-w", "-N", "OTHER-CHAIN"],
                     ["iptables", "-w", "-A", "OTHER-CHAIN", "-s", "10.78.0.0/16", "-j", "RETURN"],
                     ["iptables", "-w", "-A", "FORWARD", "-s", "10.77.0.0/16", "-j", "ACCEPT"],
                     ["iptables", "-w", "-A", "FORWARD", "-d", "10.77.0.0/16", "-j", "OTHER-CHAIN"],
                     ["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "10.77.0.0/16", "-j", "RETURN"]):
            lab.exec(host, argv, check=True)
    return {host: foreign_lines(lab.node_ns(host)) for host in NODES}


@pytest.fixture(scope="module", params=["calico-bgp", "canal", "romana-style", "weave-style"])
def policy_lab(request, tmp_path_factory) -> Iterator[Lab]:
    inventory = write_inventory(tmp_path_factory.mktemp(f"policy-{request.param}"))
    lab = Lab(inventory, extra_vars={"podnet_backend": request.param})
    with lab:
        lab.backend = request.param
        lab.foreign = add_foreign_rules(lab)
        lab.listeners = start_listeners(lab)
        try:
            yield lab
        finally:
            stop(lab.listeners)
    assert list_netns(lab.prefix) == []


def test_policy_is_enforced_idempotent_and_verified(policy_lab):
    lab = policy_lab
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    assert podnet_chains(lab, "node1") == []  # no selected pod there: no chain, no jump
    for host in ("node2", "node3"):
        chains = podnet_chains(lab, host)
        assert "PODNET-FORWARD" in chains and len(chains) == 2, chains
        forward = [line for line in iptables_save(lab.node_ns(host)) if line.startswith("-A FORWARD ")]
        assert forward[0] == "-A FORWARD -j PODNET-FORWARD", forward
    assert_flows(lab, policy_on=True)
    again = lab.run("playbooks/site.yml")
    assert again.rc == 0 and all(again.changed(h) == 0 for h in NODES), again.recap
    verify = lab.run("playbooks/verify.yml")
    assert verify.rc == 0, verify.output
    assert {h: foreign_lines(lab.node_ns(h)) for h in NODES} == lab.foreign


def only_on_calico_bgp(lab: Lab) -> None:
    """Drift and reset do not depend on the backend (same chains, same module): run them once."""
    if lab.backend != "calico-bgp":
        pytest.skip(f"backend-independent; runs on calico-bgp only (this lab: {lab.backend})")


def test_check_mode_previews_and_drift_is_repaired(policy_lab):
    lab = policy_lab
    only_on_calico_bgp(lab)
    ns = lab.node_ns("node2")
    lab.exec("node2", ["iptables", "-w", "-D", "FORWARD", "-j", "PODNET-FORWARD"], check=True)
    lab.exec("node2", ["iptables", "-w", "-I", "FORWARD", "1", "-s", "10.79.0.0/16", "-j", "ACCEPT"], check=True)
    lab.foreign["node2"] = foreign_lines(ns)
    drifted = lab.run("playbooks/verify.yml")
    # node2 reports the drift; the pods pinging db from the other nodes now get answers the policy denies
    assert drifted.rc != 0 and drifted.failed("node2") == 1, drifted.output
    assert "-I FORWARD 1 -j PODNET-FORWARD" in drifted.stdout
    assert "answered although the network policy denies it" in drifted.stdout
    before = iptables_save(ns)
    preview = lab.run("playbooks/site.yml", check=True, diff=True)
    assert preview.rc == 0 and preview.changed("node2") == 1 and preview.changed("node3") == 0, preview.recap
    assert iptables_save(ns) == before
    repaired = lab.run("playbooks/site.yml")
    assert repaired.rc == 0 and repaired.changed("node2") == 1 and repaired.changed("node1") == 0, repaired.recap
    assert [line for line in iptables_save(ns) if line.startswith("-A FORWARD ")][0] == "-A FORWARD -j PODNET-FORWARD"
    assert_flows(lab, policy_on=True)
    assert {h: foreign_lines(lab.node_ns(h)) for h in NODES} == lab.foreign


def test_removing_the_policies_restores_open_access(policy_lab):
    lab = policy_lab
    result = lab.run("playbooks/site.yml", extra_vars={"podnet_network_policies": []})
    assert result.rc == 0, result.output
    assert all(podnet_chains(lab, h) == [] for h in NODES)
    assert all("PODNET-" not in line for h in NODES for line in iptables_save(lab.node_ns(h)))
    assert_flows(lab, policy_on=False)
    again = lab.run("playbooks/site.yml", extra_vars={"podnet_network_policies": []})
    assert again.rc == 0 and all(again.changed(h) == 0 for h in NODES), again.recap
    verify = lab.run("playbooks/verify.yml", extra_vars={"podnet_network_policies": []})
    assert verify.rc == 0, verify.output
    assert {h: foreign_lines(lab.node_ns(h)) for h in NODES} == lab.foreign


# Kubernetes semantics in the kernel: web's egress-only policy (no policy_types) also isolates web for
# ingress; db takes tcp/5432 from the cluster CIDR except node1's pod subnet.  (source, target, port or
# None for ping, Kubernetes' verdict as read by hand); the reference evaluator must agree with each.
K8S_FLOWS = [
    (("node1", "web"), ("node2", "db"), PORT, False),      # web's egress allows it, db's except does not
    (("node1", "other"), ("node3", "db2"), PORT, False),   # excepted node1 subnet, cross-node
    (("node2", "web2"), ("node2", "db"), PORT, True),      # same node, inside the cidr, not excepted
    (("node2", "web2"), ("node3", "db2"), PORT, True),     # cross-node
    (("node3", "plain"), ("node3", "db2"), PORT, True),    # unlabelled pod, same node
    (("node3", "plain"), ("node1", "web"), None, False),   # egress-only policy: web takes no ingress
    (("node2", "db"), ("node2", "web2"), None, False),     # the same, same node
    (("node1", "web"), ("node3", "plain"), None, False),   # web may only reach db on tcp/5432
    (("node3", "plain"), ("node2", "db"), None, False),    # db's rule names tcp/5432 only
    (("node1", "other"), ("node3", "plain"), None, True),  # neither is selected
    (("node2", "db"), ("node1", "other"), None, True),     # db's egress is open (Ingress-only policy)
]


def test_kubernetes_defaulting_and_except_with_real_traffic(policy_lab):
    lab = policy_lab
    only_on_calico_bgp(lab)
    labels = {(h, p["name"]): p.get("labels") or {} for h, pods in PODS.items() for p in pods}
    if "eth0" not in [link["ifname"] for link in netns_json(lab.pod_ns("node1", "web"), "link", "show")]:
        # run alone, on a fresh lab: wire the pods first
        wired = lab.run("playbooks/site.yml")
        assert wired.rc == 0, wired.output
    address = {key: pod_address(lab, *key) for key in labels}
    node1 = ipaddress.ip_network(f"{address['node1', 'web']}/24", strict=False)
    assert {key for key, a in address.items() if ipaddress.ip_address(a) in node1} == {
        ("node1", "web"), ("node1", "other")}, address
    policies = [
        {"name": "web-egress-only", "selector": {"app": "web"},
         "egress": [{"to": [{"selector": {"app": "db"}}], "ports": [{"port": PORT}]}]},
        {"name": "db-from-cluster-but-node1", "selector": {"app": "db"},
         "ingress": [{"from": [{"cidr": "10.244.0.0/16", "except": [str(node1)]}], "ports": [{"port": PORT}]}]},
    ]
    pods = {key: {"name": key[1], "address": address[key], "labels": labels[key]} for key in labels}
    for src, dst, port, expected in K8S_FLOWS:
        reference = k8s_allows(policies, pods[src], pods[dst], "icmp" if port is None else "tcp", port)
        assert reference == expected, (src, dst, port)
    result = lab.run("playbooks/site.yml", extra_vars={"podnet_network_policies": policies})
    assert result.rc == 0, result.output
    # node2: web2's egress and ingress chains, db's ingress chain; all named by podnet's grammar
    chains = podnet_chains(lab, "node2")
    assert len(chains) == 4 and all(re.fullmatch(r"PODNET-(FORWARD|[IE]-[0-9a-f]{12})", c) for c in chains), chains
    results = probe(lab, K8S_FLOWS)
    wrong = [f"{'/'.join(src)} -> {'/'.join(dst)} {f'tcp/{port}' if port else 'ping'}: {results[src, dst, port]}"
             for src, dst, port, expected in K8S_FLOWS
             if results[src, dst, port] != ("ok" if expected else ("timeout" if port else "lost"))]
    assert not wrong, wrong
    assert {h: foreign_lines(lab.node_ns(h)) for h in NODES} == lab.foreign


def test_reset_removes_the_policy_chains(policy_lab):
    lab = policy_lab
    only_on_calico_bgp(lab)
    assert lab.run("playbooks/site.yml").rc == 0
    assert podnet_chains(lab, "node2")
    result = lab.run("playbooks/reset.yml")
    assert result.rc == 0, result.output
    assert all("PODNET-" not in line for h in NODES for line in iptables_save(lab.node_ns(h)))
    assert {h: foreign_lines(lab.node_ns(h)) for h in NODES} == lab.foreign


def test_flannel_refuses_policies_before_touching_any_host(lab_factory, tmp_path):
    lab = lab_factory(inventory=write_inventory(tmp_path), extra_vars={"podnet_backend": "flannel-vxlan"})
    before = {h: (lab.json(h, "link", "show"), iptables_save(lab.node_ns(h))) for h in NODES}
    result = lab.run("playbooks/site.yml")
    assert result.rc != 0
    assert "podnet_network_policies: backend flannel-vxlan has no network policy" in result.output, result.output
    assert {h: (lab.json(h, "link", "show"), iptables_save(lab.node_ns(h))) for h in NODES} == before
    assert all([link["ifname"] for link in before[h][0]] == ["lo", "eth0"] for h in NODES)


def test_compiled_rules_are_exactly_what_iptables_save_prints():
    """Every shape of rule the compiler emits, restored into a scratch namespace and read back."""
    from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.iptables_chains import (
        Table,
        normalize_chains,
        plan_chains,
    )
    from ansible_collections.podnet.dataplane.plugins.module_utils.plan.policy import (
        comment,
        compile_policies,
    )

    nodes = {"n1": {"name": "n1", "pods": [
        {"name": "a", "netns": "x-a", "address": "10.244.0.2/24", "host_interface": "cali0123456789a",
         "labels": {"app": "a", "example.com/tier": "front"}},
        {"name": "b", "netns": "x-b", "address": "10.244.0.3/24", "host_interface": "vethabcdef12", "labels": {}}]}}
    policies = [
        {"name": "rich.policy-1", "selector": {"app": "a"}, "policy_types": ["Ingress", "Egress"],
         "ingress": [{"from": [{"selector": {}}, {"cidr": "10.0.0.0/8"}, {"cidr": "0.0.0.0/0"},
                               {"cidr": "172.16.0.0/12", "except": ["172.17.0.0/16", "172.31.255.255/32"]}],
                      "ports": [{"port": 80}, {"port": 53, "protocol": "udp"}, {"protocol": "udp"},
                                {"port": 1000, "end_port": 2000}, {"port": 7, "end_port": 7}]},
                     {}],
         "egress": [{"to": [{"cidr": "192.168.1.0/24"}]}, {"ports": [{"protocol": "tcp"}]}]},
        {"name": "deny", "selector": {}},
    ]
    chains = compile_policies("calico-bgp", policies, nodes)["n1"]["chains"]
    # the longest comment the kernel keeps, in two-byte characters (the cut falls on a character boundary)
    chains["PODNET-C-0123456789ab"] = [f"-A PODNET-C-0123456789ab {comment('a' + 'é' * 200)} -j RETURN"]
    want, problems = normalize_chains(chains, "PODNET-")
    assert problems == []
    payload = plan_chains(Table.empty("filter"), want, None, "PODNET-", "merged").payload("filter")
    ns = f"{unique_prefix()}-canonical"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        restore = subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "-w", "--noflush"], input=payload,
                                 capture_output=True, text=True)
        assert restore.returncode == 0, restore.stderr + payload
        shown: dict[str, list[str]] = {}
        for line in iptables_save(ns):
            if line.startswith("-A PODNET-"):
                shown.setdefault(line.split()[1], []).append(line)
        assert shown == want
    finally:
        remove_netns(ns.rsplit("-", 1)[0])


def test_boot_apply_record_restores_the_chains():
    """What network_policy records in persist_dir is re-applied by iptables_chains.apply_record (boot)."""
    chains = {"PODNET-FORWARD": ["-A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                                 "-A PODNET-FORWARD -o cali0123456789a -j PODNET-I-0123456789ab"],
              "PODNET-I-0123456789ab": ["-A PODNET-I-0123456789ab -s 10.244.0.2/32 -p tcp -m tcp --dport 5432 "
                                        "-m comment --comment allow-web-db -j RETURN",
                                        "-A PODNET-I-0123456789ab -j DROP"]}
    record = {"table": "filter", "prefix": "PODNET-", "chains": chains,
              "jump": {"table": "filter", "chain": "FORWARD", "target": "PODNET-FORWARD", "position": 1}}
    code = ("import json, sys\n"
            "from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.iptables_chains import apply_record\n"
            "print(json.dumps(apply_record(json.loads(sys.argv[1]))))\n")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "collections"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    prefix = unique_prefix()
    ns = f"{prefix}-boot"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-A", "FORWARD", "-s", "10.77.0.0/16", "-j",
                        "ACCEPT"], check=True)
        run = [sys.executable, "-c", code, json.dumps(record)]
        first = subprocess.run(["ip", "netns", "exec", ns, *run], env=env, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)[-1] == "iptables -t filter -I FORWARD 1 -j PODNET-FORWARD"
        lines = iptables_save(ns)
        assert [x for x in lines if x.startswith("-A FORWARD")] == ["-A FORWARD -j PODNET-FORWARD",
                                                                    "-A FORWARD -s 10.77.0.0/16 -j ACCEPT"]
        assert [x for x in lines if x.startswith("-A PODNET-")] == chains["PODNET-FORWARD"] + chains[
            "PODNET-I-0123456789ab"]
        second = subprocess.run(["ip", "netns", "exec", ns, *run], env=env, capture_output=True, text=True)
        assert second.returncode == 0 and json.loads(second.stdout) == [], second.stdout + second.stderr
    finally:
        remove_netns(prefix)
