# Copyright: podnet contributors
# Apache License 2.0
"""Every file and link podnet writes on a node goes through here: written atomically and durably, and the
temporary files of a writer that died (SIGKILL, power cut) removed by the next writer of the same file.

A temporary file is named `.<file name>.podnet-tmp-<writer's pid>-<random>.tmp`, beside its file: that full
name is podnet's marker. Only names matching it exactly, whose writer's pid is no running process, are
removed; a live writer's (another run between its write and its rename) and anyone else's are left alone."""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable

TEMP_MARK = "podnet-tmp"


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.{TEMP_MARK}-{os.getpid()}-"


def _temp_pattern(path: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(os.path.basename(path))}\.{TEMP_MARK}-([0-9]+)-[A-Za-z0-9_]+\.tmp")


_ANY_TEMP = re.compile(rf"\..+\.{TEMP_MARK}-([0-9]+)-[A-Za-z0-9_]+\.tmp", re.DOTALL)


def _dead_writer(match: re.Match[str] | None) -> bool:
    if not match or int(match[1]) == os.getpid():
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's process: alive
    return False


def is_stale_temporary(name: str) -> bool:
    """Whether a file name in some folder is a temporary file of podnet's whose writer is dead."""
    return _dead_writer(_ANY_TEMP.fullmatch(name))


def stale_temporaries(path: str) -> list[str]:
    """The temporary files a dead writer of `path` left beside it."""
    folder = os.path.dirname(path) or "."
    pattern = _temp_pattern(path)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(folder, name) for name in sorted(names) if _dead_writer(pattern.fullmatch(name))]


def sweep(path: str) -> list[str]:
    """Remove what stale_temporaries(path) finds; the paths removed."""
    removed = []
    for stale in stale_temporaries(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
            removed.append(stale)
    return removed


def holds(path: str, content: str, mode: int) -> bool:
    """Whether the file at `path` has exactly this content and mode (a missing or unreadable one has not)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read() == content and os.fstat(handle.fileno()).st_mode & 0o7777 == mode
    except (OSError, ValueError):
        return False


def make_folder(folder: str, mode: int) -> bool:
    """Make a missing folder with exactly `mode` (not under the umask); an existing one is left as it is
    (it may be someone else's). Whether it was made."""
    if os.path.isdir(folder):
        return False
    os.makedirs(folder, mode=mode, exist_ok=True)
    os.chmod(folder, mode)
    return True


def atomic_write(path: str, content: str, mode: int, folder_mode: int = 0o700) -> None:
    """Write a file so that a crash at any moment leaves the old one or the new one, never a torn one: a new
    temporary file beside it (O_EXCL: never one that exists, nor a link planted in its place), fsync,
    chmod, rename over the file, fsync of the folder (the rename itself survives a power cut). A missing
    folder is made with folder_mode; a dead writer's temporary files are removed first."""

    def make(temporary: str) -> None:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)

    _put(path, folder_mode, make)


def atomic_symlink(target: str, link: str, folder_mode: int = 0o755) -> None:
    """Make `link` point to `target` atomically: a new link beside it, renamed over the old one."""
    _put(link, folder_mode, lambda temporary: os.symlink(target, temporary))


def _put(path: str, folder_mode: int, make: Callable[[str], None]) -> None:
    """`make` a new temporary file (or link) of podnet's name beside `path` - one that did not exist - and
    rename it over `path`; a failure at any step leaves no temporary file behind."""
    folder = os.path.dirname(path) or "."
    make_folder(folder, folder_mode)
    sweep(path)
    while True:
        temporary = os.path.join(folder, _temp_prefix(path) + os.urandom(6).hex() + ".tmp")
        try:
            make(temporary)
            break
        except FileExistsError:
            continue  # taken: another name
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_folder(folder)


def converge(path: str, content: str, mode: int, folder_mode: int = 0o700, check: bool = False) -> bool:
    """Make the file hold exactly `content` with `mode` (see atomic_write); whether it did not already. A run
    that changes nothing leaves the file as it was (no new mtime, no fsync). Check mode touches nothing."""
    if holds(path, content, mode):
        if not check:
            sweep(path)
        return False
    if not check:
        atomic_write(path, content, mode, folder_mode)
    return True


def remove(path: str) -> bool:
    """Remove the file (and a dead writer's temporary files beside it); whether the file was there."""
    sweep(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def file_mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


def _sync_folder(folder: str) -> None:
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
