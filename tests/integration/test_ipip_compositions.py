"""IPIP in the compositions, against a kernel with the ipip module: canal over IPIP (seed 000's table), and
render-exact for calico-ipip and canal over IPIP - the two IPIP cases the namespace lab cannot run here.

Runs inside the QEMU guest that test_ipip_vm.py boots (``pytest -m ipip``); skipped where ipip is missing.
Each node's run is node_apply itself, executed in the node as Ansible executes it, with the arguments
site.yml's node role gives it (modulekit.py): a playbook run costs minutes under software emulation.

One lab for the module, in order: calico-ipip converged on a kernel whose ipip module is not loaded yet
(rmmod first), reset; calico-ipip built from its rendered scripts, then converged (nothing
changes); a switch to canal over IPIP (calico's state replaced, pod traffic through tunl0), a re-run that
changes nothing; reset; canal over IPIP built from its scripts and converged (nothing changes); a switch
to flannel-vxlan (nothing of IPIP left); reset.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .labkit import Lab
from .modulekit import build_from_scripts, changed, converge, reset_nodes, run_module, shared_lab
from .test_calico_ipip import (
    GUEST_ONLY,
    NODES,
    TUNNEL,
    assert_ipip_state,
    assert_pods_reach_each_other,
)
from .test_render_exact import differences, snapshot

pytestmark = GUEST_ONLY

IPIP_MODULE = Path("/sys/module/ipip")
CALICO_IPIP = {"podnet_backend": "calico-ipip"}
CANAL_IPIP = {"podnet_backend": "canal", "podnet_transport": "ipip"}


@pytest.fixture(scope="module")
def lab(guest_lab):
    with shared_lab(guest_lab) as shared:
        yield shared


def assert_rendered_is_converged(lab: Lab, variables: dict[str, str], tmp_path: Path) -> None:
    build_from_scripts(lab, variables, tmp_path)
    before = snapshot(lab)
    assert_ipip_state(lab)
    assert_pods_reach_each_other(lab)
    results = converge(lab, variables)
    assert changed(results) == {host: False for host in NODES}, \
        {host: [r["step"] for r in result["results"] if r.get("changed")] for host, result in results.items()}
    after = snapshot(lab)
    assert differences(before, after) == [], "\n".join(differences(before, after))


def test_a_run_on_a_kernel_without_ipip_loaded_loads_it_and_configures_its_tunl0(lab):
    """On a fresh node the ipip module is not loaded: the run's netlink request for tunl0 loads it, and the
    module makes tunl0 itself in every namespace as it loads - the run then configures that one (an
    exclusive create would answer "File exists", as seed 003's `ip tunnel add tunl0` does)."""
    unloaded = subprocess.run(["rmmod", "ipip"], capture_output=True, text=True, check=False)
    assert unloaded.returncode == 0 and not IPIP_MODULE.exists(), unloaded.stderr
    converge(lab, CALICO_IPIP)
    assert IPIP_MODULE.exists()
    assert_ipip_state(lab)
    assert_pods_reach_each_other(lab)
    reset_nodes(lab)  # the render-exact test below starts from a node podnet has not configured


def test_calico_ipip_built_from_its_rendered_scripts_is_what_a_run_converges_to(lab, tmp_path):
    assert_rendered_is_converged(lab, CALICO_IPIP, tmp_path)


def test_canal_over_ipip_replaces_calico_ipip_and_carries_pod_traffic(lab):
    preview = converge(lab, CANAL_IPIP, check=True)
    assert all(changed(preview).values()), preview
    converge(lab, CANAL_IPIP)
    assert_ipip_state(lab)  # calico's pod wiring and IPIP peer routes, now canal's
    for host in NODES:
        env = Path(f"/run/podnet-lab/{lab.prefix}/{host}/flannel/subnet.env").read_text()
        assert "FLANNEL_MTU=1480\n" in env, env  # canal keeps flannel's node facts, with IPIP's MTU
        nat = lab.exec(host, ["iptables-save", "-t", "nat"], check=True).stdout
        assert "-A POSTROUTING -s 10.244.0.0/16 ! -d 224.0.0.0/4" in nat, nat
    assert_pods_reach_each_other(lab)
    assert changed(converge(lab, CANAL_IPIP)) == {host: False for host in NODES}
    # ipip_tunnel's `gathered` is valid input again (test_gathered.py does the other resources on this machine)
    gathered = run_module(lab, "node2", "ipip_tunnel", {"state": "gathered"})["gathered"]
    assert gathered["mtu"] == 1480 and gathered["address"].endswith("/32"), gathered
    for state in ("merged", "overridden"):
        assert not run_module(lab, "node2", "ipip_tunnel", dict(gathered, state=state), check=True)["changed"]


def test_canal_over_ipip_built_from_its_rendered_scripts_is_what_a_run_converges_to(lab, tmp_path):
    reset_nodes(lab)
    assert_rendered_is_converged(lab, CANAL_IPIP, tmp_path)


def test_a_switch_from_canal_over_ipip_to_flannel_vxlan_leaves_nothing_of_it(lab):
    """tunl0 given back (down, no alias, no address), no route through it, no calico pod wiring, no masquerade
    rule of canal's left beside flannel's; and pod traffic flows over flannel.1."""
    converge(lab, {"podnet_backend": "flannel-vxlan"})
    for host in NODES:
        tun = lab.json(host, "-d", "link", "show", TUNNEL)[0]
        assert "UP" not in tun["flags"] and not tun.get("ifalias"), tun
        assert lab.json(host, "addr", "show", "dev", TUNNEL)[0]["addr_info"] == []
        assert not [r for r in lab.json(host, "route", "show", "table", "all") if r.get("dev") == TUNNEL]
        assert not [link for link in lab.json(host, "link", "show") if link["ifname"].startswith("cali")]
        assert [link for link in lab.json(host, "link", "show") if link["ifname"] == "cni0"]
    assert_pods_reach_each_other(lab, through="flannel.1")
    reset_nodes(lab)
