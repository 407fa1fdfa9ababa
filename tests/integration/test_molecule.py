"""`molecule test --all` from the repo root: every fast scenario under molecule/ (default = flannel-vxlan,
calico = calico-bgp with BIRD, canal) builds its own namespace lab, converges, checks idempotence,
verifies (drift + connectivity matrix) and destroys the lab. The slow scenario ipip-vm (calico-ipip in
a QEMU guest, ~45 min) is excluded: `make molecule-ipip-vm` runs it. The scenario machines (flannel-vxlan
on the machines lab: booted systemd-nspawn machines over SSH, node2 rebooted for real before verify) has a
test of its own, opt-in like the machines lab (PODNET_MACHINES=1).

Molecule keeps its per-scenario state under $ANSIBLE_HOME/tmp; the test points ANSIBLE_HOME at its own
temporary directory so concurrent runs of this test never share molecule state, and each scenario's
create.yml draws a fresh lab prefix, so they never share namespaces either. Whatever happens, the labs
whose prefixes the run printed are gone afterwards (molecule destroy, then labkit's safety net).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from tests.integration import machinekit
from tests.integration.labkit import REPO_ROOT, VENV_BIN, list_netns, remove_netns

MOLECULE = VENV_BIN / "molecule"
TIMEOUT = 1800  # seconds; a full run takes a few minutes
# create.yml prints "molecule lab prefix: pmXXXXXX" for every lab it builds.
PREFIX = re.compile(r"molecule lab prefix: (pm[a-z0-9]{6})\b")
# Scenarios too slow for `make test`, each with its own make target (see molecule/README.md).
SLOW_SCENARIOS = ("ipip-vm",)
# Scenarios with a test of their own below, opt-in: scenario -> the environment variable that enables it.
OPT_IN_SCENARIOS = {"machines": "PODNET_MACHINES"}
MACHINES_LAB = REPO_ROOT / "scripts" / "machines" / "lab"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(TIMEOUT + 300)]
if not MOLECULE.exists():
    pytestmark.append(pytest.mark.skip(
        reason=f"molecule is not installed in {VENV_BIN.parent} (pip install molecule; see pyproject.toml dev extras)"))


def molecule_env(ansible_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("ANSIBLE_CONFIG", "ANSIBLE_INVENTORY", "ANSIBLE_CALLBACKS_ENABLED", "MOLECULE_EPHEMERAL_DIRECTORY",
                "MOLECULE_GLOB", "PODNET_LAB_PREFIX"):
        env.pop(key, None)  # the scenarios bring their own
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "ANSIBLE_HOME": str(ansible_home),
        "NO_COLOR": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    })
    return env


def run(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run argv from the repo root in its own process group; on timeout kill that group. rc None = timed out."""
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # molecule and the ansible-playbook it started
        out, _ = proc.communicate()
        return None, out


def test_molecule_test_all(tmp_path: Path) -> None:
    env = molecule_env(tmp_path / "ansible_home")
    argv = [str(MOLECULE), "test", "--all"]
    for slow in (*SLOW_SCENARIOS, *OPT_IN_SCENARIOS):
        argv += ["--exclude", slow]
    scenarios = 3
    if shutil.which("bird", path=env["PATH"] + os.pathsep + "/usr/sbin") is None:
        argv += ["--exclude", "calico"]
        scenarios -= 1
        warnings.warn("bird2 is not installed: molecule scenario 'calico' excluded (make setup installs it)",
                      stacklevel=1)

    start = time.monotonic()
    rc, out = run(argv, env, TIMEOUT)
    seconds = time.monotonic() - start
    try:
        if rc != 0:  # failed or timed out: molecule destroys after a failure, but make sure
            _, destroy_out = run([str(MOLECULE), "destroy", *argv[2:]], env, 300)
            out += f"\n--- molecule destroy --all (cleanup) ---\n{destroy_out}"
    finally:
        prefixes = sorted(set(PREFIX.findall(out)))
        leftovers = {p: remove_netns(p) for p in prefixes if list_netns(p)}  # last-resort cleanup
    print(f"$ {' '.join(argv)}  ({seconds:.0f} s, rc={rc}, lab prefixes {prefixes})")
    assert rc == 0, f"molecule test --all {'timed out' if rc is None else f'failed (rc={rc})'}\n{out}"
    assert len(prefixes) == scenarios, f"expected one lab prefix per scenario, got {prefixes}\n{out}"
    assert not leftovers, f"molecule destroy left namespaces behind: {leftovers}\n{out}"
    assert all(not Path(f"/run/podnet-lab/{p}").exists() for p in prefixes), out


@pytest.mark.skipif(os.environ.get(OPT_IN_SCENARIOS["machines"]) != "1",
                    reason="the machines lab is opt-in: set PODNET_MACHINES=1 (boots three systemd-nspawn "
                           "machines, builds the image on first use)")
def test_molecule_machines(tmp_path: Path) -> None:
    """`molecule test -s machines`: lab_up.yml boots the machines, site.yml converges them (twice: the second
    run must change nothing), lab_reboot.yml reboots node2 for real, verify.yml finds no drift and a full
    pod matrix on the restored node, every node answers over SSH as a booted machine of its own with
    podnet-apply enabled and flannel.1 present, and lab_down.yml leaves nothing of the lab behind."""
    env = molecule_env(tmp_path / "ansible_home")
    argv = [str(MOLECULE), "test", "-s", "machines"]
    start = time.monotonic()
    rc, out = run(argv, env, TIMEOUT)
    seconds = time.monotonic() - start
    try:
        if rc != 0:
            _, destroy_out = run([str(MOLECULE), "destroy", "-s", "machines"], env, 300)
            out += f"\n--- molecule destroy -s machines (cleanup) ---\n{destroy_out}"
    finally:
        prefixes = sorted(set(PREFIX.findall(out)))
        leftovers = {p: machinekit.leftovers(p) for p in prefixes}
        for prefix, left in leftovers.items():
            if left:  # last resort: the lab script removes whatever is left of the lab
                subprocess.run([str(MACHINES_LAB), "down", prefix], capture_output=True, timeout=300)
    print(f"$ {' '.join(argv)}  ({seconds:.0f} s, rc={rc}, lab prefix {prefixes})")
    assert rc == 0, f"molecule test -s machines {'timed out' if rc is None else f'failed (rc={rc})'}\n{out}"
    assert len(prefixes) == 1, f"expected one lab prefix, got {prefixes}\n{out}"
    # rc 0 covers idempotence: molecule fails the run when the second converge reports any change.
    # side_effect: node2 went down and came back with its boot unit active (lab_reboot.yml's last check)
    assert re.search(r"node2 is running; podnet-apply active", out), out
    # verify, after that reboot and no converge: verify.yml passed (rc 0), then every node over SSH
    nodes = re.findall(r"machine (node\d): PID 1 systemd, podnet-apply enabled, flannel\.1 present", out)
    assert sorted(set(nodes)) == ["node1", "node2", "node3"], out
    assert not any(leftovers.values()), f"molecule destroy left the machines lab behind: {leftovers}\n{out}"
