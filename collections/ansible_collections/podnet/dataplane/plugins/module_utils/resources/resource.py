# Copyright: podnet contributors
# Apache License 2.0
"""What every podnet resource shares: the resource-module states, taken in one order by one state machine
(Resource), and the result shape (changed, commands, changes, diff)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    Engine,
    EngineError,
    ForeignObjectError,
    KernelState,
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


class Resource:
    """One resource's run, the same for every podnet resource, in this order:

    1. the inputs are checked (`problems`): one problem fails the run before anything is read or changed;
    2. `rendered`: the commands that make the wanted state on a fresh host, without reading this one;
    3. one read of the host (`reading`);
    4. `gathered`: the resource as it was read, in the shape of the module's own options, so that it is
       valid input again (given back with state merged, it changes nothing);
    5. merged, replaced, overridden, deleted: `plan` the difference between the wanted state and what was
       read - merged adds and corrects, replaced also drops what differs in the entries it lists,
       overridden drops everything of podnet's it does not list, deleted removes podnet's (the listed
       entries, or all) - and `write` it unless in check mode;
    6. `record` the wanted state for the boot restore, and end with the `result`.

    A subclass is made per run (`Resource(module).run()`); what its steps learn they keep on self."""

    name = ""  # podnet.<name> in messages

    def __init__(self, module: Any):
        self.module = module
        self.p = module.params
        self.state: str = module.params["state"]

    def fail(self, msg: str, **extra: Any) -> None:
        self.module.fail_json(msg=f"podnet.{self.name}: {msg}", **extra)

    def problems(self) -> list[str]:
        return []

    def rendered(self) -> dict[str, Any]:
        """The `rendered` result: at least `rendered`, the command lines."""
        raise NotImplementedError

    def reading(self) -> AbstractContextManager[Any]:
        """What was read of the host, for as long as the run needs it (a @contextmanager in subclasses)."""
        raise NotImplementedError

    def gathered(self, have: Any) -> dict[str, Any]:
        raise NotImplementedError

    def gathered_facts(self, have: Any) -> dict[str, Any]:
        """What the `gathered` result tells beside the options (e.g. whether podnet owns the device)."""
        return {}

    def plan(self, have: Any) -> list[Any]:
        raise NotImplementedError

    def write(self, have: Any, planned: list[Any]) -> None:
        raise NotImplementedError

    def result(self, planned: list[Any]) -> dict[str, Any]:
        return result_for(planned)

    def record(self) -> None:
        """Keep the wanted state for the boot restore (persist_result); nothing by default."""

    def run(self) -> None:
        """Ends in module.exit_json or module.fail_json."""
        problems = self.problems()
        if problems:
            self.fail("; ".join(problems), problems=problems)
        if self.state == "rendered":
            self.module.exit_json(changed=False, **self.rendered())
        with self.reading() as have:
            if self.state == "gathered":
                self.module.exit_json(changed=False, gathered=self.gathered(have), **self.gathered_facts(have))
            planned = self.plan(have)
            if planned and not self.module.check_mode:
                self.write(have, planned)
            result = self.result(planned)
        self.record()
        self.module.exit_json(**result)


class NetlinkResource(Resource):
    """A resource kept in the kernel's netlink state: one Engine on the node's namespace, one gather of
    `kinds` (links always) and `sysctls()`, the planned Changes applied in one batch."""

    kinds: frozenset[type] = frozenset()

    def sysctls(self) -> list[str]:
        return []

    @contextmanager
    def reading(self) -> Iterator[KernelState]:
        with Engine() as engine:
            self.engine = engine
            yield engine.gather(set(self.kinds), self.sysctls())

    def write(self, have: KernelState, planned: list[Change]) -> None:
        fail_on_engine_error(self.module, self.engine.apply, planned, have)

    def result(self, planned: list[Any]) -> dict[str, Any]:
        """The changes, with what the run learned beside them (`extra`: an MTU it derived, a public key)."""
        return result_for(planned, **getattr(self, "extra", {}))

    def underlay_mtu(self, have: KernelState) -> int:
        """The MTU of the node's underlay - the device holding the `local` option's address - from which a
        tunnel device's MTU is derived."""
        if not self.p["local"]:
            self.fail("give mtu, or local so podnet can derive it from the underlay")
        lower = have.device_holding(self.p["local"])
        if lower is None:
            self.fail(f"local address {self.p['local']} is not on any interface of this node")
        return lower.mtu
