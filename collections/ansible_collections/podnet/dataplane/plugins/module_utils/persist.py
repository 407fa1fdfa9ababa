# Copyright: podnet contributors
# Apache License 2.0
"""What a module applied, saved on the node so `boot_apply` can restore it after a reboot with no
Ansible run.  One JSON file per module (and device), mode 0600, written atomically and durably."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.objects import KObject


def record_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.json")


def atomic_write(path: str, content: str, mode: int, folder_mode: int = 0o700) -> None:
    """Write a file so that a crash at any moment leaves the old one or the new one, never a torn one: a new
    temporary file beside it (O_EXCL: never one that exists, nor a link planted in its place), fsync,
    chmod, rename over the file, fsync of the folder (the rename itself survives a power cut). A missing
    folder is made with folder_mode."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=folder_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


RECORD_MODE = 0o600


def holds(path: str, content: str, mode: int) -> bool:
    """Whether the file at `path` has exactly this content and mode (a missing or unreadable one has not)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read() == content and os.fstat(handle.fileno()).st_mode & 0o7777 == mode
    except (OSError, ValueError):
        return False


def save(directory: str, name: str, objects: list[KObject] = (), **extra: Any) -> None:
    """Write the record, unless it already says exactly this: a run that changed nothing leaves the node's
    files as they were (no new mtime, no fsync)."""
    data = json.dumps({"objects": [o.as_dict() for o in objects], **extra}, indent=1, sort_keys=True)
    path = record_path(directory, name)
    if not holds(path, data, RECORD_MODE):
        atomic_write(path, data, RECORD_MODE)


def forget(directory: str, name: str) -> None:
    try:
        os.unlink(record_path(directory, name))
    except FileNotFoundError:
        pass


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
        records.append(dict(record, _file=entry))
    return records


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
