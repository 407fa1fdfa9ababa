"""podnet.dataplane.preflight answers the node IP and kernel checks from one shell line (its action plugin,
no module process on the node) exactly as the module does over netlink, fails the same way, and runs
the module for anything more; site.yml with a transport this kernel lacks is refused before any change."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from . import modulekit
from .labkit import Lab
from .test_module_runs import NODES, counting_interpreter, runs_per_node

pytestmark = pytest.mark.integration

PLAYBOOK = """
- hosts: podnet_nodes
  gather_facts: false
  tasks:
    - name: Only the node IP check (action plugin, no module)
      podnet.dataplane.preflight:
        node_ip: "{{{{ podnet_node_ip }}}}"
      register: fast
    - name: The same on the named underlay, and on one that does not hold it
      podnet.dataplane.preflight:
        node_ip: "{{{{ podnet_node_ip }}}}"
        underlay_interface: "{{{{ item }}}}"
      loop: [eth0, lo]
      register: named
      ignore_errors: true
    - name: A node IP the node does not have
      podnet.dataplane.preflight:
        node_ip: 172.30.0.250
      register: missing
      ignore_errors: true
    - name: More than the node IP check (the module)
      podnet.dataplane.preflight:
        node_ip: "{{{{ podnet_node_ip }}}}"
        iptables_prefix: PODNET-
      register: full
    - name: Every kernel piece a transport may need (action plugin, no module)
      podnet.dataplane.preflight:
        node_ip: "{{{{ podnet_node_ip }}}}"
        kernel_features: [vxlan, ipip, fou, wireguard]
      register: fast_kernel
      ignore_errors: true
    - name: The same from the module
      podnet.dataplane.preflight:
        node_ip: "{{{{ podnet_node_ip }}}}"
        kernel_features: [vxlan, ipip, fou, wireguard]
        iptables_prefix: PODNET-
      register: module_kernel
      ignore_errors: true
    - name: Keep what each answered
      ansible.builtin.copy:
        content: "{{{{ {{'fast': fast, 'named': named.results, 'missing': missing, 'full': full,
                       'kernel': [fast_kernel, module_kernel]}} | to_json }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0600"
      delegate_to: localhost
"""
FACTS = ("underlay_interface", "underlay_mtu", "links", "owned_links")


def test_address_check_without_a_module_run_answers_as_the_module(lab: Lab, tmp_path: Path) -> None:
    lab.exec("node1", ["ip", "link", "add", "podnettest0", "type", "bridge"], check=True)
    lab.exec("node1", ["ip", "link", "set", "podnettest0", "alias", "podnet"], check=True)
    lab.exec("node2", ["ip", "link", "set", "eth0", "mtu", "1400"], check=True)
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(PLAYBOOK.format(out=tmp_path))
    wrapper, log = counting_interpreter(tmp_path)

    result = lab.run(playbook, extra_vars={"ansible_python_interpreter": str(wrapper)})

    assert result.rc == 0, result.output
    assert runs_per_node(lab, log) == {h: 2 for h in NODES}  # the two tasks with iptables_prefix only
    for host in NODES:
        seen = json.loads((tmp_path / f"{host}.json").read_text())
        fast, full = seen["fast"], seen["full"]
        assert {k: fast[k] for k in FACTS} == {k: full[k] for k in FACTS}, host
        assert fast["underlay_interface"] == "eth0" and not fast["changed"]
        assert fast["paths"] == {} and fast["persisted"] == [] and fast["iptables_prefix_present"] is None
        assert isinstance(full["iptables_prefix_present"], bool)
        on_eth0, on_lo = seen["named"]
        assert not on_eth0.get("failed") and on_eth0["underlay_mtu"] == fast["underlay_mtu"]
        assert on_lo["failed"] and "podnet_underlay_interface lo does not hold podnet_node_ip" in on_lo["msg"]
        assert seen["missing"]["failed"]
        assert "podnet_node_ip 172.30.0.250 is not configured on any interface" in seen["missing"]["msg"]
        fast_kernel, module_kernel = seen["kernel"]
        assert fast_kernel["kernel"] == module_kernel["kernel"] == fast["kernel"] | {
            "features": expected_features()}, host
        assert fast_kernel.get("msg") == module_kernel.get("msg")
        assert bool(fast_kernel.get("failed")) == (not all(f["available"] for f in expected_features().values()))
        assert fast["kernel"]["features"] == {} and fast["kernel"]["release"] == os.uname().release
    node1 = json.loads((tmp_path / "node1.json").read_text())["fast"]
    assert node1["owned_links"] == ["podnettest0"] and "podnettest0" in node1["links"]
    assert json.loads((tmp_path / "node2.json").read_text())["fast"]["underlay_mtu"] == 1400


KERNEL_SYMBOLS = {"vxlan": "VXLAN", "ipip": "NET_IPIP", "fou": "NET_FOU", "wireguard": "WIREGUARD"}


def kernel_config() -> dict[str, str]:
    """This machine's kernel configuration (/proc/config.gz), read here with Python: symbol -> y/m/n."""
    config: dict[str, str] = {}
    with gzip.open("/proc/config.gz", "rt") as handle:
        for line in handle:
            if line.startswith("CONFIG_"):
                symbol, _, value = line.strip()[len("CONFIG_"):].partition("=")
                config[symbol] = value
            elif line.startswith("# CONFIG_") and line.rstrip().endswith(" is not set"):
                config[line.split()[1][len("CONFIG_"):]] = "n"
    return config


def expected_features() -> dict[str, dict]:
    """What the preflight must answer on this machine, from its own kernel configuration and /sys/module
    (this machine has no /lib/modules: a module the configuration builds as one counts as loadable only
    when loaded)."""
    if not Path("/proc/config.gz").exists() or Path("/lib/modules", os.uname().release).exists():
        pytest.skip("this oracle reads /proc/config.gz on a machine without /lib/modules (the test machines)")
    config, release = kernel_config(), os.uname().release
    expected = {}
    for feature, symbol in KERNEL_SYMBOLS.items():
        if Path("/sys/module", feature).exists():
            expected[feature] = {"available": True, "how": "loaded"}
        elif config.get(symbol) == "y":
            expected[feature] = {"available": True, "how": "built in"}
        elif config.get(symbol, "n") == "n":
            expected[feature] = {"available": False, "how": f"CONFIG_{symbol} is not set"}
        else:
            expected[feature] = {"available": None, "how": f"kernel {release} builds {feature} as a module, but "
                                 f"this node has no /lib/modules/{release} (a container?): the host may load it "
                                 "on demand"}
    return expected


@pytest.mark.skipif(Path("/sys/module/ipip").exists(), reason="this kernel has ipip (the QEMU guest's tests run it)")
def test_a_transport_the_kernel_lacks_is_refused_before_any_node_changes(lab: Lab) -> None:
    """This machine's kernel has no ipip (DESIGN.md): calico-ipip stops at the preflight, naming it."""
    result = lab.run("playbooks/site.yml", extra_vars={"podnet_backend": "calico-ipip"})
    assert result.rc != 0
    assert "this node's kernel" in result.output and "lacks what the chosen transport needs: ipip" in result.output
    for host in NODES:
        assert result.failed(host) == 1  # the preflight; its only changes were the leases, on the controller
        assert [link["ifname"] for link in lab.json(host, "link", "show")] == ["lo", "eth0"], host
        assert not Path(f"/run/podnet-lab/{lab.prefix}/{host}/state").exists()


def test_a_wireguard_node_without_its_peers_keys_is_refused_before_any_change(lab: Lab) -> None:
    """node_apply given a WireGuard node and no public keys for its peers (a run that skipped the key step, or
    limited to one node with nothing recorded) stops before its first change, naming the peers."""
    node = modulekit.plan(lab, podnet_backend="calico-wireguard")["node1"]
    refused = modulekit.run_module(lab, "node1", "node_apply", modulekit.node_args(lab, "node1", node), may_fail=True)
    assert refused.get("failed") and refused["step"] == "only what podnet owns", refused
    assert "no WireGuard public key for node2, node3" in refused["msg"], refused["msg"]
    assert [link["ifname"] for link in lab.json("node1", "link", "show")] == ["lo", "eth0"]
    assert not Path(modulekit.lab_state_dir(lab, "node1"), "wireguard").exists()
