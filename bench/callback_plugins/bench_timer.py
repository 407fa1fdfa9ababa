"""Ansible callback (aggregate) for the benchmarks: wall time per task, written as JSON.

Enabled by the benchmarks only (ANSIBLE_CALLBACKS_ENABLED=bench_timer, ANSIBLE_CALLBACK_PLUGINS=<this
folder>); writes ``[{"task": name, "seconds": s, "hosts": n}, ...]`` in play order to the file named
by ``PODNET_BENCH_TIMINGS`` when the playbook ends.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: bench_timer
type: aggregate
short_description: wall time per task, for podnet's benchmarks
description:
  - Writes the wall time of each task (from its start to the start of the next one) to the JSON
    file named by the PODNET_BENCH_TIMINGS environment variable.
requirements:
  - enabled with ANSIBLE_CALLBACKS_ENABLED
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._tasks: list[dict] = []
        self._current: dict | None = None
        self._start = time.monotonic()

    def _close(self) -> None:
        if self._current is not None:
            self._current["seconds"] = round(time.monotonic() - self._current.pop("_t0"), 4)
            self._tasks.append(self._current)
            self._current = None

    def _open(self, name: str) -> None:
        self._close()
        self._current = {"task": name, "_t0": time.monotonic(), "hosts": 0}

    def v2_playbook_on_play_start(self, play) -> None:
        self._open(f"(play start) {play.get_name()}")

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._open(task.get_name())

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._open(f"(handler) {task.get_name()}")

    def v2_playbook_on_include(self, included_file) -> None:
        self._open(f"(include) {os.path.basename(str(included_file._filename))}")

    def _count(self, *_args, **_kwargs) -> None:
        if self._current is not None:
            self._current["hosts"] += 1

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = v2_runner_on_unreachable = _count

    def v2_playbook_on_stats(self, stats) -> None:
        self._open("(stats)")
        self._close()
        out = os.environ.get("PODNET_BENCH_TIMINGS")
        if out:
            with open(out, "w", encoding="utf-8") as fh:
                json.dump({"total": round(time.monotonic() - self._start, 4), "tasks": self._tasks}, fh)
