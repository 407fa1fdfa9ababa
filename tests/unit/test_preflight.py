"""The read-only facts preflight gives the roles' cleanup gates: they must err towards 'present'."""

from __future__ import annotations

import hashlib

from ansible_collections.podnet.dataplane.plugins.modules import preflight


def test_describe_path_of_a_file_a_directory_and_nothing(tmp_path):
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_MTU=1450\n")
    env.chmod(0o644)
    assert preflight.describe_path(str(env)) == {
        "exists": True, "isdir": False, "mode": "0644",
        "checksum": hashlib.sha1(b"FLANNEL_MTU=1450\n").hexdigest()}  # noqa: S324
    tmp_path.chmod(0o755)
    assert preflight.describe_path(str(tmp_path)) == {"exists": True, "isdir": True, "mode": "0755",
                                                      "checksum": None}
    assert preflight.describe_path(str(tmp_path / "missing"))["exists"] is False


def test_persisted_records(tmp_path):
    assert preflight.persisted_records(None) == []
    assert preflight.persisted_records(str(tmp_path / "missing")) == []
    for name in ("vxlan_fdb-flannel.1.json", "pod_route.json", "pod_route.json.tmp"):
        (tmp_path / name).write_text("{}")
    assert preflight.persisted_records(str(tmp_path)) == ["pod_route", "vxlan_fdb-flannel.1"]
