"""ansible-test bootstraps pip through podnet's offline get-pip stand-in (scripts/ansible_test_offline.py).

The ansible-test tests start from an empty home, as a new machine has (only the machine's pip
configuration is carried over), seed the stand-in and run a real ``ansible-test sanity`` test, which
builds a virtual environment without pip and must bootstrap it. test_a_broken_bootstrap_fails_ansible_test
breaks the stand-in on purpose and expects ansible-test to fail: the positive test can tell a working
bootstrap from a broken one. The rest check the seeder's rules without running ansible-test.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
SEEDER = SCRIPTS / "ansible_test_offline.py"
BOOTSTRAP = SCRIPTS / "ansible_test_get_pip.py"
COLLECTION = REPO / "collections" / "ansible_collections" / "podnet" / "dataplane"
BIN = Path(sys.executable).parent
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# Where pip reads its per-user configuration (index, certificates): the machine's, kept in the new home.
PIP_CONFIG = (".config/pip", ".pip")
SANITY_TIMEOUT = 900

pytestmark = pytest.mark.skipif(shutil.which("ansible-test", path=str(BIN)) is None,
                                reason="needs ansible-test in this Python's environment (make setup)")


def load_script(path: Path):
    """A script of scripts/ imported as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_seeder():
    return load_script(SEEDER)


def empty_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A new home with only the machine's pip configuration, and the environment that uses it."""
    home = tmp_path / "home"
    home.mkdir()
    real_home = Path(os.path.expanduser("~"))
    for conf in PIP_CONFIG:
        if (real_home / conf).exists():
            (home / conf).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(real_home / conf, home / conf)
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env["HOME"] = str(home)
    return home, env


def seed(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SEEDER), "--python", PYTHON_VERSION, *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def ansible_doc_sanity(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One real sanity test whose virtual environment ansible-test must bootstrap pip into."""
    return subprocess.run([str(BIN / "ansible-test"), "sanity", "--test", "ansible-doc", "--python",
                           PYTHON_VERSION, "--color", "no"], cwd=COLLECTION, env=env, capture_output=True,
                          text=True, timeout=SANITY_TIMEOUT, check=False, stdin=subprocess.DEVNULL)


def test_ansible_test_finds_pip_through_the_bootstrap(tmp_path: Path) -> None:
    home, env = empty_home(tmp_path)
    seeded = seed(env)
    assert seeded.returncode == 0, seeded.stderr
    path = Path(seed(env, "--print-path").stdout.strip())
    assert path.parent == home / ".ansible" / "test" / "cache", path
    assert path.read_text() == BOOTSTRAP.read_text()
    pip_version = load_seeder().pip_version(PYTHON_VERSION)

    run = ansible_doc_sanity(env)

    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert f"Using cached pip {pip_version} bootstrap script: {path}" in output, output
    # the sanity test's requirements went into its virtual environment through the bootstrapped pip
    # (ansible-test takes pip out again afterwards)
    site_packages = sorted((home / ".ansible" / "test" / "venv").glob(
        f"sanity.ansible-doc/{PYTHON_VERSION}/*/lib/python{PYTHON_VERSION}/site-packages"))
    assert site_packages, f"ansible-test built no virtual environment under {home}:\n{output}"
    assert list(site_packages[0].glob("jinja2-*.dist-info")), sorted(p.name for p in site_packages[0].iterdir())


def test_the_bootstrap_installs_the_pinned_pip_and_no_setuptools(tmp_path: Path) -> None:
    """What ansible-test asks of get-pip.py, checked in an environment made as ansible-test makes it."""
    _, env = empty_home(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip_version = load_seeder().pip_version(PYTHON_VERSION)
    run = subprocess.run([str(venv / "bin" / "python"), str(BOOTSTRAP), "--disable-pip-version-check",
                          f"pip=={pip_version}", "--no-setuptools", "--no-wheel"], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
    assert installed.startswith(f"pip {pip_version} "), installed
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import setuptools"], capture_output=True,
                           timeout=60, check=False)
    assert probe.returncode != 0, "setuptools is installed although --no-setuptools was asked"


def test_a_broken_bootstrap_fails_ansible_test(tmp_path: Path) -> None:
    home, env = empty_home(tmp_path)
    assert seed(env).returncode == 0
    path = Path(seed(env, "--print-path").stdout.strip())
    marker = BOOTSTRAP.read_text().splitlines()[0]
    path.write_text(f"{marker}\nimport sys\nsys.exit('bootstrap broken on purpose')\n")

    run = ansible_doc_sanity(env)

    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "does not have pip available" in output, output
    # the seeder mends a file of its own that went wrong
    assert seed(env).returncode == 0
    assert path.read_text() == BOOTSTRAP.read_text()


# --- the seeder's own rules, without running ansible-test ------------------------------------------

REQUIREMENTS_PY = '''
def bootstrap(pip, options):
    pip_version = options['pip_version']
    {assignment}
'''


def test_the_cache_path_is_read_from_the_installed_ansible_test() -> None:
    seeder = load_seeder()
    requirements_py = seeder.ansible_test_root() / "_util" / "target" / "setup" / "requirements.py"
    assert seeder.cache_path_template(requirements_py) == "~/.ansible/test/cache/get_pip_%s.py"


@pytest.mark.parametrize("assignment", [
    "cache_path = os.path.expanduser('~/cache/get-pip-%s.py' % pip_version)",  # name made differently
    "cache_path = os.path.join(CACHE, 'get_pip.py')",  # no version in it
    "path = os.path.expanduser('~/.ansible/test/cache/get_pip_%s.py' % pip_version.replace('.', '_'))",
])
def test_a_changed_ansible_test_stops_the_seeding_with_what_to_do(tmp_path: Path, assignment: str) -> None:
    seeder = load_seeder()
    source = tmp_path / "requirements.py"
    source.write_text(REQUIREMENTS_PY.format(assignment=assignment))
    with pytest.raises(seeder.SeedError, match="adapt scripts/ansible_test_offline.py"):
        seeder.cache_path_template(source)


def test_a_get_pip_script_someone_saved_is_never_overwritten(tmp_path: Path) -> None:
    seeder = load_seeder()
    path = tmp_path / "cache" / "get_pip_24_2.py"
    path.parent.mkdir()
    path.write_text("# the real get-pip.py, saved by hand\n")
    assert seeder.seed(path).startswith("kept ")
    assert path.read_text() == "# the real get-pip.py, saved by hand\n"


def test_the_seeder_writes_and_then_keeps_its_own_file(tmp_path: Path) -> None:
    seeder = load_seeder()
    path = tmp_path / "cache" / "get_pip_24_2.py"
    assert seeder.seed(path) == f"wrote {path}"
    assert path.read_text() == BOOTSTRAP.read_text() and path.stat().st_mode & 0o777 == 0o644
    assert seeder.seed(path) == f"up to date: {path}"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_the_bootstrap_tells_requested_packages_from_options() -> None:
    bootstrap = load_script(BOOTSTRAP)
    args = ["--disable-pip-version-check", "pip==24.2", "setuptools-scm==8"]
    assert bootstrap.requested(args, "pip")
    assert not bootstrap.requested(args, "setuptools")
    assert bootstrap.requested(["setuptools>=70"], "setuptools")
    assert not bootstrap.requested(["--setuptools"], "setuptools")
