"""The boot restore's files (boot_apply.apply_files): written again where missing or different, atomically,
with their recorded mode; equal ones untouched; check mode only reports."""
from __future__ import annotations

from ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply import apply_files


def test_files_are_written_again_only_where_they_differ(tmp_path):
    env = tmp_path / "run" / "flannel" / "subnet.env"
    same = tmp_path / "same.conf"
    same.write_text("kept\n")
    same.chmod(0o644)
    items = [{"path": str(env), "content": "FLANNEL_MTU=1450\n", "mode": "0644"},
             {"path": str(same), "content": "kept\n", "mode": "0644"}]

    assert apply_files(items, check=True) == [f"write {env} (mode 0644)"]
    assert not env.exists()

    mtime = same.stat().st_mtime_ns
    assert apply_files(items) == [f"write {env} (mode 0644)"]
    assert env.read_text() == "FLANNEL_MTU=1450\n" and env.stat().st_mode & 0o7777 == 0o644
    assert env.parent.stat().st_mode & 0o7777 == 0o755 and same.stat().st_mtime_ns == mtime
    assert apply_files(items) == []
