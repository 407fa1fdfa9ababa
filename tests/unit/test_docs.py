"""Every plugin's DOCUMENTATION/EXAMPLES/RETURN parses, as ansible-doc reads it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.podnet.dataplane.plugins.filter.podnet import FilterModule

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "collections/ansible_collections/podnet"
# Every filter FilterModule exposes, so a new filter without its plugins/filter/<name>.yml fails here.
FILTERS = sorted(FilterModule().filters())
DOCUMENTED = [("module", f"{c}.{p.stem}") for c in ("dataplane", "lab")
              for p in sorted((COLLECTIONS / c / "plugins" / "modules").glob("*.py"))] + [
    ("connection", "lab.netns"), ("lookup", "dataplane.run_owner")] + [("filter", f"dataplane.{name}")
                                                                       for name in FILTERS]


@pytest.mark.parametrize(("kind", "name"), DOCUMENTED, ids=[f"{k}:{n}" for k, n in DOCUMENTED])
def test_plugin_documentation_parses(kind, name):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    doc = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-t", kind, "--json",
                          f"podnet.{name}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0, doc.stderr
    data = json.loads(doc.stdout)[f"podnet.{name}"]
    assert data["doc"]["short_description"] and data["doc"]["description"]
    if kind in ("module", "filter"):
        assert data["examples"] and yaml.safe_load(data["examples"])
    if kind == "module":
        assert data["doc"].get("options") is not None
        assert isinstance(data["return"], dict)
    if kind == "filter":
        assert data["doc"]["version_added"] == "0.1.0"
        assert "_value" in data["return"]
