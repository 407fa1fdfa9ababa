# Copyright: podnet contributors
# Apache License 2.0
"""What a module applied, saved on the node so `boot_apply` can restore it after a reboot with no
Ansible run.  One JSON file per module (and device), mode 0600, written atomically and durably.

Every record names its format ("format": RECORD_FORMAT). A record without one was written by a release
before formats were numbered (format 1: the same objects and extras, read as they are); the next run of
this release writes it again in the current format. A record of a newer format than this release reads
(a node downgraded, or run by two releases) is not guessed at: it is skipped and named, like an
unreadable one, so the rest of the node is still restored."""
from __future__ import annotations

import json
import os
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import KObject
from ansible_collections.podnet.dataplane.plugins.module_utils.node import files


def record_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.json")


RECORD_MODE = 0o600
RECORD_FORMAT = 2
# How each older format becomes the next one: format 1 (unnumbered) is format 2 without the number.
_UPGRADES = {1: lambda record: record}


def save(directory: str, name: str, objects: list[KObject] = (), **extra: Any) -> None:
    """Write the record, unless it already says exactly this: a run that changed nothing leaves the node's
    files as they were (no new mtime, no fsync)."""
    data = json.dumps({"format": RECORD_FORMAT, "objects": [o.as_dict() for o in objects], **extra}, indent=1,
                      sort_keys=True)
    path = record_path(directory, name)
    files.converge(path, data, RECORD_MODE)


def forget(directory: str, name: str) -> None:
    files.remove(record_path(directory, name))


def load_all(directory: str, problems: list[str]) -> list[dict[str, Any]]:
    """Every record in `directory`, in name order, each with its file name under "_file". A record that
    cannot be read or is not a JSON object (a torn write by an older release, a hand edit) is skipped and
    described in `problems`, so that the rest of the node is still restored."""
    records = []
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        try:
            with open(os.path.join(directory, entry), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError) as exc:
            problems.append(f"{entry}: {exc}")
            continue
        if not isinstance(record, dict):
            problems.append(f"{entry}: not a record (a JSON object)")
            continue
        try:
            record = upgrade(record)
        except ValueError as exc:
            problems.append(f"{entry}: {exc}")
            continue
        records.append(dict(record, _file=entry))
    return records


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """The record in RECORD_FORMAT; ValueError for a format this release does not know."""
    version = record.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"format {version!r} is not a record format")
    if version > RECORD_FORMAT:
        raise ValueError(f"format {version} is newer than this podnet reads (up to {RECORD_FORMAT}): written by a "
                         "later release; run that release, or converge the node with this one to write it again")
    while version < RECORD_FORMAT:
        record = _UPGRADES[version](record)
        version += 1
    return dict(record, format=RECORD_FORMAT)


def persist_result(module, name: str, objects: list[KObject] = (), **extra: Any) -> None:
    """For modules: record (or, for state=deleted, forget) what was applied, unless in check mode."""
    directory = module.params.get("persist_dir")
    if not directory or module.check_mode or module.params.get("state") in ("gathered", "rendered"):
        return
    if module.params.get("state") == "deleted":
        forget(directory, name)
    else:
        save(directory, name, objects, **extra)


PERSIST_OPTION = {"type": "path"}
