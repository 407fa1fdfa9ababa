"""The machines lab (scripts/machines/lab): booted systemd machines as lab nodes, reached over real SSH.

Opt-in (PODNET_MACHINES=1): the first run builds the Debian image (~1.5 min), and the lab is not yet part
of `make test`. One lab for the module, brought up once and always torn down.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.labkit import REPO_ROOT, VENV_BIN, list_netns, playbook_env, unique_prefix

OPT_IN = "PODNET_MACHINES"
LAB = REPO_ROOT / "scripts" / "machines" / "lab"
INVENTORY = REPO_ROOT / "inventories" / "lab-machines"
HOSTS = ("node1", "node2", "node3")
# "node1 | CHANGED | rc=0 | (stdout) node1" from `ansible -o`.
_ONE_LINE = re.compile(r"^(?P<host>\S+) \| (?P<status>[A-Z]+) \| rc=(?P<rc>\d+) \| \(stdout\) ?(?P<out>.*)$")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get(OPT_IN) != "1",
        reason=f"machines lab is opt-in: set {OPT_IN}=1 (boots three systemd-nspawn machines, builds the image)",
    ),
]


def lab_cmd(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=timeout)


def ansible(prefix: str, command: str) -> dict[str, str]:
    """Run a command on every node with ad-hoc Ansible over SSH: host -> stdout (asserting rc 0)."""
    argv = [
        str(VENV_BIN / "ansible"),
        "-i",
        str(INVENTORY),
        "podnet_nodes",
        "-o",
        "-m",
        "command",
        "-a",
        command,
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env=playbook_env(prefix), cwd=REPO_ROOT
    )
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        match = _ONE_LINE.match(line)
        if match and match["rc"] == "0":
            # The one-line callback writes the command's newlines as a literal backslash-n.
            out[match["host"]] = match["out"].replace("\\n", "\n").strip()
    assert proc.returncode == 0 and set(out) == set(HOSTS), f"{argv}\n{proc.stdout}\n{proc.stderr}"
    return out


def leftovers(prefix: str) -> list[str]:
    """Whatever of the lab still exists: namespaces, mounts, machine processes, directories, cgroups."""
    left = [f"netns {n}" for n in list_netns(prefix)]
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    left += [f"mount {m}" for m in mounts.split() if f"/podnet-lab/{prefix}/" in m + "/"]
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    left += [f"process {p.strip()}" for p in ps.splitlines() if f"--machine={prefix}-" in p]
    left += [
        f"dir {d}"
        for d in (Path("/var/lib/podnet-lab") / prefix, Path("/run/podnet-lab") / prefix)
        if d.exists()
    ]
    left += [f"cgroup {g}" for g in Path("/sys/fs/cgroup").glob(f"**/podnet-lab-{prefix}-*")]
    return left


@pytest.fixture(scope="module")
def machines() -> Iterator[str]:
    prefix = unique_prefix()
    start = time.monotonic()
    up = lab_cmd("up", prefix)
    try:
        assert up.returncode == 0, f"lab up failed:\n{up.stdout}\n{up.stderr}"
        print(f"\nlab up {time.monotonic() - start:.1f}s\n{up.stderr}")
        yield prefix
    finally:
        lab_cmd("down", prefix, timeout=300)


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


def playbook(prefix: str, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(INVENTORY), str(REPO_ROOT / "playbooks" / name), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=playbook_env(prefix),
                          cwd=REPO_ROOT)


@pytest.mark.parametrize("backend", [
    ("-e", "podnet_backend=flannel-vxlan"),
    ("-e", "podnet_backend=calico-bgp", "-e", "podnet_calico_bgp=bird"),
], ids=["flannel-vxlan", "calico-bgp-bird"])
def test_a_rebooted_node_is_restored_by_its_boot_unit_alone(machines: str, backend: tuple[str, ...]) -> None:
    """Converge, reboot node2 for real (fresh /run, fresh network namespace), and verify with no Ansible run
    in between: podnet-apply, on the node's own Python and Debian packages, brought back the kernel state,
    subnet.env (tmpfs) and BIRD."""
    converge = playbook(machines, "site.yml", *backend)
    assert converge.returncode == 0, converge.stdout + converge.stderr
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
        if verify.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_down_leaves_nothing(machines: str) -> None:
    start = time.monotonic()
    down = lab_cmd("down", machines, timeout=300)
    assert down.returncode == 0, f"lab down failed:\n{down.stdout}\n{down.stderr}"
    print(f"\nlab down {time.monotonic() - start:.1f}s")
    assert leftovers(machines) == []
