# Copyright: podnet contributors
# Apache License 2.0
"""What every podnet module shares: the resource-module states and the result shape
(changed, commands, changes, diff)."""
from __future__ import annotations

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    EngineError,
    ForeignObjectError,
    plan,
)

STATES = ["merged", "replaced", "overridden", "deleted", "gathered", "rendered"]
# Devices (by name) and routes (by destination) that exist without podnet's marker and that podnet may
# nevertheless change: the only way podnet takes over something it did not create.
TAKE_OVER_OPTION = {"type": "list", "elements": "str", "default": []}


def result_for(changes: list[Change], **extra) -> dict:
    commands = [cmd for change in changes for cmd in change.commands]
    before = [c.have.describe(c.want.specified() if c.want is not None else None)
              for c in changes if c.have is not None]
    after = [c.want.describe() for c in changes if c.want is not None]
    out = {
        "changed": bool(changes),
        "commands": commands,
        "changes": [c.as_dict() for c in changes],
        "diff": {"before": "".join(f"{line}\n" for line in before),
                 "after": "".join(f"{line}\n" for line in after)},
    }
    out.update(extra)
    return out


def fail_on_engine_error(module, func, *args, **kwargs):
    """Run func, turning engine failures into a clean module failure that names the command."""
    try:
        return func(*args, **kwargs)
    except ForeignObjectError as exc:
        module.fail_json(msg=f"podnet: nothing changed: {exc}", foreign=exc.problems)
    except EngineError as exc:
        module.fail_json(msg=f"podnet: kernel refused: {exc}")


def plan_owned(module, want, have, purge=None) -> list[Change]:
    """netlink.plan with the module's take_over, failing the module (nothing changed) on objects that
    are not podnet's."""
    return fail_on_engine_error(module, plan, want, have, purge, module.params.get("take_over") or ())
