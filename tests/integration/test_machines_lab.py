"""The machines lab (scripts/machines/lab): booted systemd machines as lab nodes, reached over real SSH.

Part of `make test`: the first `lab up` on a fresh machine builds the Debian image (~1.5 min, cached by
recipe hash afterwards). One lab for the module (machinekit.lab_fixture): brought up once, always torn
down, nothing of it left afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.wireguard_keys import (
    decode_key,
    encode_key,
    x25519_public_key,
)

from tests.integration import machinekit
from tests.integration.machinekit import (
    HOSTS,
    NetlinkMonitor,
    ansible,
    ansible_module,
    lab_cmd,
    leftovers,
    playbook,
    snapshot,
    snapshot_diff,
)

pytestmark = pytest.mark.integration

machines = machinekit.lab_fixture()


def test_three_machines_with_own_hostnames(machines: str) -> None:
    assert ansible(machines, "hostname") == {h: h for h in HOSTS}


def test_pid1_is_systemd_and_run_is_tmpfs(machines: str) -> None:
    assert set(ansible(machines, "ps -p 1 -o comm=").values()) == {"systemd"}
    assert set(ansible(machines, "findmnt -n -o FSTYPE /run").values()) == {"tmpfs"}
    # An empty machine-id in the image: each machine generated its own on first boot.
    machine_ids = ansible(machines, "cat /etc/machine-id")
    assert len(set(machine_ids.values())) == 3, machine_ids


def test_reboot_keeps_root_and_empties_run(machines: str) -> None:
    ansible(machines, "sh -c 'echo kept > /root/marker && echo gone > /run/marker'")
    start = time.monotonic()
    reboot = lab_cmd("reboot", machines, "node2", timeout=300)
    assert reboot.returncode == 0, f"reboot failed:\n{reboot.stdout}\n{reboot.stderr}"
    print(f"\nreboot node2 {time.monotonic() - start:.1f}s")
    after = ansible(
        machines, "sh -c 'cat /root/marker; test -e /run/marker && echo run-kept || echo run-empty'"
    )
    assert after["node2"].split() == ["kept", "run-empty"], after
    assert after["node1"].split() == ["kept", "run-kept"], after
    status = lab_cmd("status", machines, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr


def failures(stdout: str, host: str) -> list[dict]:
    """The results of a host's failed tasks, from the default callback's YAML result format (ansible.cfg):
    `fatal: [host]: FAILED! => ` and the result indented below it."""
    found, lines = [], stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"fatal: [{host}]: FAILED! =>"):
            block = itertools.takewhile(lambda text: text.startswith(" ") or not text, lines[i + 1:])
            found.append(yaml.safe_load("\n".join(block)))
    return found


@pytest.mark.skipif(Path("/sys/module/ipip").exists(), reason="this kernel has ipip (the QEMU guest's tests run it)")
def test_a_transport_the_kernel_lacks_is_refused_before_any_machine_changes(machines: str) -> None:
    """The machines share this host's kernel, which has no ipip (DESIGN.md): calico-ipip stops at the
    preflight, which read the kernel's pieces from files on each machine (its /sys/module, /proc/config.gz,
    /lib/modules) over SSH, naming the machine's kernel release. Before the converge tests below, on the
    unconverged lab: no netlink write and no difference in podnet's whole state on any machine."""
    release = os.uname().release
    assert set(ansible(machines, "uname -r").values()) == {release}
    before = snapshot(machines)
    with NetlinkMonitor(machines) as monitor:
        result = playbook(machines, "site.yml", "-e", "podnet_backend=calico-ipip")
        writes = monitor.stop()
    print(f"\nsite.yml calico-ipip refused in {result.seconds:.1f}s")
    assert result.rc != 0, result.output
    refusal = f"this node's kernel {release} lacks what the chosen transport needs: ipip"
    for host in HOSTS:
        assert result.failed(host) == 1, result.output  # the preflight, on every node
        fatal = failures(result.stdout, host)
        assert len(fatal) == 1 and refusal in fatal[0]["msg"], result.output
        assert fatal[0]["kernel"]["features"]["ipip"]["available"] is False, fatal
    assert writes == {host: [] for host in HOSTS}, writes
    assert snapshot_diff({h: before[h] for h in HOSTS}, machine_snapshots(machines)) == []
    # the leases are written after every node's preflight passed: a refused run writes none on the controller
    assert not leases_file(machines).exists()


def leases_file(prefix: str) -> Path:
    """The controller's lease file of the lab (inventories/lab-machines: podnet_lease_file)."""
    return Path("/run/podnet-lab", prefix, "leases.json")


@pytest.mark.parametrize("backend", [
    ("-e", "podnet_backend=flannel-vxlan"),
    ("-e", "podnet_backend=calico-bgp", "-e", "podnet_calico_bgp=bird"),
], ids=["flannel-vxlan", "calico-bgp-bird"])
def test_a_rebooted_node_is_restored_by_its_boot_unit_alone(machines: str, backend: tuple[str, ...]) -> None:
    """Converge, a second run changes nothing, reboot node2 for real (fresh /run, fresh network namespace),
    and verify with no Ansible run in between: podnet-apply, on the node's own Python and Debian packages,
    brought back the kernel state, subnet.env (tmpfs) and BIRD."""
    converge = playbook(machines, "site.yml", *backend)
    assert converge.rc == 0, converge.output
    again = playbook(machines, "site.yml", *backend)
    assert again.rc == 0 and again.changed() == 0, again.output
    start = time.monotonic()
    reboot = lab_cmd("reboot", machines, "node2", timeout=300)
    assert reboot.returncode == 0, f"reboot failed:\n{reboot.stdout}\n{reboot.stderr}"
    unit = ""
    while time.monotonic() - start < 120 and "active (exited)" not in unit:
        time.sleep(1)
        # the nodes not rebooted ran no restore since the converge: `status` exits 3 there
        unit = ansible(machines, "sh -c 'systemctl status podnet-apply --no-pager --lines=0 || true'")["node2"]
    print(f"\nnode2 rebooted and restored by podnet-apply in {time.monotonic() - start:.1f}s")
    assert "status=0/SUCCESS" in unit, unit
    deadline = time.monotonic() + 60
    while True:  # BGP sessions take a few seconds to come back after the boot
        verify = playbook(machines, "verify.yml", *backend)
        if verify.rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert verify.rc == 0, verify.output


def bird_routes(prefix: str) -> dict[str, list[str]]:
    out = ansible(prefix, "ip -o route show proto bird")
    return {host: sorted(line.split()[0] for line in text.splitlines() if "blackhole" not in line)
            for host, text in out.items()}


def test_all_nodes_rebooted_at_once_are_restored_with_their_bird_routes(machines: str) -> None:
    """After the calico-bgp-with-BIRD converge above: every node rebooted at once (lab_reboot.yml, a power
    cut of the whole cluster), no Ansible run but verify.yml afterwards. Each node's podnet-apply restored
    its kernel state and started BIRD, and the BIRD sessions learned every peer's block again."""
    backend = ("-e", "podnet_backend=calico-bgp", "-e", "podnet_calico_bgp=bird")
    before = bird_routes(machines)
    assert all(len(routes) == 2 for routes in before.values()), before
    ansible(machines, "sh -c 'echo $PPID > /run/before-reboot'")
    start = time.monotonic()
    reboot = playbook(machines, "lab_reboot.yml", "-e", "podnet_lab_reboot_serial=100%")
    assert reboot.rc == 0, reboot.output
    print(f"\nall three nodes rebooted and restored in {time.monotonic() - start:.1f}s")
    assert set(ansible(machines, "sh -c 'test -e /run/before-reboot && echo kept || echo fresh'").values()) == {
        "fresh"}
    deadline = time.monotonic() + 60
    while bird_routes(machines) != before and time.monotonic() < deadline:
        time.sleep(2)
    assert bird_routes(machines) == before
    verify = playbook(machines, "verify.yml", *backend)
    assert verify.rc == 0, verify.output


def test_the_machines_hold_their_subnets_for_a_controller_that_lost_or_garbled_its_leases(machines: str) -> None:
    """After the converges above: each machine keeps its own record (/etc/podnet/node.json, on its own disk) of
    its subnet and backend. A lease file of another controller (node1's and node2's subnets swapped) is refused
    before any machine changes and is not overwritten; a lost lease file is written again from the machines'
    records, and the run changes nothing on them."""
    backend = ("-e", "podnet_backend=calico-bgp", "-e", "podnet_calico_bgp=bird")
    settled = playbook(machines, "site.yml", *backend)  # after the reboots above: the node locks' files again
    assert settled.rc == 0 and settled.changed() == 0, settled.output
    ours = json.loads(leases_file(machines).read_text())
    records = {host: json.loads(text) for host, text in ansible(machines, "cat /etc/podnet/node.json").items()}
    assert {host: (r["subnet"], r["backend"], r["host"]) for host, r in records.items()} == {
        host: (ours[host], "calico-bgp", host) for host in HOSTS}
    before = machine_snapshots(machines)
    theirs = dict(ours, node1=ours["node2"], node2=ours["node1"])
    leases_file(machines).write_text(json.dumps(theirs))
    try:
        refused = playbook(machines, "site.yml", *backend)
        assert refused.rc != 0 and f"node1 holds {ours['node1']}" in refused.output, refused.output
        assert json.loads(leases_file(machines).read_text()) == theirs
        assert snapshot_diff(before, machine_snapshots(machines)) == []
    finally:
        leases_file(machines).write_text(json.dumps(ours))
    leases_file(machines).unlink()
    recovered = playbook(machines, "site.yml", *backend)
    assert recovered.rc == 0, recovered.output
    assert json.loads(leases_file(machines).read_text()) == ours
    assert all(recovered.changed(host) == 0 for host in HOSTS if host != "node1"), recovered.output
    assert snapshot_diff(before, machine_snapshots(machines)) == []


def machine_snapshots(prefix: str) -> dict:
    """The machines' part of the snapshot (without the controller's files)."""
    taken = snapshot(prefix)
    return {host: taken[host] for host in HOSTS}


def test_wireguard_keys_are_made_on_each_machine_and_only_public_keys_come_back(machines: str) -> None:
    """podnet.dataplane.wireguard_key over SSH on nodes that share nothing with the controller: each machine makes
    its own key in its own /etc (0600 in a 0700 folder), the run brings back its public key and nothing of the
    private one; a second run keeps the key; removal takes the key and its record, the folder too."""
    args = "device=flannel-wg key_dir=/etc/podnet/wireguard"
    made, printed = ansible_module(machines, "podnet.dataplane.wireguard_key", args)
    assert {h: (r["changed"], r["action"]) for h, r in made.items()} == {h: (True, "created") for h in HOSTS}
    assert len({r["public_key"] for r in made.values()}) == len(HOSTS)
    modes = ansible(machines, "stat -c '%a %n' /etc/podnet/wireguard /etc/podnet/wireguard/flannel-wg.key")
    assert set(modes.values()) == {"700 /etc/podnet/wireguard\n600 /etc/podnet/wireguard/flannel-wg.key"}, modes
    private = ansible(machines, "cat /etc/podnet/wireguard/flannel-wg.key")
    for host, key in private.items():
        assert encode_key(x25519_public_key(decode_key(key))) == made[host]["public_key"]
        assert key not in printed and decode_key(key).hex() not in printed
    assert not Path("/etc/podnet/wireguard/flannel-wg.key").exists() or \
        Path("/etc/podnet/wireguard/flannel-wg.key").read_text().strip() not in private.values()
    kept, _printed = ansible_module(machines, "podnet.dataplane.wireguard_key", args)
    assert {h: (r["changed"], r["public_key"]) for h, r in kept.items()} == {
        h: (False, r["public_key"]) for h, r in made.items()}
    gone, _printed = ansible_module(machines, "podnet.dataplane.wireguard_key", args + " state=absent")
    assert all(r["changed"] for r in gone.values())
    assert set(ansible(machines, "sh -c 'test -e /etc/podnet/wireguard && echo kept || echo gone'").values()) == {
        "gone"}


def test_a_flannel_cluster_set_up_by_hand_on_the_machines_is_adopted(machines: str) -> None:
    """playbooks/adopt.yml over SSH on nodes that share nothing with the controller: machines set up by hand as
    seed 003 does (flannel.1 with a random MAC, permanent neighbour and fdb entries, routes `proto boot`, cni0,
    flanneld's /run/flannel/subnet.env), on subnets podnet would not pick. site.yml refuses them before any machine
    changes; adopt.yml keeps each machine's subnet and VTEP - same device, same MAC - and marks it podnet's; the
    controller's files then hold what the machines hold, and site.yml after it changes nothing."""
    backend = ("-e", "podnet_backend=flannel-vxlan")
    reset = playbook(machines, "reset.yml", *backend)
    assert reset.rc == 0, reset.output
    state = leases_file(machines).parent
    for name in ("leases.json", "vtep_macs.json"):
        (state / name).unlink(missing_ok=True)
    subnets = {"node1": "10.244.5.0/24", "node2": "10.244.9.0/24", "node3": "10.244.2.0/24"}
    macs = {host: ":".join(f"{b:02x}" for b in [0x02, *os.urandom(5)]) for host in HOSTS}
    for host in HOSTS:
        base = subnets[host].split(".0/")[0]
        lines = [f"dev=$(ip -o -4 address show to {machinekit.NODE_IPS[host]} | cut -d' ' -f2)",
                 f"ip link add flannel.1 address {macs[host]} type vxlan id 1 local {machinekit.NODE_IPS[host]} "
                 'dev "$dev" dstport 8472 nolearning',
                 "ip link set flannel.1 up", f"ip address add {base}.0/32 dev flannel.1",
                 "ip link add cni0 type bridge", f"ip address add {base}.1/24 dev cni0", "ip link set cni0 up",
                 "mkdir -p /run/flannel",
                 f"printf 'FLANNEL_NETWORK=10.244.0.0/16\\nFLANNEL_SUBNET={base}.1/24\\nFLANNEL_MTU=1450\\n' "
                 "> /run/flannel/subnet.env"]
        for peer in HOSTS:
            if peer != host:
                vtep = subnets[peer].split("/")[0]
                lines += [f"ip neigh add {vtep} dev flannel.1 lladdr {macs[peer]} nud permanent",
                          f"bridge fdb add {macs[peer]} dst {machinekit.NODE_IPS[peer]} dev flannel.1",
                          f"ip route add {subnets[peer]} via {vtep} dev flannel.1 onlink"]
        done = subprocess.run(machinekit.ssh_argv(machines, host, "set -e; " + "; ".join(lines)),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr

    refused = playbook(machines, "site.yml", *backend)
    assert refused.rc != 0 and "playbooks/adopt.yml" in refused.output, refused.output
    assert not leases_file(machines).exists()

    adopted = playbook(machines, "adopt.yml", *backend)
    assert adopted.rc == 0, adopted.output
    assert json.loads(leases_file(machines).read_text()) == subnets
    assert json.loads((state / "vtep_macs.json").read_text()) == macs
    vteps = ansible(machines, "ip -j -d link show flannel.1")
    assert {host: (json.loads(text)[0]["address"], json.loads(text)[0].get("ifalias")) for host, text in vteps.items()} \
        == {host: (macs[host], "podnet:vtep") for host in HOSTS}
    routes = ansible(machines, "ip -j route show proto 152")
    assert {host: sorted(r["dst"] for r in json.loads(text)) for host, text in routes.items()} == {
        host: sorted(subnets[peer] for peer in HOSTS if peer != host) for host in HOSTS}
    records = {host: json.loads(text) for host, text in ansible(machines, "cat /etc/podnet/node.json").items()}
    assert {host: (r["subnet"], r["vtep_mac"]) for host, r in records.items()} == {
        host: (subnets[host], macs[host]) for host in HOSTS}
    again = playbook(machines, "site.yml", *backend)
    assert again.rc == 0 and again.changed() == 0, again.output


def test_down_leaves_nothing(machines: str) -> None:
    start = time.monotonic()
    down = lab_cmd("down", machines, timeout=300)
    assert down.returncode == 0, f"lab down failed:\n{down.stdout}\n{down.stderr}"
    print(f"\nlab down {time.monotonic() - start:.1f}s")
    assert leftovers(machines) == []
