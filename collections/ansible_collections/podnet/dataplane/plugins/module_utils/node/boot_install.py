# Copyright: podnet contributors
# Apache License 2.0
"""Install (or remove) the boot restore on a node: the podnet-apply unit and the copy of podnet's engine
it runs (``python3 -m ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply <persist_dir>``
with ``PYTHONPATH=<lib>``, see boot_apply.py), from the code that is running - the collection's
module_utils on the controller or the AnsiballZ payload of a module on the node.

    install(lib_dir, python, persist_dir, unit_dir="/etc/systemd/system", check_mode=False)
    removal(lib_dir, unit_dir="/etc/systemd/system", check_mode=False)

Both write or remove only what differs, and return the same dict:

    changed   whether anything changed (or, in check mode, would change)
    files     the files written (would be written), in order
    removed   the files, links and folders removed (would be removed), in order
    links     the symlinks made (would be made)
    commands  every change as the shell command that does the same, in order, ``systemctl daemon-reload``
              included (in check mode, and where systemd does not run the node, what would be done)
    ran       the commands actually run (``systemctl daemon-reload``, only where systemd is PID 1)
    notes     why a command in ``commands`` was not run
    diff      Ansible diffs (before/after/before_header/after_header): the unit's text, the link, and one
              line per engine file (sha256 and mode) - the code itself is the running collection's

A failure raises BootInstallError; its ``result`` is what was done before it.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import shell_line

# The engine the unit runs: importing it here makes AnsiballZ ship it, and every module it imports, with any
# module that uses this file, so that their sources can be read from the payload (see engine_sources).
from ansible_collections.podnet.dataplane.plugins.module_utils.node import boot_apply
from ansible_collections.podnet.dataplane.plugins.module_utils.node.files import (
    atomic_symlink,
    atomic_write,
    holds,
)

PACKAGE = "ansible_collections.podnet.dataplane.plugins.module_utils"
ENGINE_MAIN = boot_apply.__name__
# Exactly the files `python3 -m <ENGINE_MAIN>` imports from podnet: boot_apply and the transitive closure of
# its podnet imports, and the __init__.py of every package on the way (regular packages, not namespace ones a
# stray ansible_collections folder elsewhere on the path could extend), as paths under module_utils.
# tests/unit/test_boot_install.py proves the list complete (boot_apply runs from a copy of only these) and
# minimal (without any one it fails).
ENGINE_FILES = (
    "__init__.py",
    "kernel/__init__.py",
    "kernel/builders.py",
    "kernel/iptables_chains.py",
    "kernel/netlink.py",
    "kernel/objects.py",
    "kernel/offload.py",
    "kernel/ownership.py",
    "kernel/shell.py",
    "kernel/wireguard_keys.py",
    "node/__init__.py",
    "node/boot_apply.py",
    "node/files.py",
    "node/persist.py",
    "plan/__init__.py",
    "plan/validate.py",
)
# Earlier releases kept module_utils flat: their boot restore copied these files to the top of the engine's
# folder (the boot role before that copied every module_utils file). Install and removal take away the ones
# that are still podnet's (their first line is LEGACY_HEADER), with their compiled __pycache__ files; any
# other file stays.
EARLIER_FILES = (
    "boot_apply.py",
    "boot_install.py",
    "builders.py",
    "cni.py",
    "files.py",
    "ipip_tunnel_resource.py",
    "iptables_chains.py",
    "iptables_rules_resource.py",
    "netlink.py",
    "network_policy_resource.py",
    "node_apply.py",
    "node_lock.py",
    "objects.py",
    "offload.py",
    "ownership.py",
    "persist.py",
    "plan.py",
    "pod_network_resource.py",
    "pod_route_resource.py",
    "policy.py",
    "proxy_arp_resource.py",
    "render.py",
    "resource.py",
    "shell.py",
    "underlay.py",
    "validate.py",
    "vxlan_fdb_resource.py",
)
LEGACY_HEADER = "# Copyright: podnet contributors\n"

UNIT_NAME = "podnet-apply.service"
UNIT_DIR = "/etc/systemd/system"
WANTS_DIR = "multi-user.target.wants"
FILE_MODE = 0o644
DIR_MODE = 0o755
SYSTEMCTL_TIMEOUT = 120

UNIT_TEMPLATE = """\
# Ansible managed
[Unit]
Description=Restore podnet's pod network state (VXLAN/IPIP devices, peers, routes, pod wiring)
Documentation=https://example.invalid/podnet
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
# Daemons the restore starts (BIRD) stay when the unit is stopped or restarted: only its own process goes.
KillMode=process
Environment={environment}
ExecStart={exec_start}

[Install]
WantedBy=multi-user.target
"""


class BootInstallError(Exception):
    """The boot restore cannot be installed or removed as asked; ``result`` is what was done before."""

    def __init__(self, msg: str, result: dict[str, Any] | None = None):
        super().__init__(msg)
        self.msg = msg
        self.result = result or {}


# ---------------------------------------------------------------------------------------------- the unit

def check_path(name: str, value: Any) -> str:
    """An absolute path that can be written into a unit file (no line break or other control character)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise BootInstallError(f"podnet.boot_unit: {name} {value!r} must be an absolute path")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise BootInstallError(f"podnet.boot_unit: {name} {value!r} contains a control character; "
                               "it cannot be written into a unit file")
    return value


def systemd_word(word: str, variables: bool = True) -> str:
    """One word of a systemd setting that splits its value into words (ExecStart=, Environment=), so that
    systemd reads back exactly `word`: every ``%`` doubled (systemd expands %-specifiers in both), every ``$``
    doubled when `variables` (ExecStart= expands $VAR and ${VAR} in its arguments; Environment= does not),
    and the word double-quoted, with ``\\`` and ``"`` backslash-escaped, when it holds whitespace, a quote,
    a backslash or a ``;`` (systemd unquotes and C-unescapes each word). A path the plan accepts (letters,
    digits and ``/_.+@-``) is written as it is."""
    word = word.replace("%", "%%")
    if variables:
        word = word.replace("$", "$$")
    if word and not any(char.isspace() or char in "\"'\\;" for char in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(lib_dir: str, python: str, persist_dir: str) -> str:
    """podnet-apply.service for these paths (the text roles/boot's template wrote before this module)."""
    check_path("lib", lib_dir)
    check_path("python", python)
    check_path("persist_dir", persist_dir)
    if "$" in python:  # systemd expands no variables in the executable's path, nor takes $$ there
        raise BootInstallError(f"podnet.boot_unit: python {python!r}: systemd cannot run a program whose path "
                               "holds a '$'")
    return UNIT_TEMPLATE.format(
        environment=systemd_word(f"PYTHONPATH={lib_dir}", variables=False),
        exec_start=" ".join([systemd_word(python, variables=False), "-m", ENGINE_MAIN, systemd_word(persist_dir)]))


# -------------------------------------------------------------------------------------- the engine's code

def engine_dir(lib_dir: str) -> str:
    return os.path.join(lib_dir, *PACKAGE.split("."))


def engine_sources() -> dict[str, str]:
    """ENGINE_FILES' text, read through the loader of the running package: a SourceFileLoader when the
    collection runs from a folder, a zipimporter inside an AnsiballZ payload."""
    sources = {}
    for filename in ENGINE_FILES:
        name = _module_name(filename)
        try:
            module = sys.modules.get(name) or importlib.import_module(name)
            source = module.__loader__.get_source(name)
        except (ImportError, AttributeError, OSError) as exc:
            raise BootInstallError(f"podnet.boot_unit: cannot read the source of {name}: {exc}") from exc
        if source is None:
            raise BootInstallError(f"podnet.boot_unit: the loader of {name} has no source for it "
                                   f"({module.__loader__!r})")
        sources[filename] = source
    return sources


def _module_name(filename: str) -> str:
    """"kernel/netlink.py" -> PACKAGE + ".kernel.netlink"; "kernel/__init__.py" -> PACKAGE + ".kernel"."""
    parts = filename[:-3].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def _digest(path: str) -> str:
    """One diff line for a file: its sha256 and mode, or that it is absent."""
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
            mode = os.fstat(handle.fileno()).st_mode & 0o7777
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    return f"sha256:{digest} mode {mode:04o}"


def _text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _link(path: str) -> str | None:
    """Where the link at `path` points; None when there is nothing there, "" when it is not a link."""
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return None
    except OSError:
        return "" if os.path.lexists(path) else None


# ------------------------------------------------------------------------------------------------ systemd

def systemd_runs_node() -> bool:
    """Whether systemd is PID 1 here (what sd_booted() checks, /run/systemd/system, and PID 1's name)."""
    if not os.path.isdir("/run/systemd/system"):
        return False
    try:
        return os.path.basename(os.readlink("/proc/1/exe")).startswith("systemd")
    except OSError:  # not root: /proc/1/exe is not readable, its name is
        try:
            with open("/proc/1/comm", encoding="utf-8") as handle:
                return handle.read().strip() == "systemd"
        except OSError:
            return False


def find_systemctl() -> tuple[str, str]:
    """(path of systemctl, "") where systemctl may be run, else ("", why not)."""
    if not systemd_runs_node():
        return "", "systemd is not PID 1 here"
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/bin", "/usr/sbin", "/sbin"])
    found = shutil.which("systemctl", path=search)
    return (found, "") if found else ("", "systemd is PID 1 but no systemctl binary was found")


def _result() -> dict[str, Any]:
    return {"changed": False, "files": [], "removed": [], "links": [], "commands": [], "ran": [], "notes": [],
            "diff": []}


def _daemon_reload(result: dict[str, Any], check_mode: bool, systemctl: str | None) -> None:
    """systemctl daemon-reload, so that systemd sees the unit as it now is - run where systemd is PID 1
    and not in check mode; otherwise only reported (commands, notes)."""
    command = ["systemctl", "daemon-reload"]
    result["commands"].append(shell_line(command))
    if check_mode:
        return
    why = ""
    if systemctl is None:
        systemctl, why = find_systemctl()
    elif not systemctl:
        why = "asked not to run systemctl"
    if not systemctl:
        result["notes"].append(f"did not run {shell_line(command)}: {why}")
        return
    try:
        done = subprocess.run([systemctl, *command[1:]], capture_output=True, text=True, check=False,
                              timeout=SYSTEMCTL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BootInstallError(f"podnet.boot_unit: {shell_line([systemctl, *command[1:]])}: {exc}", result) from exc
    if done.returncode != 0:
        raise BootInstallError(f"podnet.boot_unit: {shell_line([systemctl, *command[1:]])} failed "
                               f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()}", result)
    result["ran"].append(shell_line([systemctl, *command[1:]]))


# ------------------------------------------------------------------------------------------------ install

def install(lib_dir: str, python: str, persist_dir: str, unit_dir: str = UNIT_DIR, check_mode: bool = False,
            systemctl: str | None = None) -> dict[str, Any]:
    """Install or update the boot restore: ENGINE_FILES under `lib_dir` (mode 0644, new folders 0755), the
    unit in `unit_dir`, enabled by the link <unit_dir>/multi-user.target.wants/podnet-apply.service (what
    ``systemctl enable`` makes), and ``systemctl daemon-reload`` when the unit or the link changed. Each file
    is written, atomically, only when its content or mode differs.

    `systemctl`: None finds it where systemd is PID 1 (elsewhere the reload is only reported); "" never
    runs it; a path runs that program."""
    unit = unit_text(lib_dir, python, persist_dir)
    check_path("unit_dir", unit_dir)
    sources = engine_sources()
    result = _result()
    target = engine_dir(lib_dir)
    before, after = [], []
    for filename in ENGINE_FILES:
        path = os.path.join(target, filename)
        if holds(path, sources[filename], FILE_MODE):
            continue
        before.append(f"{filename}: {_digest(path)}\n")
        after.append(f"{filename}: sha256:{hashlib.sha256(sources[filename].encode()).hexdigest()} "
                     f"mode {FILE_MODE:04o}\n")
        result["files"].append(path)
        result["commands"].append(f"write {shell_line([path])} (mode {FILE_MODE:04o})")
        if not check_mode:
            _write(path, sources[filename], result)
    earlier = _earlier(target)
    before += [f"{os.path.relpath(path, target)}: {_digest(path)}\n" for path in earlier]
    after += [f"{os.path.relpath(path, target)}: absent\n" for path in earlier]
    if before:
        result["diff"].append({"before_header": target, "after_header": target,
                               "before": "".join(before), "after": "".join(after)})
    for path in earlier:  # an earlier release's flat copy of the engine, replaced by the packages above
        _remove(path, None, result, check_mode)

    unit_path = os.path.join(unit_dir, UNIT_NAME)
    reload = False
    if not holds(unit_path, unit, FILE_MODE):
        reload = True
        result["diff"].append({"before_header": unit_path, "after_header": unit_path,
                               "before": _text(unit_path), "after": unit})
        result["files"].append(unit_path)
        result["commands"].append(f"write {shell_line([unit_path])} (mode {FILE_MODE:04o})")
        if not check_mode:
            _write(unit_path, unit, result)

    link = os.path.join(unit_dir, WANTS_DIR, UNIT_NAME)
    now = _link(link)
    if now != unit_path:
        if now == "":
            raise BootInstallError(f"podnet.boot_unit: {link} exists and is not a link; podnet-apply cannot be "
                                   "enabled", result)
        reload = True
        result["diff"].append({"before_header": link, "after_header": link,
                               "before": "absent\n" if now is None else f"-> {now}\n", "after": f"-> {unit_path}\n"})
        result["links"].append(link)
        result["commands"].append(shell_line(["ln", "-sfn", unit_path, link]))
        if not check_mode:
            try:
                atomic_symlink(unit_path, link, folder_mode=DIR_MODE)
            except OSError as exc:
                raise BootInstallError(f"podnet.boot_unit: cannot link {link}: {exc}", result) from exc

    result["changed"] = bool(result["files"] or result["links"] or result["removed"])
    if reload:
        _daemon_reload(result, check_mode, systemctl)
    return result


def _earlier(target: str) -> list[str]:
    """What an earlier release's flat copy left at the top of `target` that is still podnet's: the files
    (EARLIER_FILES, by their first line) and their compiled __pycache__ files."""
    found = [os.path.join(target, f) for f in EARLIER_FILES if _legacy(os.path.join(target, f))]
    stems = {f[:-3] for f in EARLIER_FILES}
    return found + _compiled(target, stems)


def _compiled(folder: str, stems: set[str]) -> list[str]:
    """<folder>/__pycache__/<stem>.*.pyc of these stems."""
    cache = os.path.join(folder, "__pycache__")
    try:
        entries = sorted(os.listdir(cache))
    except OSError:
        return []
    return [os.path.join(cache, e) for e in entries if e.endswith(".pyc") and e.split(".", 1)[0] in stems]


def _write(path: str, content: str, result: dict[str, Any]) -> None:
    try:
        atomic_write(path, content, FILE_MODE, folder_mode=DIR_MODE)
    except OSError as exc:
        raise BootInstallError(f"podnet.boot_unit: cannot write {path}: {exc}", result) from exc


# ------------------------------------------------------------------------------------------------ removal

def _legacy(path: str) -> bool:
    """A file an older release copied: podnet's own, by its first line."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline() == LEGACY_HEADER
    except (OSError, ValueError):
        return False


def removal(lib_dir: str, unit_dir: str = UNIT_DIR, check_mode: bool = False,
            systemctl: str | None = None) -> dict[str, Any]:
    """Undo install: the link, the unit (then ``systemctl daemon-reload``), ENGINE_FILES (and what earlier
    releases copied flat, EARLIER_FILES, when podnet's) with their compiled __pycache__/<name>.*.pyc, then the
    package folders under `lib_dir` and `lib_dir` itself when that left them empty. Nothing else is touched:
    any other file keeps its folder."""
    check_path("lib", lib_dir)
    check_path("unit_dir", unit_dir)
    result = _result()
    unit_path = os.path.join(unit_dir, UNIT_NAME)
    link = os.path.join(unit_dir, WANTS_DIR, UNIT_NAME)
    reload = False
    now = _link(link)
    if now:  # a link of that name, wherever it points (systemctl enable's, or an older one of podnet's)
        reload = True
        _remove(link, f"-> {now}\n", result, check_mode)
    if os.path.isfile(unit_path) or os.path.islink(unit_path):
        reload = True
        _remove(unit_path, _text(unit_path), result, check_mode)

    target = engine_dir(lib_dir)
    paths = [os.path.join(target, f) for f in ENGINE_FILES if os.path.lexists(os.path.join(target, f))]
    packages = sorted({os.path.dirname(f) for f in ENGINE_FILES if "/" in f})
    for package in packages:
        stems = {os.path.basename(f)[:-3] for f in ENGINE_FILES if os.path.dirname(f) == package}
        paths += _compiled(os.path.join(target, package), stems)
    paths += _compiled(target, {f[:-3] for f in ENGINE_FILES if "/" not in f}) + _earlier(target)
    if paths:
        result["diff"].append({"before_header": target, "after_header": target,
                               "before": "".join(f"{os.path.relpath(p, target)}: {_digest(p)}\n" for p in paths),
                               "after": "".join(f"{os.path.relpath(p, target)}: absent\n" for p in paths)})
    for path in paths:
        _remove(path, None, result, check_mode)
    # The folders install made, innermost first, each only when nothing but what was removed was in it.
    folders = [os.path.join(target, package, "__pycache__") for package in packages]
    folders += [os.path.join(target, package) for package in packages]
    parts = PACKAGE.split(".")
    folders += [os.path.join(target, "__pycache__"), target]
    folders += [os.path.join(lib_dir, *parts[:depth]) for depth in range(len(parts) - 1, 0, -1)] + [lib_dir]
    for folder in folders:
        try:
            left = [e for e in os.listdir(folder) if os.path.join(folder, e) not in result["removed"]]
        except OSError:
            continue
        if left:
            if folder in (target, lib_dir) or not folder.startswith(target):
                break
            continue  # a package folder that holds something else stays; the others may still go
        if not check_mode:
            try:
                os.rmdir(folder)
            except OSError:  # something appeared meanwhile: it stays, and so does its folder
                break
        result["removed"].append(folder)
        result["commands"].append(shell_line(["rmdir", folder]))

    result["changed"] = bool(result["removed"])
    if reload:
        _daemon_reload(result, check_mode, systemctl)
    return result


def _remove(path: str, before: str | None, result: dict[str, Any], check_mode: bool) -> None:
    if before is not None:
        result["diff"].append({"before_header": path, "after_header": path, "before": before, "after": ""})
    result["removed"].append(path)
    result["commands"].append(shell_line(["rm", "-f", path]))
    if not check_mode:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BootInstallError(f"podnet.boot_unit: cannot remove {path}: {exc}", result) from exc
