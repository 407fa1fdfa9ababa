"""files.py: atomic writes, and the temporary files of a writer that was SIGKILLed removed by the next one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ansible_collections.podnet.dataplane.plugins.module_utils.node import files

# A writer that stops for good inside atomic_write, after its temporary file holds the content and before
# the rename: fsync tells the parent and waits to be killed.
STALLED_WRITER = """
import os, sys, time
from ansible_collections.podnet.dataplane.plugins.module_utils.node import files
def stall(fd):
    print("stalled", flush=True)
    time.sleep(600)
os.fsync = stall
files.atomic_write(sys.argv[1], "new\\n", 0o644, 0o755)
"""


def killed_writer(path: Path) -> int:
    """Run a writer of `path`, SIGKILL it mid-write; its pid (now dead)."""
    proc = subprocess.Popen([sys.executable, "-c", STALLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "stalled"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return proc.pid


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_the_next_write_removes_a_killed_writers_temporary_file(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("old\n")
    pid = killed_writer(path)
    left = temporaries(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".subnet.env.{files.TEMP_MARK}-{pid}-"), left
    assert path.read_text() == "old\n"  # the old file whole: the kill came before the rename

    assert files.converge(str(path), "new\n", 0o644)
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o7777 == 0o644
    assert temporaries(tmp_path) == []


def test_a_write_that_changes_nothing_still_sweeps_and_check_mode_does_not(tmp_path):
    path = tmp_path / "record.json"
    files.atomic_write(str(path), "{}", 0o600)
    killed_writer(path)
    assert len(temporaries(tmp_path)) == 1
    assert not files.converge(str(path), "{}", 0o600, check=True)
    assert len(temporaries(tmp_path)) == 1  # check mode touches nothing
    mtime = path.stat().st_mtime_ns
    assert not files.converge(str(path), "{}", 0o600)
    assert temporaries(tmp_path) == [] and path.stat().st_mtime_ns == mtime


def test_remove_sweeps_and_reports_whether_the_file_was_there(tmp_path):
    path = tmp_path / "bird.conf"
    path.write_text("x")
    killed_writer(path)
    assert files.remove(str(path))
    assert list(tmp_path.iterdir()) == []
    assert not files.remove(str(path))


def test_only_podnets_temporaries_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "subnet.env"
    dead = killed_writer(tmp_path / "other.env")  # a dead pid to name files with
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        kept = [
            f".subnet.env.{files.TEMP_MARK}-{sleeper.pid}-abc123.tmp",  # a live writer's: it renames it soon
            f".subnet.env.{files.TEMP_MARK}-{os.getpid()}-abc123.tmp",  # this process's own
            f".subnet.env.{dead}.tmp",  # not podnet's name
            f".subnet.env.{files.TEMP_MARK}-{dead}-abc123.tmp.bak",  # not exactly podnet's name
            f"subnet.env.{files.TEMP_MARK}-{dead}-abc123.tmp",
            f".other.env.{files.TEMP_MARK}-{dead}-abc123.tmp",  # another file's: its writer sweeps it
        ]
        stale = f".subnet.env.{files.TEMP_MARK}-{dead}-abc123.tmp"
        for name in (*kept, stale):
            (tmp_path / name).write_text("partial")
        assert files.stale_temporaries(str(path)) == [str(tmp_path / stale)]
        files.atomic_write(str(path), "new\n", 0o644)
        names = {p.name for p in tmp_path.iterdir()}
        assert stale not in names and set(kept) <= names
        assert files.is_stale_temporary(f".other.env.{files.TEMP_MARK}-{dead}-abc123.tmp")
        assert not files.is_stale_temporary(kept[0]) and not files.is_stale_temporary(kept[2])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_atomic_symlink_replaces_a_link_and_makes_the_folder(tmp_path):
    link = tmp_path / "wants" / "podnet-apply.service"
    files.atomic_symlink("/etc/a", str(link))
    assert os.readlink(link) == "/etc/a" and (tmp_path / "wants").stat().st_mode & 0o7777 == 0o755
    files.atomic_symlink("/etc/b", str(link))
    assert os.readlink(link) == "/etc/b" and os.listdir(tmp_path / "wants") == ["podnet-apply.service"]
