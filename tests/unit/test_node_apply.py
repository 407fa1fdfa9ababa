"""node_apply's own parts that need no kernel: the subnet.env file step, the BIRD cleanup, the boot records'
removal, the policy step's skip where no iptables exists, step argument checking, the pods' MTU choice and the result summary (tests/integration/test_node_apply.py and the backend tests run
the whole module against namespace labs)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.node import node_apply
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_apply import (
    NodeRun,
    StepFailed,
    StepModule,
    converge_file,
    summary,
)


class FakeParent:
    """The parts of AnsibleModule that node_apply's file step and StepModule use."""

    def __init__(self, check_mode: bool = False, binaries: dict[str, str] | None = None):
        self.check_mode = check_mode
        self.params = {"persist_dir": None}
        self.binaries = binaries or {}
        self.commands: list[list[str]] = []

    def get_bin_path(self, name: str, required: bool = False) -> str | None:
        return self.binaries.get(name)

    def run_command(self, argv: list[str], **_: object) -> tuple[int, str, str]:
        self.commands.append(argv)
        return 0, "", ""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_file_step_writes_then_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "flannel" / "subnet.env"
    first = converge_file(FakeParent(), str(path), "FLANNEL_MTU=1450\n")
    assert first["changed"] and first["diff"] == {"before": "", "after": "FLANNEL_MTU=1450\n"}
    assert path.read_text() == "FLANNEL_MTU=1450\n"
    assert mode(path) == 0o644 and mode(path.parent) == 0o755
    assert not converge_file(FakeParent(), str(path), "FLANNEL_MTU=1450\n")["changed"]
    assert [p.name for p in path.parent.iterdir()] == ["subnet.env"]  # no temporary file left


def test_file_step_leaves_an_existing_folders_mode_alone(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o700)
    folder.chmod(0o1777)  # a folder the admin made, e.g. sticky and world-writable like /tmp
    assert converge_file(FakeParent(), str(folder / "subnet.env"), "X=1\n")["changed"]
    assert mode(folder) == 0o1777 and mode(folder / "subnet.env") == 0o644
    assert not converge_file(FakeParent(), str(folder / "subnet.env"), "X=1\n")["changed"]


def test_file_step_repairs_mode_and_content(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_MTU=1450\n")
    path.chmod(0o600)
    assert converge_file(FakeParent(), str(path), "FLANNEL_MTU=1450\n")["changed"]
    assert mode(path) == 0o644
    result = converge_file(FakeParent(), str(path), "FLANNEL_MTU=1400\n")
    assert result["changed"] and result["diff"]["before"] == "FLANNEL_MTU=1450\n"
    assert path.read_text() == "FLANNEL_MTU=1400\n"


def test_file_step_in_check_mode_reports_but_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "flannel" / "subnet.env"
    assert converge_file(FakeParent(check_mode=True), str(path), "X=1\n")["changed"]
    assert not path.parent.exists()
    path.parent.mkdir(mode=0o755)
    path.write_text("X=1\n")
    path.chmod(0o644)
    result = converge_file(FakeParent(check_mode=True), str(path), None)
    assert result["changed"] and result["diff"] == {"before": "X=1\n", "after": ""}
    assert path.exists()


def test_file_step_removes_the_file_when_no_content(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_text("X=1\n")
    assert converge_file(FakeParent(), str(path), None)["changed"]
    assert not path.exists()
    assert not converge_file(FakeParent(), str(path), None)["changed"]


def test_a_step_checks_its_arguments_with_the_modules_spec() -> None:
    with pytest.raises(StepFailed) as failed:
        StepModule(FakeParent(), "routes", "pod_route", {"routes": [{"via": "10.0.0.1"}], "state": "overridden"})
    assert failed.value.step == "routes"
    assert failed.value.msg.startswith("podnet.pod_route: ") and "dst" in failed.value.msg
    sub = StepModule(FakeParent(check_mode=True), "routes", "pod_route", {"routes": [{"dst": "10.244.1.0/24"}]})
    assert sub.check_mode and sub.params["state"] == "merged" and sub.params["routes"][0]["onlink"] is False


def test_a_step_checks_the_modules_required_if_too() -> None:
    """vxlan_fdb needs its source address for every state that builds the device, in a step as on its own."""
    with pytest.raises(StepFailed) as failed:
        StepModule(FakeParent(), "vtep", "vxlan_fdb", {"name": "flannel.1", "state": "merged"})
    assert "state is merged but all of the following are missing: local" in failed.value.msg
    assert StepModule(FakeParent(), "vtep", "vxlan_fdb", {"name": "flannel.1", "state": "deleted"}).params["local"] is None


def test_pod_mtu_is_the_devices_then_the_explicit_then_the_render_time_one() -> None:
    node = {"mtu": None, "render_mtu": 1450}
    assert node_apply._pod_mtu(node, {"mtu": 1400}, None) == 1400
    assert node_apply._pod_mtu(node, None, {"mtu": 1480}) == 1480
    assert node_apply._pod_mtu(dict(node, mtu=1300), None) == 1300
    assert node_apply._pod_mtu(node, None, None) == 1450


def test_summary_keeps_order_and_shows_only_changed_diffs() -> None:
    results = [
        {"step": "a", "changed": False, "commands": [], "diff": {"before": "", "after": ""}},
        {"step": "b", "changed": True, "commands": ["ip route add 10.244.1.0/24 via 10.0.0.2"],
         "diff": {"before": "", "after": "route\n", "before_header": "b", "after_header": "b"}},
        {"step": "c", "changed": True, "commands": ["ip link set cni0 mtu 1450"], "diff": {"before": "x", "after": "y"}},
    ]
    out = summary(results)
    assert out["changed"] is True
    assert out["commands"] == ["ip route add 10.244.1.0/24 via 10.0.0.2", "ip link set cni0 mtu 1450"]
    assert [d["after"] for d in out["diff"]] == ["route\n", "y"]
    assert out["results"] is results
    assert summary([])["changed"] is False


def bird_dir(tmp_path: Path, socket: bool, conf: str = "# Ansible managed\n# podnet:bird\nrouter id 10.0.0.1;\n"
             ) -> Path:
    folder = tmp_path / "bird"
    folder.mkdir()
    (folder / "bird.conf").write_text(conf)
    if socket:
        (folder / "bird.ctl").write_text("")  # stands for the control socket: only its existence is asked
    return folder


def test_no_bird_shuts_a_left_bird_down_and_removes_its_folder(tmp_path: Path) -> None:
    folder = bird_dir(tmp_path, socket=True)
    parent = FakeParent(binaries={"birdc": "/usr/sbin/birdc"})
    run = NodeRun(parent)
    node_apply.no_bird(run, str(folder), "birdc")
    assert parent.commands == [["/usr/sbin/birdc", "-s", f"{folder}/bird.ctl", "down"]]
    assert not folder.exists()
    (result,) = run.results
    assert result["changed"] and result["resource"] == "bird"
    assert result["commands"] == [f"birdc -s {folder}/bird.ctl down",
                                  f"rm -f {folder}/bird.conf {folder}/bird.ctl", f"rmdir {folder}"]
    again = NodeRun(parent)
    node_apply.no_bird(again, str(folder), "birdc")
    assert not again.results[0]["changed"] and len(parent.commands) == 1


def test_no_bird_without_a_socket_only_removes_the_folder(tmp_path: Path) -> None:
    folder = bird_dir(tmp_path, socket=False)
    parent = FakeParent()
    run = NodeRun(parent)
    node_apply.no_bird(run, str(folder), "birdc")
    assert parent.commands == [] and not folder.exists()
    assert run.results[0]["commands"] == [f"rm -f {folder}/bird.conf", f"rmdir {folder}"]


def test_no_bird_without_birdc_still_removes_the_folder(tmp_path: Path) -> None:
    folder = bird_dir(tmp_path, socket=True)
    parent = FakeParent()  # no birdc on this node
    run = NodeRun(parent)
    node_apply.no_bird(run, str(folder), "birdc")
    assert parent.commands == [] and not folder.exists()
    assert run.results[0]["changed"] and "birdc not found" in run.results[0]["birdc_stderr"]


def test_no_bird_leaves_a_bird_conf_that_is_not_podnets_alone(tmp_path: Path) -> None:
    # podnet_bird_dir pointed at the admin's own BIRD (/etc/bird): nothing there is podnet's
    folder = bird_dir(tmp_path, socket=True, conf="# my BIRD\nrouter id 10.0.0.9;\n")
    (folder / "bird.pid").write_text("4242\n")
    parent = FakeParent(binaries={"birdc": "/usr/sbin/birdc"})
    run = NodeRun(parent)
    node_apply.no_bird(run, str(folder), "birdc")
    assert parent.commands == [] and not run.results[0]["changed"]
    assert sorted(p.name for p in folder.iterdir()) == ["bird.conf", "bird.ctl", "bird.pid"]
    assert "left alone" in run.results[0]["msg"]


def test_no_bird_removes_only_podnets_files_and_keeps_a_shared_folder(tmp_path: Path) -> None:
    folder = bird_dir(tmp_path, socket=False, conf="# BIRD 2 for podnet's calico-bgp backend on n1 (10.0.0.1):\n")
    (folder / "bird.log").write_text("log\n")
    (folder / "admin-notes.txt").write_text("mine\n")
    run = NodeRun(FakeParent())
    node_apply.no_bird(run, str(folder), "birdc")  # a bird.conf of an earlier release is podnet's too
    assert [p.name for p in folder.iterdir()] == ["admin-notes.txt"]
    assert run.results[0]["changed"] and "admin-notes.txt" in run.results[0]["msg"]
    assert run.results[0]["commands"] == [f"rm -f {folder}/bird.conf {folder}/bird.log"]


def test_no_bird_in_check_mode_reports_and_leaves_everything(tmp_path: Path) -> None:
    folder = bird_dir(tmp_path, socket=True)
    parent = FakeParent(check_mode=True, binaries={"birdc": "/usr/sbin/birdc"})
    run = NodeRun(parent)
    node_apply.no_bird(run, str(folder), "birdc")
    assert run.results[0]["changed"] and parent.commands == []
    assert (folder / "bird.conf").exists()


def test_policy_step_is_skipped_only_where_no_chain_can_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Recorder:  # the network_policy resource, recording what it was asked (its own tests cover it)
        ARGUMENT_SPEC = node_apply.RESOURCES["network_policy"].ARGUMENT_SPEC

        @staticmethod
        def run(module) -> None:
            calls.append(module.params)
            module.exit_json(changed=False)

    monkeypatch.setitem(node_apply.RESOURCES, "network_policy", Recorder)
    no_iptables, iptables = FakeParent(), FakeParent(binaries={"iptables-save": "/usr/sbin/iptables-save"})
    node_apply.apply_policy(NodeRun(no_iptables), {"chains": {}, "jump": {"table": "filter"}})
    assert calls == []  # nothing to remove where iptables does not exist
    node_apply.apply_policy(NodeRun(no_iptables), {"chains": {"PODNET-FORWARD": ["-j ACCEPT"]}, "jump": None})
    node_apply.apply_policy(NodeRun(iptables), {"chains": {}, "jump": None})
    assert [(c["state"], c["chains"]) for c in calls] == [
        ("overridden", {"PODNET-FORWARD": ["-j ACCEPT"]}), ("deleted", {})]


def records_parent(directory: Path, check_mode: bool = False) -> FakeParent:
    parent = FakeParent(check_mode=check_mode)
    parent.params["persist_dir"] = str(directory)
    return parent


def test_reset_removes_podnets_records_then_their_folder_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for name in ("pod_route.json", "vxlan_fdb-flannel.1.json"):
        (state / name).write_text("{}")
    preview = NodeRun(records_parent(state, check_mode=True))
    node_apply.forget_records(preview)
    assert preview.results[0]["changed"] and sorted(p.name for p in state.iterdir()) == [
        "pod_route.json", "vxlan_fdb-flannel.1.json"]
    run = NodeRun(records_parent(state))
    node_apply.forget_records(run)
    assert not state.exists()
    assert run.results[0]["commands"] == [f"rm -f {state}/pod_route.json {state}/vxlan_fdb-flannel.1.json",
                                          f"rmdir {state}"]
    again = NodeRun(records_parent(state))
    node_apply.forget_records(again)
    assert not again.results[0]["changed"]


def test_reset_keeps_what_is_not_a_record_and_then_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "bird.json").write_text("{}")
    (state / "README.admin").write_text("not podnet's\n")
    run = NodeRun(records_parent(state))
    node_apply.forget_records(run)
    assert [p.name for p in state.iterdir()] == ["README.admin"]
    assert run.results[0]["changed"] and "README.admin" in run.results[0]["msg"]
    again = NodeRun(records_parent(state))
    node_apply.forget_records(again)
    assert not again.results[0]["changed"] and again.results[0]["commands"] == []
