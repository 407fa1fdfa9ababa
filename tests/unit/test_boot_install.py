"""boot_install: the boot restore (engine copy, podnet-apply unit, its link) installed from the running code
into temporary folders only - written when it differs, exactly reported in check mode, removed without
touching anything else; and the engine's file list proved complete and minimal."""
from __future__ import annotations

import ast
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.node import boot_install
from ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_install import (
    EARLIER_FILES,
    ENGINE_FILES,
    ENGINE_MAIN,
    PACKAGE,
    UNIT_NAME,
    WANTS_DIR,
    BootInstallError,
    engine_dir,
    install,
    removal,
    systemd_word,
    unit_text,
)

REPO = Path(__file__).resolve().parents[2]
MODULE_UTILS = REPO / "collections/ansible_collections/podnet/dataplane/plugins/module_utils"
PYTHON = "/usr/bin/python3"


@pytest.fixture
def node(tmp_path: Path) -> dict[str, str]:
    return {"lib_dir": str(tmp_path / "lib"), "unit_dir": str(tmp_path / "units"),
            "persist_dir": str(tmp_path / "state")}


def put(node: dict[str, str], check_mode: bool = False, systemctl: str | None = "") -> dict:
    return install(node["lib_dir"], PYTHON, node["persist_dir"], node["unit_dir"], check_mode, systemctl=systemctl)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with what a write would change (inode, mtime, mode, link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path)] = (st.st_ino, st.st_mtime_ns, st.st_mode, os.readlink(path) if path.is_symlink() else None)
    return out


def test_install_writes_the_engine_the_unit_and_its_link(node, tmp_path):
    result = put(node)
    target = Path(engine_dir(node["lib_dir"]))
    unit = Path(node["unit_dir"]) / UNIT_NAME
    link = Path(node["unit_dir"]) / WANTS_DIR / UNIT_NAME
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == sorted(ENGINE_FILES)
    for name in ENGINE_FILES:
        assert (target / name).read_bytes() == (MODULE_UTILS / name).read_bytes(), name
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o644
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert unit.read_text() == unit_text(node["lib_dir"], PYTHON, node["persist_dir"])
    assert os.readlink(link) == str(unit)
    assert result["changed"] and result["files"] == [str(target / n) for n in ENGINE_FILES] + [str(unit)]
    assert result["links"] == [str(link)] and result["removed"] == []
    assert result["commands"][-2:] == [f"ln -sfn {unit} {link}", "systemctl daemon-reload"]
    assert result["ran"] == [] and result["notes"] == ["did not run systemctl daemon-reload: asked not to run systemctl"]


def test_a_second_run_changes_nothing_and_touches_nothing(node, tmp_path):
    put(node)
    before = snapshot(tmp_path)
    again = put(node)
    assert not again["changed"] and again["files"] == again["links"] == again["commands"] == again["diff"] == []
    assert snapshot(tmp_path) == before


def test_a_changed_or_widened_file_is_rewritten_and_only_it(node, tmp_path):
    put(node)
    target = Path(engine_dir(node["lib_dir"]))
    shell, objects = target / "kernel" / "shell.py", target / "kernel" / "objects.py"
    shell.write_text("# edited\n")
    objects.chmod(0o666)
    before = snapshot(tmp_path)
    result = put(node)
    assert result["changed"] and result["files"] == [str(objects), str(shell)]
    assert result["commands"] == [f"write {objects} (mode 0644)", f"write {shell} (mode 0644)"]
    assert shell.read_bytes() == (MODULE_UTILS / "kernel" / "shell.py").read_bytes()
    assert stat.S_IMODE(objects.stat().st_mode) == 0o644
    after = snapshot(tmp_path)
    changed = {p for p in after if after[p] != before.get(p)} - {str(target / "kernel")}  # (a rename: new mtime)
    assert changed == {str(objects), str(shell)}
    assert "systemctl daemon-reload" not in result["commands"]  # the unit did not change


def test_a_changed_unit_is_rewritten_and_reloaded(node, tmp_path):
    put(node)
    unit = Path(node["unit_dir"]) / UNIT_NAME
    result = install(node["lib_dir"], "/usr/bin/python3.11", node["persist_dir"], node["unit_dir"], systemctl="")
    assert result["files"] == [str(unit)] and result["commands"][-1] == "systemctl daemon-reload"
    assert "ExecStart=/usr/bin/python3.11 -m " in unit.read_text()
    assert result["diff"][0]["before"] == unit_text(node["lib_dir"], PYTHON, node["persist_dir"])
    assert result["diff"][0]["after"] == unit.read_text()


def test_check_mode_writes_nothing_and_reports_exactly_what_a_run_does(node, tmp_path):
    (tmp_path / "units").mkdir()
    before = snapshot(tmp_path)
    check = put(node, check_mode=True)
    assert snapshot(tmp_path) == before
    real = put(node)
    assert {k: v for k, v in check.items() if k not in ("notes",)} == {k: v for k, v in real.items() if k != "notes"}
    assert check["notes"] == []  # check mode runs nothing: the reload is only in commands
    # and after a change: check mode names exactly the file a run rewrites
    target = Path(engine_dir(node["lib_dir"]))
    (target / "kernel" / "netlink.py").write_text("x = 1\n")
    before = snapshot(tmp_path)
    check = put(node, check_mode=True)
    assert snapshot(tmp_path) == before
    assert check["changed"] and check["files"] == [str(target / "kernel" / "netlink.py")]
    assert check["diff"][0]["before"].startswith("kernel/netlink.py: sha256:")
    assert put(node)["files"] == check["files"]


def test_install_over_an_earlier_flat_copy_removes_podnets_files_of_it(node, tmp_path):
    """Earlier releases copied the engine flat into module_utils: what of that copy is podnet's goes (with its
    compiled files), what is not stays; check mode reports exactly that."""
    target = Path(engine_dir(node["lib_dir"]))
    (target / "__pycache__").mkdir(parents=True)
    earlier = [target / name for name in ("netlink.py", "boot_apply.py", "persist.py")]
    for path in earlier:
        path.write_text("# Copyright: podnet contributors\n# Apache License 2.0\n")
    compiled = target / "__pycache__" / "netlink.cpython-311.pyc"
    compiled.write_bytes(b"pyc")
    theirs = [target / "offload.py", target / "mine.py", target / "__pycache__" / "mine.cpython-311.pyc"]
    for path in theirs:
        path.write_text("someone else's\n")
    before = snapshot(tmp_path)
    check = put(node, check_mode=True)
    assert snapshot(tmp_path) == before
    result = put(node)
    assert sorted(result["removed"]) == sorted(map(str, [*earlier, compiled])) == sorted(check["removed"])
    assert all(not p.exists() for p in [*earlier, compiled]) and all(p.read_text() == "someone else's\n" for p in theirs)
    assert "netlink.py: sha256:" in result["diff"][0]["before"] and "netlink.py: absent" in result["diff"][0]["after"]
    assert not put(node)["changed"]


def test_systemctl_runs_daemon_reload_only_when_the_unit_or_link_changes(node, tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    first = put(node, systemctl=str(fake))
    assert first["ran"] == [f"{fake} daemon-reload"] and calls.read_text() == "daemon-reload\n"
    assert put(node, systemctl=str(fake))["ran"] == []
    (Path(node["unit_dir"]) / WANTS_DIR / UNIT_NAME).unlink()  # disabled by hand: enabled again, reloaded
    again = put(node, systemctl=str(fake))
    assert again["links"] and again["ran"] and calls.read_text() == "daemon-reload\n" * 2
    fake.write_text("#!/bin/sh\necho no bus >&2\nexit 1\n")
    (Path(node["unit_dir"]) / UNIT_NAME).write_text("old\n")
    with pytest.raises(BootInstallError, match="daemon-reload failed .exit 1.: no bus") as info:
        put(node, systemctl=str(fake))
    assert info.value.result["files"] == [str(Path(node["unit_dir"]) / UNIT_NAME)]


def test_auto_detection_runs_no_systemctl_where_systemd_is_not_pid1(node, monkeypatch):
    monkeypatch.setattr(boot_install, "systemd_runs_node", lambda: False)
    result = put(node, systemctl=None)
    assert result["ran"] == [] and result["notes"] == [
        "did not run systemctl daemon-reload: systemd is not PID 1 here"]


def test_a_file_where_the_link_goes_is_refused(node):
    wants = Path(node["unit_dir"]) / WANTS_DIR
    wants.mkdir(parents=True)
    (wants / UNIT_NAME).write_text("not a link\n")
    with pytest.raises(BootInstallError, match="exists and is not a link"):
        put(node)
    assert (wants / UNIT_NAME).read_text() == "not a link\n"


def test_removal_removes_only_what_install_made(node, tmp_path):
    put(node)
    target = Path(engine_dir(node["lib_dir"]))
    wants = Path(node["unit_dir"]) / WANTS_DIR
    foreign = [target / "mine.py", target / "__pycache__" / "mine.cpython-311.pyc", wants / "other.service",
               Path(node["unit_dir"]) / "other.service", target / EARLIER_FILES[0]]
    (target / "__pycache__").mkdir()
    (target / "kernel" / "__pycache__").mkdir()
    (target / "kernel" / "__pycache__" / "shell.cpython-311.pyc").write_bytes(b"pyc")
    for path in foreign:
        path.write_text("someone else's\n")
    legacy = target / "node_apply.py"  # an older boot role's copy of a file the engine no longer needs
    legacy.write_text("# Copyright: podnet contributors\n# Apache License 2.0\n")
    state = Path(node["persist_dir"])
    state.mkdir()
    (state / "pod_route.json").write_text("{}")
    before = snapshot(tmp_path)
    check = removal(node["lib_dir"], node["unit_dir"], check_mode=True, systemctl="")
    assert snapshot(tmp_path) == before
    result = removal(node["lib_dir"], node["unit_dir"], systemctl="")
    assert check == dict(result, notes=[])
    gone = {str(target / n) for n in ENGINE_FILES} | {str(legacy), str(target / "kernel/__pycache__/shell.cpython-311.pyc"),
                                                      str(wants / UNIT_NAME), str(Path(node["unit_dir"]) / UNIT_NAME)}
    gone |= {str(target / "kernel" / "__pycache__")} | {str(target / package) for package in ("kernel", "node", "plan")}
    assert set(result["removed"]) == gone and set(before) - set(snapshot(tmp_path)) == gone
    assert all(path.read_text() == "someone else's\n" for path in foreign)
    assert (state / "pod_route.json").exists()
    assert result["commands"][-1] == "systemctl daemon-reload" and result["changed"]
    again = removal(node["lib_dir"], node["unit_dir"], systemctl="")
    assert not again["changed"] and again["commands"] == []


def test_removal_of_a_lone_install_leaves_no_folder_of_it(node, tmp_path):
    put(node)
    subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                    f"import {ENGINE_MAIN}", node["lib_dir"]], check=True)  # as the unit does: __pycache__
    assert any(Path(engine_dir(node["lib_dir"]), "__pycache__").iterdir())
    result = removal(node["lib_dir"], node["unit_dir"], systemctl="")
    assert not Path(node["lib_dir"]).exists()
    assert result["removed"][-1] == node["lib_dir"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["units", f"units/{WANTS_DIR}"]


# -------------------------------------------------------------------------------------------- the unit text

def test_the_unit_is_what_the_boot_roles_template_wrote():
    assert unit_text("/usr/local/lib/podnet", "/usr/bin/python3", "/var/lib/podnet/state") == """\
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
Environment=PYTHONPATH=/usr/local/lib/podnet
ExecStart=/usr/bin/python3 -m ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply /var/lib/podnet/state

[Install]
WantedBy=multi-user.target
"""


@pytest.mark.parametrize(("word", "variables", "written"), [
    ("/var/lib/podnet/state", True, "/var/lib/podnet/state"),
    ("/a b", True, '"/a b"'),
    ("/50%", True, "/50%%"),
    ("/$HOME", True, "/$$HOME"),
    ("/$HOME", False, "/$HOME"),
    ('/say "hi"\\', True, '"/say \\"hi\\"\\\\"'),
    ("/it's", True, '"/it\'s"'),
    ("/a;b", True, '"/a;b"'),
])
def test_systemd_quoting(word, variables, written):
    assert systemd_word(word, variables) == written


def test_paths_that_systemd_would_misread_are_quoted_or_refused():
    text = unit_text("/opt/pod net", "/usr/bin/python3", "/var/lib/%h/$state")
    assert 'Environment="PYTHONPATH=/opt/pod net"\n' in text
    assert text.endswith("boot_apply /var/lib/%%h/$$state\n\n[Install]\nWantedBy=multi-user.target\n")
    for bad in ({"python": "python3"}, {"persist_dir": "/etc/podnet/state\nExecStartPre=/bin/sh"},
                {"lib_dir": "/usr/lib\x00"}, {"python": "/opt/$py/python3"}):
        args = {"lib_dir": "/usr/local/lib/podnet", "python": "/usr/bin/python3", "persist_dir": "/state", **bad}
        with pytest.raises(BootInstallError):
            unit_text(**args)


# ----------------------------------------------------------------------------------- the engine's file list

def podnet_imports(path: Path) -> set[str]:
    """The module_utils files a file imports (anywhere in it, functions included), as paths under module_utils
    ("kernel/netlink.py"), with the __init__.py of each package on the way."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module + ".").startswith(PACKAGE + "."):
            base = node.module[len(PACKAGE):].lstrip(".")
            modules.add(base)
            modules |= {f"{base}.{alias.name}".lstrip(".") for alias in node.names}  # names may be modules
        elif isinstance(node, ast.Import):
            modules |= {a.name[len(PACKAGE) + 1:] for a in node.names if a.name.startswith(PACKAGE + ".")}
    out = set()
    for module in modules:
        parts = module.split(".") if module else []
        for depth in range(len(parts) + 1):
            init = "/".join([*parts[:depth], "__init__.py"])
            if (MODULE_UTILS / init).exists():
                out.add(init)
        if parts and (MODULE_UTILS / ("/".join(parts) + ".py")).exists():
            out.add("/".join(parts) + ".py")
    return out


def run_engine(lib: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """boot_apply run as the unit runs it, but isolated (-I -S: no site-packages, no user site, no
    environment), from `lib` alone."""
    code = ("import sys, runpy; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[1:]; "
            f"runpy.run_module({ENGINE_MAIN!r}, run_name='__main__', alter_sys=True)")
    return subprocess.run([sys.executable, "-I", "-S", "-c", code, str(lib), *args], capture_output=True, text=True,
                          timeout=60, cwd=str(lib))


def copy_engine(lib: Path, files) -> None:
    target = Path(engine_dir(str(lib)))
    target.mkdir(parents=True)
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(MODULE_UTILS / name, target / name)


def test_the_list_is_the_closure_of_boot_apply_imports():
    closure, todo = set(), ["node/boot_apply.py"]
    while todo:
        name = todo.pop()
        if name not in closure:
            closure.add(name)
            todo += podnet_imports(MODULE_UTILS / name)
    assert sorted(ENGINE_FILES) == sorted(closure)
    # all but the files newer than the flat layout were flat once
    newer = {"__init__.py", "wireguard_keys.py"}
    assert {os.path.basename(f) for f in ENGINE_FILES if "/" in f} - set(EARLIER_FILES) == newer


def test_boot_apply_runs_from_a_copy_of_only_the_listed_files(tmp_path):
    copy_engine(tmp_path / "lib", ENGINE_FILES)
    done = run_engine(tmp_path / "lib", "--check", str(tmp_path / "state"))
    assert done.returncode == 0 and "nothing to restore" in done.stdout, done.stdout + done.stderr
    (tmp_path / "state").mkdir()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import " + ENGINE_MAIN + "; "
            "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('ansible_collections.')"
            " and getattr(m, '__file__', None))))")
    loaded = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(tmp_path / "lib")], capture_output=True,
                            text=True, timeout=60, check=True).stdout.split()
    target = engine_dir(str(tmp_path / "lib"))
    assert sorted(loaded) == sorted(os.path.join(target, n) for n in ENGINE_FILES)  # every file, all from here


# (Without a package's __init__.py it would still import, as a namespace package: the __init__.py files are
# there to keep it a regular one.)
@pytest.mark.parametrize("missing", [n for n in ENGINE_FILES if not n.endswith(("__init__.py", "boot_apply.py"))])
def test_no_listed_file_is_unneeded(tmp_path, missing):
    copy_engine(tmp_path / "lib", [n for n in ENGINE_FILES if n != missing])
    done = run_engine(tmp_path / "lib", "--check", str(tmp_path / "state"))
    # ModuleNotFoundError for `import package.name`, ImportError for `from package import name`
    assert done.returncode != 0 and missing[:-3].replace("/", ".") in done.stderr.splitlines()[-1], done.stderr
    assert done.stderr.splitlines()[-1].startswith(("ModuleNotFoundError", "ImportError")), done.stderr


def test_the_sources_come_from_the_running_packages_loader():
    sources = boot_install.engine_sources()
    assert list(sources) == list(ENGINE_FILES)
    assert all(sources[n] == (MODULE_UTILS / n).read_text() for n in ENGINE_FILES)
