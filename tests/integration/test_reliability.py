"""Runs that are killed, runs that overlap, locks that are left behind: the next run always converges."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .labkit import ANSIBLE_PLAYBOOK, LAB_INVENTORY, REPO_ROOT, Lab, list_netns, lock_is_free, playbook_env
from .machinekit import descendants

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")
CRASH_TRIALS = 20
BACKENDS = ("flannel-vxlan", "calico-vxlan")
VXLAN_DEVICE = {"flannel-vxlan": "flannel.1", "calico-vxlan": "vxlan.calico"}


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    with lab:
        yield lab
    assert list_netns(lab.prefix) == []


def lock_path(lab: Lab, host: str) -> Path:
    return Path(f"/run/podnet-lab/{lab.prefix}/{host}/node.lock")


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, sys.argv[2].encode())
print("held", flush=True)
time.sleep(600)
"""


def hold_lock(path: Path, record: dict) -> subprocess.Popen:
    """Another run holding a node's lock: a live process with the flock, and the record it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), json.dumps(record)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def podnet_objects(lab: Lab, host: str, backend: str) -> dict:
    """podnet's objects on a node, by kind (the kernel cannot hold duplicates; stale ones show here)."""
    links = lab.json(host, "link", "show")
    device = VXLAN_DEVICE[backend]
    return {
        "vxlan": sorted(link["ifname"] for link in links if link.get("ifalias") == "podnet:vtep"),
        "pods": sorted(link["ifname"][:4] for link in links if link.get("ifalias", "").startswith("podnet:pod:")),
        "bridge": sorted(link["ifname"] for link in links if link.get("ifalias") == "podnet:bridge"),
        "peer_routes": len([r for r in lab.json(host, "route", "show", "proto", "152") if "/" in r["dst"]]),
        "fdb": len(lab.json(host, "fdb", "show", "dev", device, tool="bridge")),
        "neighbours": len([n for n in lab.json(host, "neigh", "show", "dev", device)
                           if n.get("state") == ["PERMANENT"]]),
    }


def expected_objects(backend: str) -> dict:
    return {"vxlan": [VXLAN_DEVICE[backend]], "pods": ["veth", "veth"] if backend == "flannel-vxlan" else
            ["cali", "cali"], "bridge": ["cni0"] if backend == "flannel-vxlan" else [],
            "peer_routes": 2, "fdb": 2, "neighbours": 2}


def start_site(lab: Lab, backend: str) -> subprocess.Popen:
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(REPO_ROOT / LAB_INVENTORY), str(REPO_ROOT / "playbooks/site.yml"),
            "-e", json.dumps({"podnet_backend": backend})]
    return subprocess.Popen(argv, cwd=REPO_ROOT, env=playbook_env(lab.prefix), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL a playbook run and everything it started. Its process group is not enough: ansible's
    workers start their own sessions, and would be left blocked on a pipe to the dead playbook."""
    below = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def converged(lab: Lab, host: str, backend: str) -> bool:
    """podnet_objects == expected_objects, asked while a run may be halfway (devices still missing)."""
    try:
        return podnet_objects(lab, host, backend) == expected_objects(backend)
    except subprocess.CalledProcessError:
        return False


def test_killed_runs_always_converge(lab):
    rng = random.Random(4242)
    killed_midway = 0
    for trial in range(CRASH_TRIALS):
        backend = BACKENDS[trial % 2]  # every trial switches backends: lots of work to interrupt
        proc = start_site(lab, backend)
        time.sleep(rng.uniform(1.0, 4.0))  # a switching run of this lab takes ~3.5-5 s
        if proc.poll() is None:
            killed_midway += 1
            kill_run(proc)  # the playbook, its workers and every module process they started
        proc.wait()
        result = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": backend})
        assert result.rc == 0, f"trial {trial}: rerun failed\n{result.output}"
        for host in NODES:
            assert podnet_objects(lab, host, backend) == expected_objects(backend), (trial, host)
    assert killed_midway >= CRASH_TRIALS // 2  # most trials really were interrupted mid-run
    verify = lab.run("playbooks/verify.yml", extra_vars={"podnet_backend": BACKENDS[(CRASH_TRIALS - 1) % 2]})
    assert verify.rc == 0, verify.output


def test_concurrent_runs_serialize_and_both_finish(lab):
    results = {}

    def run(name: str) -> None:
        results[name] = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.rc == 0 for r in results.values()), [r.output for r in results.values()]
    for host in NODES:
        assert podnet_objects(lab, host, "flannel-vxlan") == expected_objects("flannel-vxlan")
        assert lock_is_free(lock_path(lab, host))  # both gave their locks back
    again = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert all(again.changed(h) == 0 for h in NODES), again.recap


def prepared(lab: Lab, host: str, old: str, new: str) -> bool:
    """The node holds the new VTEP beside the old one, and its traffic still takes the old one."""
    try:
        objects = podnet_objects(lab, host, old)
    except subprocess.CalledProcessError:
        return False
    return objects == {**expected_objects(old), "vxlan": sorted([VXLAN_DEVICE[old], VXLAN_DEVICE[new]])}


def test_a_run_waiting_for_one_node_holds_no_other_node(lab):
    """No lock is held while waiting for another: two overlapping runs cannot deadlock.

    (In lockstep, a run holding node1 and waiting for node2 while another run holds node2 and waits for
    node1 would hang both until the lock timeout.) A switch of VTEP moves traffic, so no node switches before
    every node holds the new path: node1 and node3 are prepared, and unlocked, while node2 waits."""
    converge = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "calico-vxlan"})
    assert converge.rc == 0, converge.output
    holder = hold_lock(lock_path(lab, "node2"), {"run": "held"})
    proc = start_site(lab, "flannel-vxlan")
    try:
        deadline = time.monotonic() + 300
        free_nodes = ("node1", "node3")
        while not all(prepared(lab, h, "calico-vxlan", "flannel-vxlan") and lock_is_free(lock_path(lab, h))
                      for h in free_nodes):
            assert proc.poll() is None, "the run ended while node2 was still locked"
            assert time.monotonic() < deadline, "node1 and node3 were not prepared while node2 was locked"
            time.sleep(0.5)
        assert podnet_objects(lab, "node2", "calico-vxlan") == expected_objects("calico-vxlan")  # still waiting
        holder.kill()
        holder.wait()
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            kill_run(proc)
            proc.wait()
        holder.kill()
        holder.wait()
    for host in NODES:
        assert podnet_objects(lab, host, "flannel-vxlan") == expected_objects("flannel-vxlan")


def test_a_live_lock_blocks_and_a_dead_one_does_not(lab):
    path = lock_path(lab, "node2")
    # A run in progress (a live process holding node2's flock): a run waits, then gives up, naming it.
    holder = hold_lock(path, {"run": "held", "controller": "elsewhere", "pid": 1})
    try:
        blocked = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan",
                                                             "podnet_lock_wait_timeout": 3})
    finally:
        holder.kill()  # SIGKILL: no release runs, the record stays behind
        holder.wait()
    assert blocked.rc != 0 and blocked.failed("node2") == 1, blocked.output
    assert "locked by run held of controller elsewhere" in blocked.stdout
    # The same lock, its holder killed: the next run takes it at once, whatever the record says.
    assert json.loads(path.read_text())["run"] == "held"
    start = time.monotonic()
    freed = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert freed.rc == 0, freed.output
    assert time.monotonic() - start < 60
    assert lock_is_free(path)


def test_boot_apply_restores_a_wiped_node_without_ansible(lab):
    """What a reboot does to a node (all of podnet's state gone), then the podnet-apply unit's command.

    The node ran a routed backend before flannel: nothing it recorded may come back or stop the restore."""
    for backend in ("calico-vxlan", "flannel-vxlan"):
        converge = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": backend})
        assert converge.rc == 0, converge.output
    state_dir = f"/run/podnet-lab/{lab.prefix}/node2/state"
    assert not os.path.exists(f"{state_dir}/proxy_arp.json")  # the switch to flannel forgot calico's settings
    # A record naming an interface that no longer exists (a pod removed by hand since) is skipped.
    Path(f"{state_dir}/zz-stale.json").write_text(json.dumps({"objects": [
        {"object": "sysctl", "name": "net.ipv4.conf.caligone0.proxy_arp", "value": "1", "netns": None}]}))
    # A torn record (a crash mid-write by an older release) and one that does not decode are skipped;
    # the rest is still restored and the unit reports the failure.
    Path(f"{state_dir}/a-torn.json").write_text('{"objects": [{"object": "route", "dst"')
    Path(f"{state_dir}/b-alien.json").write_text(json.dumps({"objects": [{"object": "qdisc", "dev": "eth0"}]}))
    mac_before = lab.json("node2", "link", "show", "flannel.1")[0]["address"]
    for link in lab.json("node2", "link", "show"):
        if link.get("ifalias", "").startswith("podnet:"):
            lab.exec("node2", ["ip", "link", "del", link["ifname"]])  # veth pairs go with their host end
    lab.exec("node2", ["iptables", "-t", "nat", "-F", "POSTROUTING"], check=True)
    lab.exec("node2", ["iptables", "-F", "FORWARD"], check=True)
    lab.exec("node2", ["sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
    subnet_env = Path(f"/run/podnet-lab/{lab.prefix}/node2/flannel/subnet.env")
    subnet_env_before = subnet_env.read_text()
    shutil.rmtree(subnet_env.parent)  # on tmpfs: gone after a reboot, folder and all
    assert lab.json("node2", "link", "show", "type", "vxlan") == []
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "collections"))
    boot = subprocess.run(["ip", "netns", "exec", lab.node_ns("node2"), sys.executable, "-m",
                           "ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply", state_dir],
                          env=env, capture_output=True, text=True, timeout=120)
    assert boot.returncode == 1, boot.stdout + boot.stderr
    assert "a-torn.json" in boot.stderr and "b-alien.json" in boot.stderr, boot.stderr
    assert podnet_objects(lab, "node2", "flannel-vxlan") == expected_objects("flannel-vxlan")
    assert lab.json("node2", "link", "show", "flannel.1")[0]["address"] == mac_before  # what peers were told
    assert subnet_env.read_text() == subnet_env_before and oct(subnet_env.stat().st_mode & 0o777) == "0o644"
    verify = lab.run("playbooks/verify.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert verify.rc == 0, verify.output  # no drift anywhere, every pod reaches every pod
    again = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert again.changed("node2") == 0, again.output
