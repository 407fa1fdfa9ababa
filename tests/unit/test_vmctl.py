"""tests/vm/vmctl.py without a guest: exit-status files, the state dir check, and that stop signals
only the process group it recorded (a stand-in process plays vng; the real guest runs in the
molecule scenario ipip-vm)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vm import vmctl
from tests.vm.vmkit import REPO_ROOT, group_members


def test_read_rc_waits_for_a_complete_line(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    assert vmctl._read_rc(rc) is None
    rc.write_text("")
    assert vmctl._read_rc(rc) is None  # created by the shell's redirection, not yet written
    rc.write_text("2")
    assert vmctl._read_rc(rc) is None
    rc.write_text("2\n")
    assert vmctl._read_rc(rc) == 2


def test_state_dir_under_the_repo_is_refused() -> None:
    with pytest.raises(vmctl.VMCtlError, match="cached read-only copy"):
        vmctl.Guest(REPO_ROOT / ".cache" / "vmctl")._check_shareable()


def test_exec_and_status_without_a_guest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vmctl.main(["exec", "--state-dir", str(tmp_path), "--", "true"]) == vmctl.EXIT_VMCTL
    assert "no running guest" in capsys.readouterr().err
    assert vmctl.main(["status", "--state-dir", str(tmp_path)]) == vmctl.EXIT_NOT_RUNNING
    assert vmctl.main(["stop", "--state-dir", str(tmp_path)]) == 0


def _stand_in(*args: str) -> subprocess.Popen[bytes]:
    """A process in its own session that ignores the stop request, like a hung guest; returned once it runs
    its own command line (until exec, a fresh child shows its parent's, which vmctl would not recognise)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 30
    while b"time.sleep(120)" not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def test_stop_leaves_a_process_it_did_not_start(tmp_path: Path) -> None:
    guest = vmctl.Guest(tmp_path)
    other = _stand_in()  # same pid file, but not this state dir's vng (a reused pid)
    try:
        guest.pid_file.write_text(f"{other.pid}\n")
        assert guest.pid() is None
        assert "no guest running" in guest.stop(timeout=1)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_stop_kills_the_recorded_group_when_the_guest_does_not_power_off(tmp_path: Path) -> None:
    guest = vmctl.Guest(tmp_path)
    guest.share.mkdir()
    hung = _stand_in("--rwdir", str(guest.share))  # carries the share path, as vng's command line does
    try:
        guest.pid_file.write_text(f"{hung.pid}\n")
        assert guest.pid() == hung.pid
        assert "killed" in guest.stop(timeout=1)
        hung.wait(timeout=10)
        assert not group_members(hung.pid)
        assert not guest.pid_file.exists()
    finally:
        if hung.poll() is None:
            hung.kill()
            hung.wait()


def test_no_guest_fails_the_ipip_test_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel download that fails must not turn the IPIP coverage into a quiet skip."""
    from tests.integration import test_ipip_vm

    if os.uname().machine != "x86_64":
        pytest.skip("the guest's x86_64 rule applies first on this host")
    reason = "no guest kernel: apt-get download linux-image-6.1.0-99-amd64 failed (rc=100)"
    monkeypatch.setattr(test_ipip_vm, "vm_unavailable_reason", lambda: reason)
    with pytest.raises(pytest.fail.Exception, match="apt-get download"):
        test_ipip_vm.guest_pytest(test_ipip_vm.GUEST_TESTS, 60)
