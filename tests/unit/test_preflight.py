"""What preflight reports: the read-only facts for cleanup gates (they must err towards 'present'), and
the node IP check, which its action plugin makes from `ip -j -d address show` and the module
from a netlink dump (both through module_utils/plan/underlay.py)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.plan import underlay
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


IP_JSON = json.dumps([
    {"ifindex": 1, "ifname": "lo", "mtu": 65536, "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
    {},  # iproute2 prints this for a link it cannot describe
    {"ifindex": 2, "ifname": "eth0", "mtu": 1400,
     "addr_info": [{"family": "inet", "local": "172.30.0.11", "prefixlen": 24},
                   {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
    {"ifindex": 3, "ifname": "flannel.1", "mtu": 1350, "ifalias": "podnet", "addr_info": []},
])


def test_node_ip_check_from_ip_json() -> None:
    interfaces = underlay.interfaces_from_ip_json(IP_JSON)
    assert [i.name for i in interfaces] == ["lo", "eth0", "flannel.1"]
    assert underlay.look(interfaces, "172.30.0.11/24", None) == {
        "underlay_interface": "eth0", "underlay_mtu": 1400,
        "links": ["eth0", "flannel.1", "lo"], "owned_links": ["flannel.1"]}
    assert underlay.look(interfaces, "172.30.0.11", "eth0")["underlay_mtu"] == 1400


@pytest.mark.parametrize(("node_ip", "named", "message"), [
    ("172.30.0.99", None, "podnet_node_ip 172.30.0.99 is not configured on any interface of this node"),
    ("172.30.0.11", "lo", "podnet_underlay_interface lo does not hold podnet_node_ip 172.30.0.11 (it is on eth0)"),
])
def test_node_ip_check_names_the_problem(node_ip: str, named: str | None, message: str) -> None:
    with pytest.raises(underlay.UnderlayProblem, match=re.escape(message)):
        underlay.look(underlay.interfaces_from_ip_json(IP_JSON), node_ip, named)


@pytest.mark.parametrize("text", ["", "not json", '{"ifname": "eth0"}', '[{"mtu": 1500}]'])
def test_anything_but_ip_json_is_refused(text: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        underlay.interfaces_from_ip_json(text)
