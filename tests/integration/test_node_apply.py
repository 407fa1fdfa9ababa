"""podnet.dataplane.node_apply, the one module run per node the backend roles make: a failing step
stops that node with the step's own module message, leaves the device it refused alone, and the other
nodes still converge (the flannel/calico test files cover the converged state itself)."""

from __future__ import annotations

import pytest

from .labkit import Lab

pytestmark = pytest.mark.integration


def link(lab: Lab, host: str, name: str) -> dict | None:
    return next((dev for dev in lab.json(host, "-d", "link", "show") if dev["ifname"] == name), None)


def test_a_failing_step_stops_its_node_with_the_modules_message(lab: Lab) -> None:
    lab.exec("node1", ["ip", "link", "add", "flannel.1", "type", "bridge"], check=True)

    result = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})

    assert result.rc != 0
    assert result.failed("node1") == 1 and result.failed("node2") == 0 and result.failed("node3") == 0
    assert ("podnet.vxlan_fdb: device flannel.1 exists but is a bridge device, not VXLAN" in result.output)
    assert "step: VXLAN endpoint and static peers" in result.output
    assert link(lab, "node1", "flannel.1")["linkinfo"]["info_kind"] == "bridge"
    for host in ("node2", "node3"):
        vtep = link(lab, host, "flannel.1")
        assert vtep["linkinfo"]["info_kind"] == "vxlan" and vtep["linkinfo"]["info_data"]["id"] == 1
        assert len(lab.json(host, "route", "show", "proto", "152")) == 2

    lab.exec("node1", ["ip", "link", "del", "flannel.1"], check=True)
    again = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert again.rc == 0, again.output
    assert again.changed("node1") > 0 and again.changed("node2") == 0 and again.changed("node3") == 0
    assert link(lab, "node1", "flannel.1")["linkinfo"]["info_kind"] == "vxlan"
