#!/usr/bin/env python3
"""Let ``ansible-test sanity`` bootstrap pip on a machine that reaches only a package index.

ansible-test downloads a ``get-pip.py`` script (from a host of its own, not a package index) the first
time it builds a virtual environment, and caches it as ``~/.ansible/test/cache/get_pip_<version>.py``.
This writes podnet's offline stand-in (scripts/ansible_test_get_pip.py) to exactly that path. The pip
version and the path are read from the installed ansible-test, so an ansible-core upgrade that changes
either is followed, and one that changes how they are computed stops here with what to do.

A cache file that does not carry the stand-in's marker (a real get-pip.py someone saved) is never
overwritten. Run with the Python that has ansible-test installed (the Makefile uses the repo's venv):

    .venv/bin/python scripts/ansible_test_offline.py [--python 3.11]
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

BOOTSTRAP = Path(__file__).resolve().with_name("ansible_test_get_pip.py")
# What the cached file name is made of in ansible-test's requirements.py (function `bootstrap`):
#     cache_path = os.path.expanduser('~/.ansible/test/cache/get_pip_%s.py' % pip_version.replace(".", "_"))
CACHE_ASSIGN_TARGET = "cache_path"
CACHE_FORMAT_ARGUMENT = "pip_version.replace('.', '_')"


class SeedError(RuntimeError):
    """ansible-test is missing or computes its bootstrap differently from what this script knows."""


def ansible_test_root() -> Path:
    try:
        import ansible_test
    except ImportError as exc:
        raise SeedError(f"ansible-test is not importable from {sys.executable} ({exc}); "
                        "run this with the Python that runs ansible-test (`make setup` installs it)") from exc
    return Path(ansible_test.__file__).resolve().parent


def pip_version(python_version: str) -> str:
    """The pip version ansible-test bootstraps into a virtual environment for `python_version`."""
    try:
        from ansible_test._internal.python_requirements import get_venv_packages

        return get_venv_packages(SimpleNamespace(version=python_version))["pip"]
    except Exception as exc:  # any change of that private API must stop the seeding, with the reason
        raise SeedError(
            f"cannot read which pip version ansible-test bootstraps ({type(exc).__name__}: {exc}); "
            "ansible-core changed python_requirements.get_venv_packages: adapt scripts/ansible_test_offline.py "
            "or save get-pip.py for that version by hand where ansible-test's error message says"
        ) from exc


def cache_path_template(requirements_py: Path) -> str:
    """The cache file template ('~/.ansible/test/cache/get_pip_%s.py') from ansible-test's own source.

    Read with ``ast`` rather than run: the file is a script for ansible-test's targets, and the path
    is a local variable of its ``bootstrap`` function.
    """
    try:
        tree = ast.parse(requirements_py.read_text(), str(requirements_py))
    except (OSError, SyntaxError) as exc:
        raise SeedError(f"cannot read {requirements_py}: {exc}") from exc
    for func in ast.walk(tree):
        if not (isinstance(func, ast.FunctionDef) and func.name == "bootstrap"):
            continue
        for node in ast.walk(func):
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id == CACHE_ASSIGN_TARGET):
                continue
            call = node.value
            if (isinstance(call, ast.Call) and ast.unparse(call.func) == "os.path.expanduser"
                    and len(call.args) == 1 and isinstance(call.args[0], ast.BinOp)
                    and isinstance(call.args[0].op, ast.Mod)
                    and isinstance(call.args[0].left, ast.Constant) and isinstance(call.args[0].left.value, str)
                    and call.args[0].left.value.count("%s") == 1
                    and ast.unparse(call.args[0].right) == CACHE_FORMAT_ARGUMENT):
                return call.args[0].left.value
            raise SeedError(f"{requirements_py}: {CACHE_ASSIGN_TARGET} is now `{ast.unparse(call)}`, not "
                            f"os.path.expanduser('...%s...' % {CACHE_FORMAT_ARGUMENT}): ansible-test changed "
                            "where it caches get-pip; adapt scripts/ansible_test_offline.py")
    raise SeedError(f"{requirements_py} has no `{CACHE_ASSIGN_TARGET} = ...` in a function `bootstrap`: "
                    "ansible-test changed how it bootstraps pip; adapt scripts/ansible_test_offline.py")


def cache_path(python_version: str) -> Path:
    """Where ansible-test looks for the bootstrap script of the pip it pins for `python_version`."""
    requirements_py = ansible_test_root() / "_util" / "target" / "setup" / "requirements.py"
    template = cache_path_template(requirements_py)
    return Path(os.path.expanduser(template % pip_version(python_version).replace(".", "_")))


def seed(path: Path) -> str:
    """Write the stand-in to `path` unless a file without its marker is there; what was done."""
    wanted = BOOTSTRAP.read_text()
    marker = wanted.splitlines()[0]  # the stand-in's first line: how its own copies are recognised
    if path.exists():
        current = path.read_text(errors="replace")
        if current.splitlines()[:1] != [marker]:
            return f"kept {path}: not written by podnet (a real get-pip script is used as it is)"
        if current == wanted:
            return f"up to date: {path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(wanted)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: a concurrent ansible-test never reads half a file
    except BaseException:
        os.unlink(tmp)
        raise
    return f"wrote {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the --python version given to ansible-test (default: this Python's)")
    parser.add_argument("--print-path", action="store_true", help="only print the cache file's path")
    args = parser.parse_args(argv)
    try:
        path = cache_path(args.python)
        print(path if args.print_path else f"ansible-test pip bootstrap: {seed(path)}")
    except SeedError as exc:
        print(f"ansible_test_offline: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
