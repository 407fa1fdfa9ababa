"""Daemons podnet starts (BIRD) fork and return before the child writes its pid file: the start waits until
the pid file names a live process of that binary, so neither the run nor a re-run right after it takes a
starting daemon for none. Real processes, real /proc: the daemon is a copy of sh named `podnetd`."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply import (
    apply_services,
    service_running,
    wait_for_service,
)

# the parent truncates the pid file and returns at once; the forked child, detached from the caller's pipes
# as a daemon is, writes its own pid 0.4 s later and stays (`; true` keeps sh from exec'ing `sleep` in its
# place, which would rename the process)
DAEMON = """: > "$1"
{binary} -c 'sleep 0.4; echo $$ > "$1"; sleep 30; true' podnetd "$1" </dev/null >/dev/null 2>&1 &
"""


@pytest.fixture
def daemon(tmp_path):
    binary = tmp_path / "podnetd"
    shutil.copy(shutil.which("sh"), binary)
    script = tmp_path / "start"
    script.write_text(DAEMON.format(binary=binary))
    pidfile = tmp_path / "podnetd.pid"
    yield {"name": "podnetd", "pidfile": str(pidfile), "argv": [str(binary), str(script), str(pidfile)]}
    if pidfile.read_text().strip():
        pid = int(pidfile.read_text())
        children = Path(f"/proc/{pid}/task/{pid}/children")
        for child in (children.read_text().split() if children.exists() else []):
            os.kill(int(child), signal.SIGTERM)
        os.kill(pid, signal.SIGTERM)


def test_the_boot_restore_waits_for_a_daemon_whose_pid_file_comes_late(daemon):
    assert apply_services([daemon], check=True) == [" ".join(daemon["argv"])]
    assert not Path(daemon["pidfile"]).exists()
    assert apply_services([daemon]) == [" ".join(daemon["argv"])]
    assert service_running(daemon["pidfile"], daemon["argv"][0])  # running when the start returns
    assert apply_services([daemon]) == []  # and found running: not started twice


def test_without_the_wait_the_starting_daemon_looks_absent(daemon):
    """What the wait is for: right after the start returns, the pid file is still empty."""
    subprocess.run(daemon["argv"], check=True)
    assert Path(daemon["pidfile"]).read_text() == ""
    assert not service_running(daemon["pidfile"], daemon["argv"][0])
    assert wait_for_service(daemon["pidfile"], daemon["argv"][0])


def test_a_daemon_that_never_comes_up_is_reported(tmp_path):
    pidfile = tmp_path / "never.pid"
    pidfile.write_text("")
    assert not wait_for_service(str(pidfile), "/usr/sbin/bird", timeout=0.3)
    never = {"name": "bird", "pidfile": str(pidfile), "argv": ["true"]}
    with pytest.raises(RuntimeError, match="no true runs after"):
        apply_services([never], timeout=0.3)
