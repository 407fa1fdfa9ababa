# podnet: offline get-pip bootstrap for ansible-test (written by scripts/ansible_test_offline.py)
"""Stand-in for ansible-test's downloaded get-pip.py: bootstraps pip without fetching the script.

ansible-test creates each sanity test's virtual environment without pip, then runs its cached
``get_pip_<version>.py`` in that environment's Python with pip's install arguments, e.g.
``--disable-pip-version-check pip==24.2 --no-setuptools --no-wheel``. On machines that reach only a
package index the script itself cannot be downloaded, so this one does the same job from local parts:

1. ``ensurepip`` installs the pip wheel bundled with this Python (no network);
2. that pip installs the requested packages (the exact pip version ansible-test pins) through pip's own
   configuration: ``pip.conf`` files and ``PIP_*`` variables choose the index, the certificates and any
   proxy, as for every other pip run on the machine;
3. ``--no-setuptools``/``--no-wheel`` are honoured as get-pip.py honours them: ensurepip also brings
   setuptools, which is removed again unless it was asked for.

The first line is the marker by which the seeder recognises its own file (and never overwrites
anyone else's).
"""

from __future__ import annotations

import re
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def requested(args: list[str], name: str) -> bool:
    """Whether the install arguments name package `name` (any version spec)."""
    pattern = re.compile(rf"{re.escape(name)}(?:\[[^\]]*\])?(?:[<>=!~;@ ].*)?", re.IGNORECASE)
    return any(pattern.fullmatch(arg) for arg in args if not arg.startswith("-"))


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main(argv: list[str]) -> int:
    install_args = [arg for arg in argv if arg not in GET_PIP_ONLY]
    try:
        subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True,
                       stdout=subprocess.DEVNULL)
        pip("install", "--quiet", *install_args)
        if "--no-setuptools" in argv and not requested(install_args, "setuptools"):
            pip("uninstall", "--yes", "--quiet", "setuptools")
    except subprocess.CalledProcessError as exc:
        print(f"podnet's offline get-pip bootstrap failed: {' '.join(map(str, exc.cmd))} exited "
              f"{exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
