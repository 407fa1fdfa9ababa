"""The transports this machine's kernel lacks (IPIP, UDP: foo-over-UDP, WireGuard), in one QEMU guest with a kernel
that has them.

This machine's kernel has no ipip, fou or wireguard module, so this test boots a stock Debian kernel under QEMU's
software emulation with virtme-ng (DESIGN.md section 6; helpers in tests/vm/vmkit.py), loads ipip there and runs
``pytest -m ipip`` on the guest-only test modules inside (GUEST_TESTS, in one boot), with the repo and its .venv
shared read-only. The one test that unloads ipip runs first and alone; the others then run on two pytest workers
(each module whole on one, each worker on its own lab), since the guest has two CPUs and its tests are mostly one
process waiting for another. Where QEMU, virtme-ng or the kernel package cannot be had, the test fails with the
reason: `make setup` installs the tools and the kernel comes from the package registry, so a missing guest is a
broken machine or registry, and skipping would silently drop all IPIP, UDP and WireGuard coverage. Only a host
that cannot run the x86_64 guest at all skips.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from tests.vm.vmkit import GUEST_ENV, GUEST_HOME, REPO_ROOT, VENV_BIN, run_in_vm, vm_unavailable_reason

# The Ansible-driven calico-ipip tests (site.yml, check mode, drift, reset: four site.yml runs, each minutes under
# the guest's emulation, up to an hour in all): opt-in, `make test-ipip-vm` (which sets OPT_IN).
GUEST_TIMEOUT = 4500
OPT_IN = "PODNET_IPIP_VM"
INNER_TESTS = ("tests/integration/test_calico_ipip.py",)

pytestmark = pytest.mark.integration
# In make test: through podnet's engine and node_apply run directly in the nodes, without a controller
# (modulekit.py), and WireGuard's keys made and handed round by one site.yml run. Longest first, so that the two
# workers end close together.
GUEST_TESTS = ("tests/integration/test_wireguard_transport.py", "tests/integration/test_ipip_compositions.py",
               "tests/integration/test_udp_transport.py", "tests/integration/test_calico_ipip_engine.py",
               "tests/integration/test_wireguard_playbook.py")
# rmmod ipip takes the fallback tunl0 out of every namespace, and the next load puts it back: that must not
# happen beside another module's lab
ALONE = ("tests/integration/test_ipip_compositions.py::"
         "test_a_run_on_a_kernel_without_ipip_loaded_loads_it_and_configures_its_tunl0",)
GUEST_WORKERS = 2
GUEST_MEMORY = "2G"  # two workers, each with its own lab and node runner
ENGINE_TIMEOUT = 2700


def warm_bytecode(tests: tuple[str, ...]) -> None:
    """Compile here, natively, what the guest's pytest imports: podnet's code and the tests, and pytest's
    rewritten test modules (a collection writes them, where PYTHONDONTWRITEBYTECODE is not set). The guest sees
    the repo read-only, so without them each of its pytest processes compiled and rewrote every module again:
    ~40 s under its emulation, two seconds here."""
    python = str(VENV_BIN / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for argv in ([python, "-m", "compileall", "-q", "collections", "tests"],
                 [python, "-m", "pytest", "--collect-only", "-q", "-m", "ipip", "-p", "no:cacheprovider", *tests]):
        done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def guest_pytest(tests: tuple[str, ...], timeout: int, alone: tuple[str, ...] = (), workers: int = 1) -> str:
    """Boot the guest, load ipip, run `pytest -m ipip` there: the `alone` tests first by themselves, then `tests`
    without them on `workers` workers; the guest's log (every session's)."""
    if os.uname().machine != "x86_64":
        pytest.skip(f"the QEMU guest needs an x86_64 host (this is {os.uname().machine})")
    reason = vm_unavailable_reason()
    if reason:
        pytest.fail(f"no QEMU guest for the IPIP tests, so no IPIP coverage: {reason}", pytrace=False)
    warm_bytecode(tests)
    base = [str(VENV_BIN / "python"), "-m", "pytest", "-v", "-m", "ipip", "-p", "no:cacheprovider", "--durations=0"]
    sessions = [[*base, *alone]] if alone else []
    parallel = ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []
    sessions.append([*base, *parallel, *tests, *(f"--deselect={test}" for test in alone)])
    # Every session runs, whatever an earlier one did; the script fails when any failed.
    runs = "; ".join(f"{shlex.join(argv)} || failed=1" for argv in sessions)
    # ANSIBLE_LOG_PATH: the playbooks' progress, readable on the host while the guest runs.
    script = (f"echo podnet-vm: guest up after $(cut -d' ' -f1 /proc/uptime) s; "
              f"export ANSIBLE_LOG_PATH=\"$PODNET_VM_OUT/ansible.log\"; "
              f"mkdir -p {shlex.quote(GUEST_HOME)} && modprobe ipip || exit 1; failed=0; {runs}; exit $failed")
    rc, log = run_in_vm(["bash", "-c", script], timeout=timeout, env=GUEST_ENV, cwd=REPO_ROOT,
                        memory=GUEST_MEMORY if workers > 1 else "1G")
    assert rc == 0, f"the guest's pytest exited {rc}:\n{log}"
    return log


def passed(log: str) -> tuple[int, str]:
    """How many tests passed in the guest (over all its pytest sessions), and the rest of their summary lines."""
    summaries = re.findall(r"^=*\s*(\d+) passed\b(.*)$", log, re.MULTILINE)
    assert summaries, log
    return sum(int(count) for count, _ in summaries), " ".join(rest for _, rest in summaries)


@pytest.mark.timeout(ENGINE_TIMEOUT + 300)
def test_calico_ipip_engine_in_a_qemu_guest():
    """The three-node lab over IPIP, UDP and WireGuard converged by podnet's engine and by node_apply run in the
    nodes (calico-ipip, canal over IPIP, flannel-udp and canal over udp, flannel-wireguard and calico-wireguard
    with a key rotation, render-exact, flanneld's wire format, switches to and from flannel-vxlan), and WireGuard's
    keys made and handed round by site.yml with no private key in its output: minutes, so always in make test."""
    count, rest = passed(guest_pytest(GUEST_TESTS, ENGINE_TIMEOUT, alone=ALONE, workers=GUEST_WORKERS))
    assert count >= 21 and "skipped" not in rest, rest  # a pass means the tests ran there


@pytest.mark.timeout(GUEST_TIMEOUT + 300)
def test_calico_ipip_in_a_qemu_guest():
    """The Ansible-driven calico-ipip tests (site.yml, check mode, drift, reset): up to an hour, opt-in."""
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"the QEMU guest run takes up to an hour under software emulation here; run `make test-ipip-vm` "
                    f"({OPT_IN}=1)")
    count, rest = passed(guest_pytest(INNER_TESTS, GUEST_TIMEOUT))
    assert count >= 4 and "skipped" not in rest, rest
