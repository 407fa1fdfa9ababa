"""The WireGuard transport (flannel's flannel-wg, calico's wireguard.cali), against a kernel with the wireguard
module: keys made on the nodes and never leaving them, peers and routes, a key rotation, switches between the
two presets and to and from flannel-vxlan, and a node built from its rendered script.

Runs inside the QEMU guest that test_ipip_vm.py boots (``pytest -m ipip``); skipped where the guest's modules
are missing (this machine's kernel has no wireguard). Each node's run is what site.yml's node role runs there:
podnet.dataplane.wireguard_key on every node, then node_apply with every node's public key (modulekit.py).
The one run through ansible-playbook is test_wireguard_playbook.py.

One lab for the module, in order: flannel-wireguard (check mode first), its state, pod traffic through
flannel-wg, a re-run that changes nothing; a key rotation; calico-wireguard from flannel-wireguard; its boot restore; a switch to
flannel-vxlan that leaves nothing of WireGuard (keys included) and back; flannel-wireguard built from its
rendered scripts; reset. Every result and record is searched for every private key.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from .labkit import Lab, netns_json
from .modulekit import (
    build_from_scripts,
    changed,
    converge,
    lab_state_dir,
    reset_nodes,
    run_module,
    shared_lab,
)
from .node_runner import node_runner
from .test_calico_ipip import (
    GUEST_ONLY,
    NODES,
    PODNET_PROTO,
    assert_pods_reach_each_other,
    inet_addresses,
)
from .test_render_exact import differences, snapshot

pytestmark = GUEST_ONLY

BOOT_APPLY = "ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply"
PORT = 51820
WIREGUARD_OVERHEAD = 60
FLANNEL_WG = {"podnet_backend": "flannel-wireguard"}
CALICO_WG = {"podnet_backend": "calico-wireguard"}


@pytest.fixture(scope="module")
def lab(guest_lab):
    with shared_lab(guest_lab) as shared:
        yield shared


def wg(lab: Lab, host: str, device: str, what: str) -> list[list[str]]:
    """`wg show <device> <what>` in the node, split into rows and columns (never `dump`: it prints the private
    key)."""
    done = lab.exec(host, ["wg", "show", device, what], check=True)
    return [line.split("\t") for line in done.stdout.splitlines() if line]


def key_dir(lab: Lab, host: str) -> Path:
    return Path(lab_state_dir(lab, host)) / "wireguard"


def private_keys(lab: Lab) -> dict[str, str]:
    """Every private key the lab's nodes hold, by file: what must appear nowhere else."""
    return {str(path): path.read_text().strip() for host in NODES for path in key_dir(lab, host).glob("*.key")}


def assert_no_private_key_in(lab: Lab, *outputs: object) -> None:
    """No private key of any node - as wg's base64, as hex, or as the bytes' base64 without padding - in the
    results, nor in any boot record or other file podnet keeps for the nodes (the key files aside)."""
    keys = private_keys(lab)
    assert keys, "no key files to look for"
    texts = [json.dumps(output) for output in outputs]
    for host in NODES:
        for path in Path(lab_state_dir(lab, host)).rglob("*"):
            if path.is_file() and str(path) not in keys:
                texts.append(path.read_text(errors="replace"))
    for path, key in keys.items():
        raw = base64.b64decode(key)
        for form in (key, key.rstrip("="), raw.hex(), base64.b64encode(raw).decode()[:40]):
            assert not [t for t in texts if form in t], f"the private key of {path} appears outside its file"


def assert_wireguard_state(lab: Lab, device: str, keys: dict[str, str]) -> None:
    """The device on every node: podnet's, up, MTU underlay - 60, the node's X.0/32, port 51820, its public key
    the one its key file gives (`wg pubkey`), one peer per other node - that node's public key, its node IP as
    the endpoint, its pod subnet as the one allowed IP - and one route per peer subnet out of the device."""
    subnets = json.loads(Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text())
    for host, ip in NODES.items():
        link = lab.json(host, "-d", "link", "show", device)[0]
        assert link["linkinfo"]["info_kind"] == "wireguard" and "UP" in link["flags"], link
        assert link["ifalias"] == "podnet:wireguard"
        assert link["mtu"] == lab.json(host, "link", "show", "eth0")[0]["mtu"] - WIREGUARD_OVERHEAD
        assert inet_addresses(lab, host, device) == [(subnets[host].split("/")[0], 32)]
        key_file = key_dir(lab, host) / f"{device}.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_dir(lab, host).stat().st_mode) == 0o700
        derived = subprocess.run(["wg", "pubkey"], input=key_file.read_text(), capture_output=True, text=True,
                                 check=True).stdout.strip()
        assert wg(lab, host, device, "public-key") == [[derived]] and keys[host] == derived
        assert wg(lab, host, device, "listen-port") == [[str(PORT)]]
        others = {peer: peer_ip for peer, peer_ip in NODES.items() if peer != host}
        assert sorted(wg(lab, host, device, "endpoints")) == sorted([keys[p], f"{ip}:{PORT}"] for p, ip in others.items())
        assert sorted(wg(lab, host, device, "allowed-ips")) == sorted([keys[p], subnets[p]] for p in others)
        routes = {r["dst"]: r for r in lab.json(host, "route", "show", "proto", PODNET_PROTO)}
        for peer in others:
            route = routes[subnets[peer]]
            assert (route.get("gateway"), route["dev"], route.get("scope")) == (None, device, "link"), route


def public_keys(lab: Lab, device: str) -> dict[str, str]:
    return {host: wg(lab, host, device, "public-key")[0][0] for host in NODES}


def test_flannel_wireguard_converges_with_keys_made_on_the_nodes_and_reruns_unchanged(lab):
    preview = converge(lab, FLANNEL_WG, check=True)
    assert all(changed(preview).values()), preview
    for host in NODES:  # check mode made nothing: no device, no key
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == "flannel-wg"]
        assert not key_dir(lab, host).exists()
    results = converge(lab, FLANNEL_WG)
    keys = public_keys(lab, "flannel-wg")
    assert len(set(keys.values())) == len(NODES)
    recorded = json.loads((Path(lab_state_dir(lab)) / "wireguard_keys.json").read_text())
    assert recorded == keys
    assert_wireguard_state(lab, "flannel-wg", keys)
    for host in NODES:
        env = Path(f"/run/podnet-lab/{lab.prefix}/{host}/flannel/subnet.env").read_text()
        assert "FLANNEL_MTU=1440\n" in env, env
        assert netns_json(lab.pod_ns(host, "pod1"), "link", "show", "eth0")[0]["mtu"] == 1440
    assert_pods_reach_each_other(lab, through="flannel-wg")
    again = converge(lab, FLANNEL_WG)
    assert changed(again) == {host: False for host in NODES}
    assert public_keys(lab, "flannel-wg") == keys
    assert_no_private_key_in(lab, results, again)


def test_a_new_key_epoch_gives_every_node_a_new_key_and_the_peers_follow(lab):
    before = public_keys(lab, "flannel-wg")
    rotated = {**FLANNEL_WG, "podnet_wireguard_key_epoch": 1}
    results = converge(lab, rotated)
    keys = public_keys(lab, "flannel-wg")
    assert not set(keys.values()) & set(before.values()), (before, keys)
    assert_wireguard_state(lab, "flannel-wg", keys)
    assert_pods_reach_each_other(lab, through="flannel-wg")
    assert_no_private_key_in(lab, results)


def test_calico_wireguard_from_flannel_wireguard(lab):
    results = converge(lab, CALICO_WG)
    keys = public_keys(lab, "wireguard.cali")
    assert_wireguard_state(lab, "wireguard.cali", keys)
    for host in NODES:
        names = [link["ifname"] for link in lab.json(host, "link", "show")]
        assert "flannel-wg" not in names and "cni0" not in names and any(n.startswith("cali") for n in names)
        assert sorted(p.name for p in key_dir(lab, host).iterdir()) == ["wireguard.cali.json", "wireguard.cali.key"]
    assert_pods_reach_each_other(lab, through="wireguard.cali")
    assert changed(converge(lab, CALICO_WG)) == {host: False for host in NODES}
    gathered = run_module(lab, "node2", "wireguard_tunnel", {"name": "wireguard.cali", "state": "gathered"})
    assert gathered["public_key"] == keys["node2"] and gathered["owned"] is True
    options = gathered["gathered"]
    assert (options["listen_port"], options["mtu"], len(options["peers"])) == (PORT, 1440, 2), options
    # its output is valid input, and changes nothing
    assert not run_module(lab, "node2", "wireguard_tunnel", dict(options, state="overridden"), check=True)["changed"]
    assert_no_private_key_in(lab, results, gathered)


def test_the_boot_restore_brings_wireguard_back_from_the_nodes_records_alone(lab):
    """What a reboot loses - the device, with its key, port and peers, and the routes through it - is made again by
    boot_apply (the podnet-apply unit's program) from the node's records, which name the key file, not the key."""
    keys = public_keys(lab, "wireguard.cali")
    outputs = []
    for host in NODES:
        lab.exec(host, ["ip", "link", "del", "wireguard.cali"], check=True)
        rc, stdout, stderr = node_runner().run(lab.node_ns(host), BOOT_APPLY, [f"{lab_state_dir(lab, host)}/state"],
                                               600)
        assert rc == 0, stdout + stderr
        outputs.append(stdout + stderr)
    assert_wireguard_state(lab, "wireguard.cali", keys)
    assert_pods_reach_each_other(lab, through="wireguard.cali")
    assert changed(converge(lab, CALICO_WG)) == {host: False for host in NODES}
    assert_no_private_key_in(lab, outputs)


def test_a_switch_to_flannel_vxlan_leaves_nothing_of_wireguard_and_back(lab):
    converge(lab, {"podnet_backend": "flannel-vxlan"})
    for host in NODES:
        names = [link["ifname"] for link in lab.json(host, "link", "show")]
        assert "wireguard.cali" not in names and "flannel-wg" not in names
        assert not [r for r in lab.json(host, "route", "show", "table", "all") if "wireguard" in r.get("dev", "")]
        assert not key_dir(lab, host).exists()
    assert_pods_reach_each_other(lab, through="flannel.1")
    converge(lab, FLANNEL_WG)
    for host in NODES:
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == "flannel.1"]
    assert_wireguard_state(lab, "flannel-wg", public_keys(lab, "flannel-wg"))
    assert_pods_reach_each_other(lab, through="flannel-wg")


def test_flannel_wireguard_built_from_its_scripts_is_what_a_run_converges_to(lab, tmp_path):
    """The rendered script names the key file, which stays on the node (it is the node's identity, made by
    podnet.dataplane.wireguard_key): the keys are kept aside through the reset and put back before the scripts
    run, as they are on a node that keeps its /etc."""
    kept = tmp_path / "keys"
    for host in NODES:
        shutil.copytree(key_dir(lab, host), kept / host)
    reset_nodes(lab)
    for host in NODES:
        assert not key_dir(lab, host).exists()
        shutil.copytree(kept / host, key_dir(lab, host))
        os.chmod(key_dir(lab, host), 0o700)
    build_from_scripts(lab, FLANNEL_WG, tmp_path)
    scripts = "".join((tmp_path / f"{host}.sh").read_text() for host in NODES)
    assert "private-key" in scripts
    assert_no_private_key_in(lab, scripts)
    before = snapshot(lab), {host: wg(lab, host, "flannel-wg", "allowed-ips") for host in NODES}
    assert_wireguard_state(lab, "flannel-wg", public_keys(lab, "flannel-wg"))
    assert_pods_reach_each_other(lab, through="flannel-wg")
    assert changed(converge(lab, FLANNEL_WG)) == {host: False for host in NODES}
    after = snapshot(lab), {host: wg(lab, host, "flannel-wg", "allowed-ips") for host in NODES}
    assert differences(before, after) == [], "\n".join(differences(before, after))
    reset_nodes(lab)
    for host in NODES:
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"] == "flannel-wg"]
        assert not key_dir(lab, host).exists()
