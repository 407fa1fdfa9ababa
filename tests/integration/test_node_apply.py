"""podnet.dataplane.node_apply, the one module run per node the backend roles make: a failing step
stops that node with the step's own module message, leaves the device it refused alone, and the other
nodes still converge; the node lock it takes lives exactly as long as its run, failed or not (the
flannel/calico test files cover the converged state itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .labkit import Lab, lock_is_free

pytestmark = pytest.mark.integration


def link(lab: Lab, host: str, name: str) -> dict | None:
    return next((dev for dev in lab.json(host, "-d", "link", "show") if dev["ifname"] == name), None)


def test_a_failing_step_stops_its_node_with_the_modules_message(lab: Lab) -> None:
    # A cluster podnet runs (every node holds its record), then node1's VTEP name taken by a device that is not
    # podnet's: the plan lets the run start (a node podnet never ran would stop the whole run before any change,
    # test_adopt.py), and node1's own run refuses.
    first = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert first.rc == 0, first.output
    lab.exec("node1", ["ip", "link", "del", "flannel.1"], check=True)
    lab.exec("node1", ["ip", "link", "add", "flannel.1", "type", "bridge"], check=True)

    result = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})

    assert result.rc != 0
    assert result.failed("node1") == 1 and result.failed("node2") == 0 and result.failed("node3") == 0
    # podnet's VTEP name is taken by a device that is not podnet's: refused before the first step
    assert ("podnet.node_apply: nothing changed: device flannel.1 exists and is not podnet's (a bridge device "
            "with no alias, not 'podnet:*')" in result.output)
    assert "step: only what podnet owns" in result.output
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
    assert len(lab.json("node1", "route", "show", "proto", "152")) == 2


LOCK_PLAYBOOK = """
- hosts: podnet_nodes
  gather_facts: false
  roles:
    - podnet.dataplane.plan
  tasks:
    - name: The backend under the node lock
      ansible.builtin.include_role:
        name: podnet.dataplane.flannel
      vars:
        podnet_apply_lock:
          owner: "{{{{ lookup('podnet.dataplane.run_owner') }}}}"
          path: "{{{{ podnet_lock_file }}}}"
    - name: Keep what node_apply said
      ansible.builtin.copy:
        content: "{{{{ podnet_node_apply | to_json }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0600"
      delegate_to: localhost
"""


def test_the_lock_lives_as_long_as_the_run_failed_or_not(lab: Lab, tmp_path: Path) -> None:
    playbook = tmp_path / "lock.yml"
    playbook.write_text(LOCK_PLAYBOOK.format(out=tmp_path))
    locks = {host: Path(f"/run/podnet-lab/{lab.prefix}/{host}/node.lock") for host in ("node1", "node2", "node3")}

    done = lab.run(playbook, extra_vars={"podnet_backend": "flannel-vxlan"})

    assert done.rc == 0, done.output
    for host, lock in locks.items():
        result = json.loads((tmp_path / f"{host}.json").read_text())["lock"]
        assert result["waited"] < 60 and "abandoned_by" not in result, result
        assert lock_is_free(lock), host  # held by the run's process only, its record emptied

    lab.exec("node1", ["ip", "link", "del", "flannel.1"], check=True)
    lab.exec("node1", ["ip", "link", "add", "flannel.1", "type", "bridge"], check=True)
    failed = lab.run(playbook, extra_vars={"podnet_backend": "flannel-vxlan"})

    assert failed.rc != 0 and failed.failed("node1") == 1 and failed.failed("node2") == 0
    assert all(lock_is_free(lock) for lock in locks.values())


def pod_veth(lab: Lab, host: str, pod: str) -> str:
    (name,) = [link["ifname"] for link in lab.json(host, "link", "show") if link.get("ifalias") == f"podnet:pod:{pod}"]
    return name


def test_a_device_a_killed_run_created_but_did_not_mark_is_finished_by_the_next(lab: Lab) -> None:
    """The kernel takes a new device's group with its creation, its alias only in a second message: a run
    killed in between leaves a device of podnet's group without podnet's alias. The next run finishes it; a
    device of that name outside podnet's group is someone else's and stays refused."""
    first = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert first.rc == 0, first.output
    assert all(link.get("group") == "152" for link in lab.json("node1", "-d", "link", "show")
               if link.get("ifalias", "").startswith("podnet:")), "podnet's devices are created in its group"
    unfinished, foreign = pod_veth(lab, "node1", "pod1"), pod_veth(lab, "node2", "pod1")
    for host, name, group in (("node1", unfinished, ["group", "152"]), ("node2", foreign, [])):
        lab.exec(host, ["ip", "link", "del", name], check=True)
        lab.exec(host, ["ip", "link", "add", "name", name, *group, "type", "veth", "peer", "name", "eth0",
                        "netns", lab.pod_ns(host, "pod1")], check=True)
    again = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "flannel-vxlan"})
    assert again.rc != 0 and f"device {foreign} exists and is not podnet's" in again.stdout, again.output
    assert f"device {unfinished} exists" not in again.stdout
    finished = link(lab, "node1", unfinished)
    assert finished["ifalias"] == "podnet:pod:pod1" and finished["master"] == "cni0", finished
    assert "UP" in finished["flags"]


def test_a_run_reads_each_namespace_once_and_again_only_after_writing_there(lab: Lab, tmp_path: Path) -> None:
    """node_apply's steps share one netlink read per namespace (the node's, each pod's); a step that wrote
    makes the next one read that namespace again, so a converge reads more, a no-op run once each."""
    playbook = tmp_path / "reads.yml"
    playbook.write_text(LOCK_PLAYBOOK.format(out=tmp_path))
    lab.run("playbooks/reset.yml")
    reads = {}
    for run in ("converge", "no-op"):
        done = lab.run(playbook, extra_vars={"podnet_backend": "flannel-vxlan"})
        assert done.rc == 0, done.output
        results = {host: json.loads((tmp_path / f"{host}.json").read_text()) for host in ("node1", "node2", "node3")}
        reads[run] = {host: result["kernel_reads"] for host, result in results.items()}
    print(f"\nkernel reads per namespace: {reads}")
    assert not any(result["changed"] for result in results.values())  # the no-op run
    for host, counts in reads["no-op"].items():
        assert counts == {"": 1, **{lab.pod_ns(host, pod): 1 for pod in ("pod1", "pod2")}}, (host, counts)
        assert sum(reads["converge"][host].values()) > sum(counts.values()), reads  # the converge wrote, read again
