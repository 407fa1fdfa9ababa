"""podnet.dataplane.controller_file (the lease file's and the WireGuard keys file's writer) in a real ansible-playbook
run: written by the controller itself with the exact content and mode, a new folder made 0700, a second run that
touches nothing, check mode and diff exact, a link or a relative path refused and left alone - and no module run
for any of it (the run has no module to send: none of its results carries a module's invocation)."""
from __future__ import annotations

import json
import os
import stat

import pytest
import yaml

from .labkit import run_playbook

pytestmark = pytest.mark.integration

LEASES = '{\n    "node1": "10.244.0.0/24"\n}\n'


def task(name: str, register: str, **args: object) -> dict:
    return {"name": name, "podnet.dataplane.controller_file": args, "register": register, "ignore_errors": True}


def test_the_controller_writes_the_file_itself_exactly_and_only_when_it_differs(tmp_path):
    folder = tmp_path / "new" / "inventory"
    target = folder / "podnet_leases.json"
    elsewhere = tmp_path / "someone_elses.json"
    elsewhere.write_text("theirs\n")
    link = tmp_path / "link.json"
    link.symlink_to(elsewhere)
    results = tmp_path / "results.json"
    names = ["first", "again", "preview", "linked", "relative", "bad_mode", "mode_only"]
    tasks = [
        task("A new file in a new folder", "first", path=str(target), content=LEASES, mode="0600"),
        task("The same again", "again", path=str(target), content=LEASES, mode="0600"),
        {**task("Other content, in check mode", "preview", path=str(target), content="{}\n", mode="0600"),
         "check_mode": True},
        task("A link where the file goes", "linked", path=str(link), content=LEASES, mode="0600"),
        task("A relative path", "relative", path="podnet_leases.json", content=LEASES, mode="0600"),
        task("A mode that is not octal", "bad_mode", path=str(target), content=LEASES, mode="rw-------"),
        task("Only the mode differs", "mode_only", path=str(target), content=LEASES, mode="0644"),
        {"name": "Hand the results back", "podnet.dataplane.controller_file": {
            "path": str(results), "mode": "0600",
            "content": "{{ dict(names | zip(names | map('extract', vars))) | to_json }}"}, "vars": {"names": names}},
    ]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"name": "controller_file", "hosts": "all", "gather_facts": False,
                                         "tasks": tasks}]))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}}))
    run = run_playbook(playbook, inventory, "pnctl", diff=True)
    assert run.rc == 0, run.output
    got = json.loads(results.read_text())

    assert got["first"]["changed"] and not got["first"].get("failed"), got["first"]
    assert got["first"]["diff"] == {"before": "", "after": LEASES, "before_header": str(target),
                                    "after_header": str(target)}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # the file's own folder (a parent made on the way: 0755)
    assert not got["again"]["changed"] and "diff" not in got["again"], got["again"]
    assert got["preview"]["changed"] and got["preview"]["diff"]["after"] == "{}\n", got["preview"]
    assert target.read_text() == LEASES  # check mode wrote nothing
    for refused, words in (("linked", "symbolic link"), ("relative", "absolute path"), ("bad_mode", "octal mode")):
        assert got[refused].get("failed") and words in got[refused]["msg"], got[refused]
    assert link.is_symlink() and elsewhere.read_text() == "theirs\n"
    assert not (tmp_path / "podnet_leases.json").exists()
    assert got["mode_only"]["changed"] and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_text() == LEASES
    assert not any(r.get("invocation") for r in got.values()), got  # no module ran
    assert sorted(os.listdir(folder)) == ["podnet_leases.json"]  # no temporary file left beside it
