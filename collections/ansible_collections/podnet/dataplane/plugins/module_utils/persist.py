# Copyright: podnet contributors
# Apache License 2.0
"""What a module applied, saved on the node so `boot_apply` can restore it after a reboot with no
Ansible run.  One JSON file per module (and device), written atomically with mode 0600."""
from __future__ import annotations

import json
import os
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.objects import KObject


def record_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.json")


def save(directory: str, name: str, objects: list[KObject] = (), **extra: Any) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = record_path(directory, name)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"objects": [o.as_dict() for o in objects], **extra}, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def forget(directory: str, name: str) -> None:
    try:
        os.unlink(record_path(directory, name))
    except FileNotFoundError:
        pass


def load_all(directory: str) -> list[dict[str, Any]]:
    records = []
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".json"):
            with open(os.path.join(directory, entry), encoding="utf-8") as handle:
                records.append(json.load(handle))
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
