"""The records podnet keeps for the boot restore: written so that a crash leaves the old or the new
record (never a torn one, never through a planted link), and read so that one bad record does not stop
the restore of the rest."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import Sysctl
from ansible_collections.podnet.dataplane.plugins.module_utils.node import boot_apply, persist


def test_save_writes_a_private_record_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    persist.save(str(folder), "pod_route", [Sysctl("net.ipv4.ip_forward", "1")], offload=[])
    record = json.loads((folder / "pod_route.json").read_text())
    assert record["objects"][0]["name"] == "net.ipv4.ip_forward" and record["offload"] == []
    assert stat.S_IMODE((folder / "pod_route.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["pod_route.json"]


def test_an_unchanged_record_is_left_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    objects = [Sysctl("net.ipv4.ip_forward", "1")]
    persist.save(str(folder), "pod_route", objects)
    record = folder / "pod_route.json"
    first = record.stat()
    persist.save(str(folder), "pod_route", objects)  # a run that changed nothing
    assert (record.stat().st_ino, record.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    record.chmod(0o644)  # a mode someone widened is put back, by a rewrite
    persist.save(str(folder), "pod_route", objects)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600 and record.stat().st_ino != first.st_ino
    persist.save(str(folder), "pod_route", [])
    assert json.loads(record.read_text())["objects"] == []


def test_save_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    # the fixed temporary name earlier releases used, pointed at a file outside the folder
    (folder / "pod_route.json.tmp").symlink_to(target)
    persist.save(str(folder), "pod_route", [Sysctl("net.ipv4.ip_forward", "1")])
    assert not target.exists()
    assert json.loads((folder / "pod_route.json").read_text())["objects"]


def test_a_failed_save_keeps_the_old_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "state"
    persist.save(str(folder), "pod_route", [Sysctl("net.ipv4.ip_forward", "1")])
    before = (folder / "pod_route.json").read_text()

    def fail(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        persist.save(str(folder), "pod_route", [])
    assert (folder / "pod_route.json").read_text() == before
    assert sorted(p.name for p in folder.iterdir()) == ["pod_route.json"]  # the temporary file is gone


def test_load_all_skips_what_it_cannot_read_and_says_so(tmp_path: Path) -> None:
    persist.save(str(tmp_path), "good", [Sysctl("net.ipv4.ip_forward", "1")])
    (tmp_path / "torn.json").write_text('{"objects": [{"object": "route"')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / ".good.x.tmp").write_text("{}")  # a temporary file of a write in progress
    problems: list[str] = []
    records = persist.load_all(str(tmp_path), problems)
    assert [r["_file"] for r in records] == ["good.json"]
    assert [p.split(":")[0] for p in problems] == ["list.json", "torn.json"]


def test_the_restore_goes_on_past_bad_records_and_fails_at_the_end(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-torn.json").write_text('{"objects": [')
    (tmp_path / "b-alien.json").write_text(json.dumps({"objects": [{"object": "qdisc", "dev": "eth0"}]}))
    (tmp_path / "c-empty.json").write_text(json.dumps({"objects": [], "iptables": [], "offload": []}))
    assert boot_apply.main([str(tmp_path), "--check"]) == 1
    out = capsys.readouterr()
    assert "0 change(s) needed (check: nothing changed) from 1 record(s)" in out.out
    assert "a-torn.json" in out.err and "b-alien.json: KeyError" in out.err


def test_records_carry_their_format_and_older_ones_are_read_as_they_are(tmp_path):
    persist.save(str(tmp_path), "pod_route", [])
    assert json.loads((tmp_path / "pod_route.json").read_text())["format"] == persist.RECORD_FORMAT
    # a record of a release before formats were numbered: format 1, read as it is
    old = {"objects": [{"object": "sysctl", "name": "net.ipv4.ip_forward", "value": "1"}], "iptables": []}
    (tmp_path / "old.json").write_text(json.dumps(old))
    problems: list[str] = []
    loaded = {r["_file"]: r for r in persist.load_all(str(tmp_path), problems)}
    assert problems == []
    assert loaded["old.json"] == dict(old, format=persist.RECORD_FORMAT, _file="old.json")


def test_a_record_of_a_newer_or_unknown_format_is_named_not_guessed(tmp_path):
    newer = persist.RECORD_FORMAT + 1
    (tmp_path / "a-newer.json").write_text(json.dumps({"format": newer, "objects": []}))
    (tmp_path / "b-odd.json").write_text(json.dumps({"format": "2", "objects": []}))
    (tmp_path / "c-good.json").write_text(json.dumps({"format": persist.RECORD_FORMAT, "objects": []}))
    problems: list[str] = []
    assert [r["_file"] for r in persist.load_all(str(tmp_path), problems)] == ["c-good.json"]
    assert problems[0].startswith(f"a-newer.json: format {newer} is newer than this podnet reads")
    assert problems[1] == "b-odd.json: format '2' is not a record format"
