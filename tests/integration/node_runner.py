"""Run a podnet module (or boot_apply) in a node's namespace as `ip netns exec <node> python <file> <args>` does,
from one warm Python instead of a new interpreter per run.

Under the QEMU guest's software emulation a Python start that imports Ansible's module_utils and podnet's
engine costs ~5 s, more than most runs themselves; a test that converges three nodes a dozen times pays
minutes for it. The runner is one server process per test process (``python -m tests.integration.node_runner``)
that imports each target once and forks a child per run. The child does what `ip netns exec` does for a
command (its own mount namespace, / made a slave, the node's network namespace, /sys remounted so that
/sys/class/net shows the node's devices), sets ``sys.argv`` as Python would for ``python <file> <argv...>``
and calls the target's own ``main()``: the module's argument spec, lock, result and exit code are the
module's. Its stdout and stderr come back as a subprocess's would. The server never runs a target itself, so
every child starts from the same imported, unused state.

Typical use (modulekit.py)::

    rc, out, err = node_runner().run(lab.node_ns("node1"), "ansible_collections....modules.node_apply", [args_file])
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MNT_DETACH = 2
# Only these may be run: podnet's own entry points, each with a main() that Python's `python <file>` calls.
TARGET_PREFIXES = ("ansible_collections.podnet.",)
REPLY_GRACE = 60.0  # the server's own answer after a run's timeout killed it


class RunnerError(RuntimeError):
    """The runner could not run the target (it died, or the request was refused)."""


# --- the server (its own process) -------------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def enter_netns(netns: str) -> None:
    """What `ip netns exec` does before it runs its command: a private mount namespace with / a slave of the
    host's, the named network namespace, and a /sys of that namespace (sysfs shows the devices of the
    network namespace it is mounted in)."""
    libc = _libc()
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")
        _check(libc.setns(fd, CLONE_NEWNET), f"setns({netns})")
    finally:
        os.close(fd)
    _check(libc.umount2(b"/sys", MNT_DETACH), "umount /sys")
    _check(libc.mount(netns.encode(), b"/sys", b"sysfs", 0, None), "mount sysfs /sys")


def _child(netns: str, target: Any, argv: list[str], out: str, err: str) -> None:
    """In the forked child: never returns."""
    code = 1
    try:
        os.setpgid(0, 0)  # a timeout kills the run and whatever it started, nothing else
        for fd, path in ((1, out), (2, err)):
            handle = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.dup2(handle, fd)
            os.close(handle)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # not the server's request pipe
        os.close(null)
        if netns is not None:  # None: where the runner runs (the machine's own namespaces)
            enter_netns(netns)
        sys.argv = [target.__file__, *argv]
        try:
            returned = target.main()
            code = returned if isinstance(returned, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the child must reach os._exit whatever happens  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_one(request: dict[str, Any], targets: dict[str, Any]) -> dict[str, Any]:
    name = request["target"]
    if not name.startswith(TARGET_PREFIXES):
        return {"error": f"{name} is not one of podnet's entry points"}
    if name not in targets:
        targets[name] = importlib.import_module(name)  # imported here once, so every child starts warm
    with tempfile.TemporaryDirectory(prefix="node-runner-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for path in (out, err):
            Path(path).touch()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request["netns"], targets[name], list(request["argv"]), out, err)
        deadline, status = time.monotonic() + float(request["timeout"]), None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
            elif time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                status = os.waitpid(pid, 0)[1]
                return {"rc": None, "stdout": Path(out).read_text(errors="replace"),
                        "stderr": Path(err).read_text(errors="replace") + f"\nkilled after {request['timeout']} s"}
            else:
                time.sleep(0.02)
        return {"rc": os.waitstatus_to_exitcode(status), "stdout": Path(out).read_text(errors="replace"),
                "stderr": Path(err).read_text(errors="replace")}


def serve(preload: list[str]) -> None:
    """One JSON request per line on stdin, one JSON answer per line on stdout, until stdin closes."""
    targets = {name: importlib.import_module(name) for name in preload}
    requests, replies = sys.stdin, sys.stdout
    for line in requests:
        try:
            reply = _run_one(json.loads(line), targets)
        except Exception as exc:  # noqa: BLE001 - the client gets the reason, the server goes on
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


# --- the client -------------------------------------------------------------------------------------------


class NodeRunner:
    """A running server; run() is one `ip netns exec <netns> python <target> <argv>`."""

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "collections"))
        self.process = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-m", "tests.integration.node_runner", *preload], cwd=REPO_ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, netns: str | None, target: str, argv: list[str], timeout: float) -> tuple[int | None, str, str]:
        """(exit code or None when killed at the timeout, stdout, stderr) of one run in `netns` (None: here)."""
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"netns": netns, "target": target, "argv": argv,
                                             "timeout": timeout}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout + REPLY_GRACE)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RunnerError(f"the node runner gave no answer for {target} in {netns} "
                              f"(exit {self.process.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RunnerError(reply["error"])
        return reply["rc"], reply["stdout"], reply["stderr"]

    def close(self) -> None:
        if self.process.poll() is None:
            if self.process.stdin:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


_RUNNER: NodeRunner | None = None


def node_runner() -> NodeRunner:
    """This test process's runner, started on first use and stopped when the process exits."""
    global _RUNNER  # pylint: disable=global-statement
    if _RUNNER is None or _RUNNER.process.poll() is not None:
        _RUNNER = NodeRunner(("ansible_collections.podnet.dataplane.plugins.modules.node_apply",))
        atexit.register(_RUNNER.close)
    return _RUNNER


if __name__ == "__main__":
    serve(sys.argv[1:])
