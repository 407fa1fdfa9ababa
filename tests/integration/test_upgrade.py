"""Nodes converged by an earlier release upgrade in place: a namespace lab converged by PREVIOUS (that
commit's own tree: collection, playbooks, inventory), then `site.yml` of this tree, with pod-to-pod
probes running through the upgrade.

The upgrade run loses no probe and changes nothing in any node's or pod's kernel state (links with their
ifindex, addresses, all route tables, permanent neighbours, static fdb, iptables, sysctls: this tree
wants exactly what the earlier one made, and owns it) but for the node's record of its subnet, which the
earlier release did not write; it writes the boot records again in the current format (the earlier ones
carry none); a second run changes nothing; and reset.yml of this tree then
removes everything the earlier release made.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import RECORD_FORMAT

from tests.integration.labkit import ANSIBLE_PLAYBOOK, REPO_ROOT, Lab, netns_exec, netns_json, playbook_env
from tests.integration.test_render_exact import HOSTS, differences, snapshot

pytestmark = pytest.mark.integration

# The last commit before records carried a format and the engine dropped pyroute2 (and before the
# render, reset and node-role rework): what a node converged by the earlier release holds.
PREVIOUS = "ae79592e2ff30ff3a3c6d94a6534ae8719797cdd"
PROBE_INTERVAL = 0.02  # seconds between probes of one pair


@pytest.fixture(scope="module")
def previous_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PREVIOUS's tree, from this repository's history (a clone has it; a shallow one fails here)."""
    out = tmp_path_factory.mktemp("previous")
    archive = out / "tree.tar"
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "-o", str(archive), PREVIOUS],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"the upgrade test needs commit {PREVIOUS} in this clone's history: {done.stderr}"
    # tar(1), not tarfile: Debian 12's Python 3.11.2 has no extraction filters (3.11.4), and this archive is the
    # repository's own history
    (out / "tree").mkdir()
    unpacked = subprocess.run(["tar", "-x", "-f", str(archive), "-C", str(out / "tree")], capture_output=True,
                              text=True, check=False)
    assert unpacked.returncode == 0, unpacked.stderr
    return out / "tree"


def run_previous(tree: Path, lab: Lab, playbook: str, extra_vars: dict) -> subprocess.CompletedProcess[str]:
    """A playbook of the earlier release against this lab, with that release's config and collection."""
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tree / "inventories" / "lab"), str(tree / "playbooks" / playbook),
         "-e", json.dumps(extra_vars)],
        cwd=tree, env=playbook_env(lab.prefix, {"ANSIBLE_CONFIG": str(tree / "ansible.cfg")}),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False)


class Probes:
    """ping between every pair of pods on different nodes (one pod per node), every PROBE_INTERVAL s."""

    def __init__(self, lab: Lab, address: dict[str, str]) -> None:
        self.procs = {}
        for source in HOSTS:
            for target in HOSTS:
                if source != target:
                    self.procs[(source, target)] = subprocess.Popen(
                        ["ip", "netns", "exec", lab.pod_ns(source, "pod1"), "ping", "-n", "-i", str(PROBE_INTERVAL),
                         "-W", "1", address[target]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(sent, answered) per pair."""
        out = {}
        for pair, proc in self.procs.items():
            proc.send_signal(signal.SIGINT)
            text = proc.communicate(timeout=30)[0]
            found = re.search(r"(\d+) packets transmitted, (\d+) received", text)
            assert found, text[-500:]
            out[pair] = (int(found[1]), int(found[2]))
        return out


def records(lab: Lab, host: str) -> dict[str, dict]:
    folder = Path(f"/run/podnet-lab/{lab.prefix}/{host}/state")
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


@pytest.mark.parametrize("backend", ["flannel-vxlan", "calico-bgp"])
def test_a_cluster_converged_by_the_previous_release_upgrades_in_place(previous_tree, backend):
    extra = {"podnet_backend": backend}
    with Lab(extra_vars=extra) as lab:
        old = run_previous(previous_tree, lab, "site.yml", extra)
        assert old.returncode == 0, old.stdout[-3000:] + old.stderr[-2000:]
        before = snapshot(lab)
        old_records = {host: records(lab, host) for host in HOSTS}
        assert all(old_records.values()) and not any("format" in r for h in old_records.values() for r in h.values())

        address = {host: next(a["local"] for link in netns_json(lab.pod_ns(host, "pod1"), "addr", "show")
                              for a in link["addr_info"] if a["family"] == "inet" and link["ifname"] != "lo")
                   for host in HOSTS}
        probes = Probes(lab, address)
        upgrade = lab.run("playbooks/site.yml")
        loss = probes.stop()
        assert upgrade.rc == 0, upgrade.output
        print(f"\n{backend}: upgrade run {upgrade.seconds:.1f}s, changed per node "
              f"{[upgrade.changed(h) for h in HOSTS]}, probes sent/answered {sorted(loss.values())}")
        lost = {f"{s}->{t}": sent - answered for (s, t), (sent, answered) in loss.items() if sent - answered}
        assert all(sent > 20 for sent, _ in loss.values()), loss
        assert lost == {}, f"probes lost during the upgrade: {lost}"
        after = snapshot(lab)
        for host in HOSTS:
            # the one thing the earlier release did not make: the node's record of the subnet it holds
            text, mode = after[host]["files"].pop(str(Path(f"/run/podnet-lab/{lab.prefix}/{host}/node.json")))
            record = json.loads(text)
            assert (record["podnet"], record["host"], record["backend"], mode) == ("node-record", host, backend, 0o644)
            assert ipaddress.ip_address(address[host]) in ipaddress.ip_network(record["subnet"]), (host, record)
        assert differences(before, after) == []

        for host in HOSTS:
            now = records(lab, host)
            assert set(now) == set(old_records[host]), host
            assert all(r["format"] == RECORD_FORMAT for r in now.values()), host
            assert {n: {k: v for k, v in r.items() if k != "format"} for n, r in now.items()} == old_records[host]

        again = lab.run("playbooks/site.yml")
        assert again.rc == 0 and all(again.changed(host) == 0 for host in HOSTS), again.recap

        reset = lab.run("playbooks/reset.yml")
        assert reset.rc == 0, reset.output
        for host in HOSTS:
            ns = lab.node_ns(host)
            assert not [link["ifname"] for link in netns_json(ns, "link", "show")
                        if str(link.get("ifalias", "")).startswith("podnet:")], host
            assert netns_json(ns, "route", "show", "proto", "152") == [], host
            assert "PODNET" not in netns_exec(ns, ["iptables-save"], check=True).stdout, host
            assert not Path(f"/run/podnet-lab/{lab.prefix}/{host}/state").exists(), host
