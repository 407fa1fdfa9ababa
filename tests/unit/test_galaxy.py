"""The collection builds as a Galaxy artifact that installs and is usable by FQCN on its own."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def build_and_install(tmp_path: Path, collections: tuple[str, ...] = ("dataplane",)) -> tuple[Path, dict[str, str]]:
    """Build the artifacts of `collections` (podnet.<name>) into tmp_path and install them under
    tmp_path/installed, as a user would: outside the repo, whose ansible.cfg already points at the source
    tree. Returns podnet.dataplane's artifact and an environment that finds the installed collections only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    target = tmp_path / "installed"
    for name in collections:
        build = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path),
                                str(REPO / f"collections/ansible_collections/podnet/{name}")],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stdout + build.stderr
        (built,) = tmp_path.glob(f"podnet-{name}-*.tar.gz")
        install = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--force", "-p",
                                  str(target), str(built)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=300)
        assert install.returncode == 0, install.stdout + install.stderr
    (artifact,) = tmp_path.glob("podnet-dataplane-*.tar.gz")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(target)
    env["ANSIBLE_ROLES_PATH"] = str(tmp_path / "no-roles")  # FQCN roles from the collection, nothing else
    return artifact, env


def test_galaxy_artifact_builds_installs_and_resolves(tmp_path):
    artifact, env = build_and_install(tmp_path)
    names = tarfile.open(artifact).getnames()
    assert "plugins/modules/vxlan_fdb.py" in names and "plugins/module_utils/kernel/netlink.py" in names
    assert "meta/runtime.yml" in names and "MANIFEST.json" in names
    for role in ("plan", "node", "flannel", "calico", "policy", "boot"):
        assert f"roles/{role}/tasks/main.yml" in names and f"roles/{role}/meta/argument_specs.yml" in names
    # the namespace lab is podnet.lab's, not the product's
    assert not [name for name in names if name.startswith("plugins/") and "netns" in name], names
    doc = subprocess.run([str(BIN / "ansible-doc"), "podnet.dataplane.vxlan_fdb"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0 and "VXLAN" in doc.stdout, doc.stderr
    role_doc = subprocess.run([str(BIN / "ansible-doc"), "-t", "role", "podnet.dataplane.flannel"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
    assert role_doc.returncode == 0 and "flannel" in role_doc.stdout, role_doc.stderr


def test_requires_ansible_is_the_tested_range():
    """meta/runtime.yml declares exactly the ansible-core range pyproject.toml installs for the tests."""
    import tomllib

    import ansible
    import yaml
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    declared = {collection: SpecifierSet(yaml.safe_load(
        (REPO / f"collections/ansible_collections/podnet/{collection}/meta/runtime.yml").read_text())["requires_ansible"])
        for collection in ("dataplane", "lab")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (tested,) = [Requirement(r).specifier for r in project["dependencies"] if Requirement(r).name == "ansible-core"]

    def bounds(specifiers: SpecifierSet) -> set[tuple[str, Version]]:
        return {(s.operator, Version(s.version)) for s in specifiers}  # 2.19 and 2.19.0 are one version

    for specifiers in declared.values():
        assert bounds(specifiers) == bounds(tested)
        assert ansible.__version__ in specifiers
