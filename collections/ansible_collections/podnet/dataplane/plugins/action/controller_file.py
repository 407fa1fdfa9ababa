# Copyright: podnet contributors
# Apache License 2.0
"""podnet.dataplane.controller_file's action: a file on the controller (the lease file, the WireGuard public keys
file) written by the action itself, through the same atomic writer podnet uses on nodes. ansible.builtin.copy
with delegate_to localhost needs a stat, a file and a copy module run, each a new Python that imports Ansible's
module_utils (about 0.3 CPU-s here, 20-40 s under the QEMU guest's emulation); this needs none."""
from __future__ import annotations

import os
import re
import stat

from ansible.plugins.action import ActionBase
from ansible_collections.podnet.dataplane.plugins.module_utils.node import files

ARGUMENT_SPEC = {
    "path": {"type": "str", "required": True},
    "content": {"type": "str", "required": True},
    "mode": {"type": "str", "required": True},
    "folder_mode": {"type": "str", "default": "0700"},
}
_MODE = re.compile(r"0?[0-7]{3}")


def problems(args: dict) -> list[str]:
    """What is wrong with the arguments (the argument spec has checked their types)."""
    found = []
    path = args["path"]
    if not os.path.isabs(path) or "\x00" in path:
        found.append(f"path: {path!r} must be an absolute path (the role defaults, under inventory_dir, are)")
    for key in ("mode", "folder_mode"):
        if not _MODE.fullmatch(args[key]):
            found.append(f"{key}: {args[key]!r} must be an octal mode such as '0600' (as a quoted string)")
    return found


def not_a_plain_file(path: str) -> str | None:
    """Why podnet will not write at `path` (None: nothing there, or a plain file)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link: podnet writes only a plain file there and leaves the link alone"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a plain file: podnet leaves it alone"
    return None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        found = problems(args)
        if found:
            return {**result, "failed": True, "msg": "; ".join(found)}
        path = args["path"]
        refused = not_a_plain_file(path)
        if refused:
            return {**result, "failed": True, "msg": refused}
        mode, folder_mode = int(args["mode"], 8), int(args["folder_mode"], 8)
        try:
            # the old content only for the diff: converge reads the file itself to compare
            before = files.read_text(path) if self._task.diff else None
            changed = files.converge(path, args["content"], mode, folder_mode, check=self._task.check_mode)
        except (OSError, UnicodeDecodeError) as exc:
            return {**result, "failed": True, "msg": f"{path}: {getattr(exc, 'strerror', None) or exc}"}
        result.update(changed=changed, path=path, mode=f"{mode:04o}")
        if changed and self._task.diff:
            result["diff"] = {"before": before or "", "after": args["content"], "before_header": path,
                              "after_header": path}
        return result
