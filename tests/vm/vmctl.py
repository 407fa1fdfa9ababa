"""A persistent QEMU guest (stock Debian kernel, ``ipip`` loaded) that runs commands on request.

``run_in_vm`` (vmkit.py) boots one guest per command. Molecule needs several steps (create, converge,
idempotence, verify, destroy) in the *same* guest, each from its own process, so this module keeps one
guest up between calls. It is built on vmkit (kernel cache, vng command line, guest environment,
process-group cleanup); the design is in DESIGN.md section 6 and molecule/README.md.

State directory (``--state-dir``; must not lie under a folder the guest binds from its cached root,
see vmkit.cached_dirs, or the guest would not see the shared folder)::

    vng.pid              pid of vng, leader of the guest's own process group
    vng.log              vng's (and QEMU's) output
    share/               shared read-write with the guest (vng --rwdir)
      guest.sh           the guest's command loop (the only command vng runs)
      guest.log          the loop's own output (cached root mount, modprobe ipip)
      ready              written by the guest once up: the exit status of ``modprobe ipip``
      cmds/<id>/run.sh   one submitted command; the guest writes log (while it runs), then rc
      stop               asks the loop to end, after which the guest powers off

CLI (from the repo root, as root)::

    python -m tests.vm.vmctl start --state-dir DIR [--timeout S]
    python -m tests.vm.vmctl exec  --state-dir DIR [--timeout S] [--env K=V ...] -- CMD ARG...
    python -m tests.vm.vmctl status --state-dir DIR
    python -m tests.vm.vmctl stop  --state-dir DIR [--timeout S]

``start`` prints ``vmctl: started ...`` or ``vmctl: already running ...`` (so callers can tell
whether anything changed); ``exec`` relays the command's output and exits with its status, or with
124 (timed out) / 125 (no guest, guest died) with the reason on stderr; ``status`` exits 0 when the
guest is up, 3 when not; ``stop`` exits 0 once no process of the guest is left.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from tests.vm.vmkit import (
    GUEST_CPUS,
    GUEST_ENV,
    GUEST_HOME,
    GUEST_MEMORY,
    GUEST_PATH,
    REPO_ROOT,
    VENV_BIN,
    VMUnavailable,
    cached_dirs,
    cached_root_prelude,
    ensure_kernel,
    group_members,
    guest_command,
    kill_group,
    tail,
    vm_unavailable_reason,
    vng_argv,
    vng_host_env,
    vng_path,
)

# Measured here (2 cores, shared): a boot takes 27 s idle and up to 4 min with the host at load 40.
BOOT_TIMEOUT = 900.0
EXEC_TIMEOUT = 3600.0
STOP_TIMEOUT = 120.0
# The guest kills a command at its timeout; the host waits this much longer for the rc it then writes.
HOST_GRACE = 60.0
POLL = 1.0
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_VMCTL = 125  # vmctl itself failed: no guest, or it died
EXIT_NOT_RUNNING = 3  # status: like `systemctl status` of a stopped unit
# The guest runs the playbooks with the repo's settings, whatever ANSIBLE_CONFIG the caller has.
GUEST_COMMAND_ENV = {
    "PATH": f"{VENV_BIN}:{GUEST_PATH}",
    **GUEST_ENV,
    "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
}


class VMCtlError(RuntimeError):
    """The guest cannot be started, reached or stopped; the text says why."""


class Guest:
    """The files of one persistent guest under ``state_dir`` (see the module docstring)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.share = self.state_dir / "share"
        self.pid_file = self.state_dir / "vng.pid"
        self.vng_log = self.state_dir / "vng.log"
        self.cmds = self.share / "cmds"

    # --- the guest process -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """vng's pid if the recorded process is still this guest's vng, else None.

        A recorded pid alone is not enough: after the guest is gone the number may belong to
        anyone, and stop must never signal a process this tool did not start.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(errors="replace").rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return None
        if stat[0] == "Z" or int(stat[2]) != pid:  # vng leads its own process group
            return None
        return pid if os.fsencode(str(self.share)) in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None and self._ready() is not None

    def _ready(self) -> int | None:
        """modprobe ipip's exit status once the guest's loop is up, else None."""
        return _read_rc(self.share / "ready")

    def _vng_tail(self, lines: int = 40) -> str:
        try:
            return tail(self.vng_log.read_text(errors="replace"), lines)
        except OSError:
            return "(no vng log)"

    def _guest_log(self) -> str:
        try:
            return (self.share / "guest.log").read_text(errors="replace").strip()
        except OSError:
            return "(no guest log)"

    # --- start ---------------------------------------------------------------------------------------

    def start(self, timeout: float = BOOT_TIMEOUT, memory: str = GUEST_MEMORY, cpus: int = GUEST_CPUS) -> str:
        """Boot the guest in the background and wait until its loop is up with ipip loaded.

        Returns the line to print: ``vmctl: started ...`` or ``vmctl: already running ...``.
        """
        pid = self.pid()
        if pid is not None:
            if self._ready() == 0:
                return f"vmctl: already running (vng pid {pid}, state {self.state_dir})"
            raise VMCtlError(f"a guest of {self.state_dir} (vng pid {pid}) is still booting or broken: "
                             "stop it first")
        reason = vm_unavailable_reason()
        if reason:
            raise VMCtlError(f"no QEMU guest can be had here: {reason}")
        vng = vng_path()
        if vng is None:  # vm_unavailable_reason checked, but the venv may have changed since
            raise VMCtlError("vng not found (PyPI package virtme-ng)")
        self._check_shareable()
        vmlinuz = ensure_kernel()
        if self.share.exists():
            shutil.rmtree(self.share)  # a previous guest's commands and marks: never mistaken for this one's
        self.cmds.mkdir(parents=True)
        os.chmod(self.share, 0o755)
        (self.share / "guest.sh").write_text(self._loop_script())
        argv = vng_argv(vng, vmlinuz, self.share, REPO_ROOT, ["bash", str(self.share / "guest.sh")],
                        memory=memory, cpus=cpus)
        started = time.monotonic()
        with open(self.vng_log, "w") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            # Own session, and no pipe of the caller's: the guest outlives this process (that is the
            # point) and never holds an Ansible task's output open; stop kills the group by this pid.
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=vng_host_env(vng), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        while (ready := self._ready()) is None:
            if proc.poll() is not None:
                kill_group(proc.pid)
                self.pid_file.unlink(missing_ok=True)
                raise VMCtlError(f"the guest exited (vng rc {proc.returncode}) before its command loop came "
                                 f"up; vng's output:\n{self._vng_tail()}\nguest log:\n{self._guest_log()}")
            if time.monotonic() - started > timeout:
                kill_group(proc.pid)
                self.pid_file.unlink(missing_ok=True)
                raise VMCtlError(f"the guest was not up after {timeout:.0f} s (killed); vng's output:\n"
                                 f"{self._vng_tail()}")
            time.sleep(POLL)
        if ready != 0:
            self.stop()
            raise VMCtlError(f"modprobe ipip failed in the guest (rc {ready}); guest log:\n{self._guest_log()}")
        return (f"vmctl: started (vng pid {proc.pid}, up after {time.monotonic() - started:.0f} s, "
                f"state {self.state_dir})")

    def _check_shareable(self) -> None:
        """The guest binds cached_dirs() over the 9p root after vng mounted the shared folder: a share
        inside one of them would be hidden in the guest, and every command would wait forever."""
        share = os.path.realpath(self.share)
        for d in cached_dirs(REPO_ROOT):
            if share == d or share.startswith(d.rstrip("/") + "/"):
                raise VMCtlError(f"state dir {self.state_dir} lies under {d}, which the guest replaces by its "
                                 "cached read-only copy: choose one elsewhere (e.g. under /tmp)")

    def _loop_script(self) -> str:
        """The guest's one command: mount the cached root, load ipip, then run submitted commands in
        order until asked to stop (then vng's init powers the guest off)."""
        share = shlex.quote(str(self.share))
        prelude = cached_root_prelude(cached_dirs(REPO_ROOT), REPO_ROOT)
        return f"""# podnet vmctl: the guest's command loop (generated by tests/vm/vmctl.py)
share={share}
exec >"$share/guest.log" 2>&1
{prelude}
mkdir -p {shlex.quote(GUEST_HOME)}
echo "podnet-vm: guest up after $(cut -d' ' -f1 /proc/uptime) s"
modprobe ipip
echo $? >"$share/ready.tmp" && mv "$share/ready.tmp" "$share/ready"
# read -t on a fifo nobody writes: a one-second wait without forking sleep (a fork is dear under TCG).
mkfifo /run/podnet-vmctl-tick && exec 9<>/run/podnet-vmctl-tick
while [ ! -e "$share/stop" ]; do
  for d in "$share"/cmds/*/; do
    if [ -f "$d/run.sh" ] && [ ! -e "$d/taken" ]; then
      : >"$d/taken"
      bash "$d/run.sh" </dev/null
    fi
  done
  read -r -t 1 -u 9 || :
done
echo "podnet-vm: stop requested, powering off"
"""

    # --- exec ---------------------------------------------------------------------------------------

    def exec(self, command: Sequence[str], timeout: float = EXEC_TIMEOUT, env: Mapping[str, str] | None = None,
             cwd: str | os.PathLike[str] = REPO_ROOT, out: TextIO | None = None) -> int:
        """Run ``command`` (argv) in the guest as root in ``cwd``; relay its output to ``out`` while it
        runs; return its exit status (the guest kills it after ``timeout`` s: then 124)."""
        pid = self.pid()
        if pid is None or self._ready() != 0:
            raise VMCtlError(f"no running guest in {self.state_dir} (run `vmctl start` first)")
        cmd_dir = self.cmds / f"{time.time_ns():020d}-{os.getpid()}"
        cmd_dir.mkdir()
        argv = ["timeout", "-k", "30", f"{timeout:.0f}", *command]
        script = guest_command(argv, cmd_dir, {**GUEST_COMMAND_ENV, **(env or {})},
                               prelude=f"cd {shlex.quote(str(cwd))} && ")
        tmp = cmd_dir / "run.sh.tmp"
        tmp.write_text(script + "\n")
        tmp.rename(cmd_dir / "run.sh")  # the loop never sees half a script
        deadline = time.monotonic() + timeout + HOST_GRACE
        log_file, offset = cmd_dir / "log", 0
        while True:
            rc = _read_rc(cmd_dir / "rc")
            offset = _relay(log_file, offset, out)
            if rc is not None:
                return rc
            if self.pid() is None:
                raise VMCtlError(f"the guest died while running {shlex.join(command)}; vng's output:\n"
                                 f"{self._vng_tail()}")
            if time.monotonic() > deadline:
                raise VMCtlError(f"no exit status from the guest {timeout + HOST_GRACE:.0f} s after submitting "
                                 f"{shlex.join(command)} (command folder {cmd_dir})")
            time.sleep(POLL)

    # --- stop ---------------------------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT) -> str:
        """Ask the guest to power off; kill its process group if it has not after ``timeout`` s."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return f"vmctl: no guest running (state {self.state_dir})"
        (self.share / "stop").touch()
        deadline = time.monotonic() + timeout
        while group_members(pid) and time.monotonic() < deadline:
            time.sleep(POLL)
        how = "powered off"
        if group_members(pid):
            how = f"did not power off within {timeout:.0f} s: killed"
            kill_group(pid, wait=30)
        left = group_members(pid)
        if left:
            raise VMCtlError(f"guest processes {left} (group {pid}) are still alive after SIGKILL")
        self.pid_file.unlink()
        return f"vmctl: stopped (vng pid {pid} {how})"


def _read_rc(path: Path) -> int | None:
    """An exit status the guest wrote with `echo $? > path`, or None while it has not (completely)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    if not text.endswith("\n") or not text.strip().lstrip("-").isdigit():
        return None
    return int(text)


def _relay(path: Path, offset: int, out: TextIO | None) -> int:
    """Copy what the guest appended to ``path`` since ``offset`` to ``out``; the new offset."""
    if out is None:
        return offset
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return offset
    if chunk:
        out.write(chunk.decode(errors="replace"))
        out.flush()
    return offset + len(chunk)


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm.vmctl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name, default in (("start", BOOT_TIMEOUT), ("exec", EXEC_TIMEOUT), ("status", 0.0), ("stop", STOP_TIMEOUT)):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", required=True, type=Path)
        if name != "status":
            p.add_argument("--timeout", type=float, default=default, help=f"seconds (default {default:.0f})")
    sub.choices["exec"].add_argument("--env", type=_env_pair, action="append", default=[],
                                     help="KEY=VALUE added to the command's environment")
    sub.choices["exec"].add_argument("--cwd", default=str(REPO_ROOT))
    sub.choices["exec"].add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARG...")
    args = parser.parse_args(argv)

    guest = Guest(args.state_dir)
    try:
        if args.action == "start":
            print(guest.start(args.timeout), flush=True)
        elif args.action == "exec":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("exec: no command given (exec --state-dir DIR -- CMD ARG...)")
            rc = guest.exec(command, args.timeout, dict(args.env), args.cwd, out=sys.stdout)
            if rc == EXIT_TIMEOUT:
                print(f"vmctl: {shlex.join(command)} timed out after {args.timeout:.0f} s in the guest",
                      file=sys.stderr)
            return rc
        elif args.action == "status":
            pid = guest.pid()
            if not guest.running():
                print(f"vmctl: not running (state {guest.state_dir})")
                return EXIT_NOT_RUNNING
            print(f"vmctl: running (vng pid {pid}, state {guest.state_dir})")
        else:
            print(guest.stop(args.timeout), flush=True)
    except (VMCtlError, VMUnavailable) as exc:
        print(f"vmctl: {args.action}: {exc}", file=sys.stderr)
        return EXIT_VMCTL
    return 0


if __name__ == "__main__":
    sys.exit(main())
