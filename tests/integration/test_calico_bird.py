"""calico-bgp with real BIRD 2 in every lab node: full mesh, a route reflector, node removal, reset.

Routes must be the ones BIRD learned (`proto bird`), and pods must reach each other over them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .labkit import REPO_ROOT, Lab, PlaybookResult, list_netns, netns_exec, netns_json, probed_runs

pytestmark = pytest.mark.integration

NODES = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
BIRD = {"podnet_backend": "calico-bgp", "podnet_calico_bgp": "bird"}
CONVERGE_TIMEOUT = 30.0

if shutil.which("bird") is None:
    pytestmark = [pytestmark, pytest.mark.skip(reason="bird2 is not installed (make setup installs it)")]


def subnets_of(lab: Lab) -> dict[str, str]:
    return json.loads(Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text())


def bird_routes(lab: Lab, host: str) -> dict[str, str]:
    return {r["dst"]: r.get("gateway") for r in lab.json(host, "route", "show", "proto", "bird")
            if r.get("type") != "blackhole"}


def expected_routes(lab: Lab, hosts: dict[str, str]) -> dict[str, dict[str, str]]:
    subnets = subnets_of(lab)
    return {h: {subnets[p]: ip for p, ip in hosts.items() if p != h} for h in hosts}


def wait_for_routes(lab: Lab, hosts: dict[str, str]) -> float:
    """Seconds until every node has exactly the peers' blocks via their node IPs, learned by BIRD."""
    want = expected_routes(lab, hosts)
    start = time.monotonic()
    while True:
        have = {h: bird_routes(lab, h) for h in hosts}
        if have == want:
            return time.monotonic() - start
        if time.monotonic() - start > CONVERGE_TIMEOUT:
            raise AssertionError(f"BIRD routes did not converge in {CONVERGE_TIMEOUT} s: {have} != {want}")
        time.sleep(0.2)


def bird_path(lab: Lab, host: str, name: str) -> str:
    return f"/run/podnet-lab/{lab.prefix}/{host}/bird/{name}"


def bgp_sessions(lab: Lab, host: str) -> list[str]:
    out = lab.exec(host, ["birdc", "-s", bird_path(lab, host, "bird.ctl"), "show", "protocols"], check=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if " BGP " in f" {line} ")


def assert_pods_reach_each_other(lab: Lab, hosts) -> None:
    addresses = {}
    for host in hosts:
        for pod in ("pod1", "pod2"):
            addrs = netns_json(lab.pod_ns(host, pod), "addr", "show", "dev", "eth0")[0]["addr_info"]
            addresses[(host, pod)] = [a["local"] for a in addrs if a["family"] == "inet"][0]
    failures = [f"{h}/{p} -> {t}" for (h, p) in addresses for (o, _), t in addresses.items()
                if o != h and netns_exec(lab.pod_ns(h, p), ["ping", "-n", "-q", "-c", "1", "-W", "2", t]
                                         ).returncode != 0]
    assert not failures, failures


def inventory_copy(tmp_path: Path, drop: str | None = None, reflectors: tuple[str, ...] = ()) -> Path:
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventories" / "lab", inventory)
    hosts_file = inventory / "hosts.yml"
    data = yaml.safe_load(hosts_file.read_text())
    hosts = data["podnet_nodes"]["hosts"]
    if drop:
        del hosts[drop]
    for name in reflectors:
        hosts[name]["podnet_bgp_route_reflector"] = True
    hosts_file.write_text(yaml.safe_dump(data))
    return inventory


@pytest.fixture(scope="module")
def mesh_lab():
    lab = Lab(extra_vars=BIRD)
    with lab:
        yield lab
    assert list_netns(lab.prefix) == []


def test_full_mesh_converges_and_carries_pod_traffic(mesh_lab, record_property):
    lab = mesh_lab
    result = lab.run("playbooks/site.yml")
    assert result.rc == 0, result.output
    wait_for_routes(lab, NODES)
    # Convergence from a cold start: stop every BIRD (its routes go), start all three, time the routes.
    for host in NODES:
        lab.exec(host, ["birdc", "-s", bird_path(lab, host, "bird.ctl"), "down"], check=True)
    assert all(bird_routes(lab, h) == {} for h in NODES)
    for host in NODES:
        lab.exec(host, ["bird", "-c", bird_path(lab, host, "bird.conf"), "-s", bird_path(lab, host, "bird.ctl"),
                        "-P", bird_path(lab, host, "bird.pid")], check=True)
    seconds = wait_for_routes(lab, NODES)
    record_property("bird_convergence_seconds", round(seconds, 2))
    print(f"BIRD full mesh: routes on all nodes {seconds:.2f} s after all three BIRDs started")
    for host in NODES:
        assert len(bgp_sessions(lab, host)) == 2
        # the own block is announced and kept as a blackhole, as calico does
        blackholes = [r["dst"] for r in lab.json(host, "route", "show", "proto", "bird", "type", "blackhole")]
        assert blackholes == [subnets_of(lab)[host]]
        assert lab.json(host, "route", "show", "proto", "152", "root", "10.244.0.0/16") != []  # pod /32s
        assert all(ipaddress.ip_network(r["dst"]).prefixlen == 32
                   for r in lab.json(host, "route", "show", "proto", "152"))  # no static peer routes
    assert_pods_reach_each_other(lab, NODES)
    verify = lab.run("playbooks/verify.yml")
    assert verify.rc == 0, verify.output
    again = lab.run("playbooks/site.yml")
    assert all(again.changed(h) == 0 for h in NODES), again.recap


def test_the_boot_restore_starts_bird_again(mesh_lab):
    """After a reboot no BIRD runs: the podnet-apply unit's command starts it from the calico role's record
    (after the kernel state), and the routes come back; a BIRD that runs is left alone."""
    lab = mesh_lab
    state_dir = f"/run/podnet-lab/{lab.prefix}/node2/state"
    argv = ["bird", "-c", bird_path(lab, "node2", "bird.conf"), "-s", bird_path(lab, "node2", "bird.ctl"),
            "-P", bird_path(lab, "node2", "bird.pid")]
    assert json.loads(Path(f"{state_dir}/bird.json").read_text())["services"] == [
        {"name": "bird", "pidfile": bird_path(lab, "node2", "bird.pid"), "argv": argv}]
    lab.exec("node2", ["birdc", "-s", bird_path(lab, "node2", "bird.ctl"), "down"], check=True)
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while bird_routes(lab, "node2") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bird_routes(lab, "node2") == {}
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "collections"))
    command = ["ip", "netns", "exec", lab.node_ns("node2"), sys.executable, "-m",
               "ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply", state_dir]
    boot = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert " ".join(argv) in boot.stdout.splitlines()
    wait_for_routes(lab, NODES)
    assert len(bgp_sessions(lab, "node2")) == 2
    boot = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert boot.returncode == 0 and "podnet-apply: 0 change(s)" in boot.stdout, boot.stdout + boot.stderr


def test_bird_is_part_of_the_nodes_run(mesh_lab):
    """BIRD is started by node_apply, under the node lock: verify.yml sees a BIRD that stopped (the check
    run would start it), the next run starts it again, and another BIRD's bird.conf stops the run on that
    node before any change."""
    lab = mesh_lab
    lab.exec("node3", ["birdc", "-s", bird_path(lab, "node3", "bird.ctl"), "down"], check=True)
    verify = lab.run("playbooks/verify.yml")
    # node3's drift is its BIRD; the others fail too, on connectivity: node3's routes went with its BIRD
    assert verify.rc != 0 and verify.failed("node3") == 1, verify.output
    assert f"bird -c {bird_path(lab, 'node3', 'bird.conf')}" in verify.output
    again = lab.run("playbooks/site.yml")
    assert again.rc == 0 and again.changed("node3") > 0 and again.changed("node1") == 0, again.output
    wait_for_routes(lab, NODES)
    pid = Path(bird_path(lab, "node3", "bird.pid")).read_text().strip()
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "bird"
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{lab.node_ns('node3')}").st_ino

    conf = Path(bird_path(lab, "node3", "bird.conf"))
    ours = conf.read_text()
    conf.write_text("# the site's own BIRD\nrouter id 10.9.9.9;\n")
    try:
        refused = lab.run("playbooks/site.yml")
        assert refused.rc != 0 and refused.failed("node3") == 1, refused.output
        assert "nothing changed" in refused.output and "bird.conf is not podnet's" in refused.output
        assert conf.read_text() == "# the site's own BIRD\nrouter id 10.9.9.9;\n"
    finally:
        conf.write_text(ours)


def bird_running(lab: Lab, host: str) -> bool:
    pidfile = Path(bird_path(lab, host, "bird.pid"))
    return pidfile.exists() and Path(f"/proc/{pidfile.read_text().strip()}/comm").exists()


def probed_site(lab: Lab, report: Path, extra_vars: dict | None = None) -> tuple[PlaybookResult, list[dict]]:
    """A site.yml run while every pod probes every pod on the other nodes: the run, and the probe's rows."""
    results, rows = probed_runs(lab, report, [extra_vars or {}], probe_vars=extra_vars)
    return results[0], rows


@pytest.mark.parametrize("other", ["calico-vxlan", "flannel-vxlan"])
def test_switching_away_stops_bird_and_back_starts_it(mesh_lab, other, tmp_path):
    """A switch to a backend without BIRD (routed or flannel) puts the static routes beside BIRD's (a lower
    metric: they win at once), then stops podnet's BIRD, which withdraws only its own. The switch back starts
    BIRD on every node first (its routes beside the static ones), and a node drops its static routes only once
    its BIRD has learned every peer's block. Between two routed backends neither way loses more than a probe per
    pod pair (to flannel-vxlan the pods are rewired as well)."""
    lab = mesh_lab
    start = lab.run("playbooks/site.yml")  # on BIRD, converged, whichever tests ran before (probes need pods)
    assert start.rc == 0, start.output
    wait_for_routes(lab, NODES)
    away, rows = probed_site(lab, tmp_path / "away.json", {"podnet_backend": other, "podnet_calico_bgp": "static"})
    assert away.rc == 0, away.output
    if other == "calico-vxlan":
        assert [r for r in rows if r["lost"] > 1] == []
    for host in NODES:
        assert lab.json(host, "route", "show", "proto", "bird") == []
        assert len([r for r in lab.json(host, "route", "show", "proto", "152") if "/" in r["dst"]]) == 2
        assert not bird_running(lab, host) and not Path(bird_path(lab, host, "bird.conf")).exists()
    print(f"\ncalico-bgp (BIRD) -> {other}: lost {sum(r['lost'] for r in rows)} in all, at most "
          f"{max(r['lost'] for r in rows)} per pair")
    back, rows = probed_site(lab, tmp_path / "back.json")
    assert back.rc == 0, back.output
    print(f"{other} -> calico-bgp (BIRD): lost {sum(r['lost'] for r in rows)} in all, at most "
          f"{max(r['lost'] for r in rows)} per pair")
    if other == "calico-vxlan":
        assert [r for r in rows if r["lost"] > 1] == []
    assert {h: bird_routes(lab, h) for h in NODES} == expected_routes(lab, NODES)  # at once: the run waited
    for host in NODES:
        assert [r for r in lab.json(host, "route", "show", "proto", "152") if "/" in r["dst"]] == []
    assert all(bird_running(lab, host) for host in NODES)


def test_removing_a_node_withdraws_its_routes(mesh_lab, tmp_path):
    lab = mesh_lab
    node3_block = subnets_of(lab)["node3"]
    result = lab.run("playbooks/site.yml", inventory=inventory_copy(tmp_path, drop="node3"))
    assert result.rc == 0, result.output
    remaining = {h: ip for h, ip in NODES.items() if h != "node3"}
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while any(node3_block in bird_routes(lab, h) for h in remaining) and time.monotonic() < deadline:
        time.sleep(0.2)
    for host in remaining:
        assert node3_block not in bird_routes(lab, host)
        assert len(bgp_sessions(lab, host)) == 1
    wait_for_routes(lab, remaining)


def test_reset_stops_bird_and_its_routes_go(mesh_lab):
    lab = mesh_lab
    foreign = Path(bird_path(lab, "node1", "admin-notes.txt"))  # someone else's file in BIRD's folder
    foreign.write_text("not podnet's\n")
    result = lab.run("playbooks/reset.yml")
    assert result.rc == 0, result.output
    assert [p.name for p in foreign.parent.iterdir()] == ["admin-notes.txt"]  # podnet's files gone, not it
    assert not Path(bird_path(lab, "node2", "bird.conf")).parent.exists()  # an emptied folder goes
    for host in NODES:
        assert lab.json(host, "route", "show", "proto", "bird") == []
        pids = lab.exec(host, ["ip", "netns", "pids", lab.node_ns(host)]).stdout.split()
        comms = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids if Path(f"/proc/{pid}").exists()]
        assert "bird" not in comms


def test_route_reflector(tmp_path):
    inventory = inventory_copy(tmp_path, reflectors=("node1",))
    with Lab(inventory=inventory, extra_vars=BIRD) as lab:
        result = lab.run("playbooks/site.yml")
        assert result.rc == 0, result.output
        seconds = wait_for_routes(lab, NODES)
        print(f"BIRD with a route reflector: converged {seconds:.2f} s after site.yml returned")
        assert len(bgp_sessions(lab, "node1")) == 2  # the reflector peers with both clients
        assert len(bgp_sessions(lab, "node2")) == 1 and len(bgp_sessions(lab, "node3")) == 1
        # node2 and node3 never peer, yet each learned the other's block (reflected, next hop kept)
        assert_pods_reach_each_other(lab, NODES)
        verify = lab.run("playbooks/verify.yml")
        assert verify.rc == 0, verify.output
