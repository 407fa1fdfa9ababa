"""The VXLAN TX checksum offload decision: the kernel-version rule on real `uname -r` strings (no old
kernel runs here), the inventory variable, and how render.yml writes the decision."""
from __future__ import annotations

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.offload import (
    TX_CHECKSUM,
    decide_tx_checksum,
    kernel_version,
    tx_checksum_lines,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.render import RenderError, node_commands
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import PlanError, plan_cluster

# Releases as distributions ship them; False: the SNAT + VXLAN checksum bug is there (before 5.7).
RELEASES = {
    "3.10.0-1160.119.1.el7.x86_64": False,  # CentOS 7
    "4.15.0-213-generic": False,  # Ubuntu 18.04
    "4.18.0-553.el8_10.x86_64": False,  # RHEL 8 (the version rule, not backports, decides)
    "4.19.0-26-amd64": False,  # Debian 10
    "5.4.0-150-generic": False,  # Ubuntu 20.04
    "5.6.19-300.fc32.x86_64": False,  # the last release with the bug
    "5.7.0-rc1": True,  # the first with the fix, as a release candidate
    "5.7.0": True,
    "5.10.0-32-cloud-amd64": True,  # Debian 11
    "5.14.0-427.13.1.el9_4.x86_64": True,  # RHEL 9
    "5.15.0-1034-azure": True,
    "6.1.0-28-amd64": True,  # Debian 12
    "6.8.0-45-generic": True,  # Ubuntu 24.04
    "6.18.44-fc-v669": True,  # this machine's kind
    "10.0.0": True,  # 10 > 5 as numbers, not as strings
}


@pytest.mark.parametrize(("release", "enabled"), sorted(RELEASES.items()), ids=sorted(RELEASES))
def test_auto_follows_the_kernel_version(release, enabled):
    decision = decide_tx_checksum("auto", release)
    assert decision.enabled is enabled
    assert (decision.mode, decision.kernel) == ("auto", release)
    assert release in decision.reason and ("older than 5.7" in decision.reason) is not enabled


@pytest.mark.parametrize("release", ["", "linux", "5", "v5.10", "5.10 ", "5.10\n# injected", "5.10;reboot",
                                     "6.1.0-28-amd64\nrm -rf /", None])
def test_an_unreadable_release_counts_as_old(release):
    assert kernel_version(release) is None
    decision = decide_tx_checksum("auto", release)
    assert decision.enabled is False and "not understood" in decision.reason


@pytest.mark.parametrize("release", ["4.19.0-26-amd64", "6.1.0-28-amd64", "garbage"])
def test_on_and_off_are_forced_on_any_kernel(release):
    assert decide_tx_checksum("on", release).enabled is True
    assert decide_tx_checksum("off", release).enabled is False
    assert decide_tx_checksum("off", release).reason == "forced off"


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="not one of auto, on, off"):
        decide_tx_checksum("yes", "6.1.0")


def test_lines_give_the_rule_the_reason_and_the_command():
    lines = tx_checksum_lines("flannel.1", decide_tx_checksum("auto", "5.4.0-150-generic"))
    assert lines[0].startswith("# flannel.1 tx-checksum-ip-generic is decided per node (auto)")
    assert lines[1] == ("# flannel.1 tx-checksum-ip-generic: auto: kernel 5.4.0-150-generic is older than 5.7 "
                        "(VXLAN + SNAT checksum bug): off")
    assert lines[2] == f"ethtool -K flannel.1 {TX_CHECKSUM} off"
    assert tx_checksum_lines("vxlan.calico", decide_tx_checksum("on", "4.19.0")) == [
        f"# vxlan.calico {TX_CHECKSUM}: forced on", f"ethtool -K vxlan.calico {TX_CHECKSUM} on"]


HOSTS = {"a": {"podnet_node_ip": "192.168.0.4"}, "b": {"podnet_node_ip": "192.168.0.16"}}


def planned(backend: str = "flannel-vxlan", **a_vars) -> dict:
    hostvars = {"a": dict(HOSTS["a"], podnet_backend=backend, **a_vars),
                "b": dict(HOSTS["b"], podnet_backend=backend)}
    return plan_cluster(["a", "b"], hostvars)["nodes"]


@pytest.mark.parametrize(("value", "mode"), [(None, "auto"), ("", "auto"), ("auto", "auto"), ("on", "on"),
                                             ("off", "off"), (True, "on"), (False, "off"), ("yes", "on")])
def test_the_inventory_variable_is_per_node(value, mode):
    nodes = planned(podnet_vxlan_tx_checksum_offload=value)
    assert nodes["a"]["vtep"]["tx_checksum_offload"] == mode
    assert nodes["b"]["vtep"]["tx_checksum_offload"] == "auto"  # b did not set it


@pytest.mark.parametrize("value", ["Auto", "disabled", 0, ["off"], "off; reboot"])
def test_a_bad_inventory_value_names_host_and_variable(value):
    with pytest.raises(PlanError) as info:
        planned(podnet_vxlan_tx_checksum_offload=value)
    assert [p for p in info.value.problems if p.startswith("host a: podnet_vxlan_tx_checksum_offload:")
            and "must be auto, on or off" in p], info.value.problems


@pytest.mark.parametrize(("backend", "device"), [("flannel-vxlan", "flannel.1"), ("calico-vxlan", "vxlan.calico"),
                                                 ("canal", "flannel.1"), ("weave-style", "vxlan-6784")])
def test_render_writes_the_decision_for_the_given_kernel(backend, device):
    node = planned(backend)["a"]
    modern = node_commands(node)  # default: Debian 12's 6.1
    assert f"ethtool -K {device} {TX_CHECKSUM} on" in modern
    assert any(line.startswith(f"# {device} {TX_CHECKSUM}: auto: kernel 6.1 is 5.7 or newer") for line in modern)
    old = node_commands(node, "5.4.0-150-generic")
    assert f"ethtool -K {device} {TX_CHECKSUM} off" in old and f"ethtool -K {device} {TX_CHECKSUM} on" not in old
    # the command comes after the device exists
    assert old.index(f"ethtool -K {device} {TX_CHECKSUM} off") > next(
        i for i, line in enumerate(old) if line.startswith(f"ip link add {device} "))


def test_render_writes_a_forced_value_whatever_the_kernel():
    node = planned(podnet_vxlan_tx_checksum_offload="off")["a"]
    for kernel in ("", "6.8.0-45-generic", "4.19.0-26-amd64"):
        lines = node_commands(node, kernel)
        assert f"ethtool -K flannel.1 {TX_CHECKSUM} off" in lines
        assert f"# flannel.1 {TX_CHECKSUM}: forced off" in lines
        assert not any("decided per node" in line for line in lines)


@pytest.mark.parametrize("backend", ["flannel-host-gw", "calico-bgp", "calico-ipip", "romana-style"])
def test_render_writes_no_offload_without_a_vxlan_device(backend):
    assert not any("ethtool" in line or TX_CHECKSUM in line for line in node_commands(planned(backend)["a"]))


@pytest.mark.parametrize("kernel", ["latest", "5", "6.1\nreboot", "6.1.0; rm -rf /"])
def test_render_refuses_a_kernel_that_is_not_a_release(kernel):
    with pytest.raises(RenderError, match="podnet_render_kernel: .* is not a kernel release"):
        node_commands(planned()["a"], kernel)


@pytest.mark.parametrize(("value", "mode"), [(False, "off"), (True, "on"), ("off", "off"), ("auto", "auto")])
def test_the_module_option_takes_yaml_booleans_and_the_old_bool_values(value, mode):
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.podnet.dataplane.plugins.module_utils.resources.vxlan_fdb_resource import (
        ARGUMENT_SPEC,
    )

    checked = ArgumentSpecValidator(ARGUMENT_SPEC).validate({"name": "flannel.1", "tx_checksum_offload": value})
    assert checked.error_messages == [] and checked.validated_parameters["tx_checksum_offload"] == mode
    assert ArgumentSpecValidator(ARGUMENT_SPEC).validate({"name": "flannel.1"}).validated_parameters[
        "tx_checksum_offload"] == "auto"
    assert ArgumentSpecValidator(ARGUMENT_SPEC).validate(
        {"name": "flannel.1", "tx_checksum_offload": "yes"}).error_messages
