"""Objects that look like podnet's but are not - a VXLAN device named like another backend's VTEP, a
bridge with an address, a chain under podnet's prefix and a jump to it, a rule commented "podnet:...", a
route of podnet's protocol outside the pod network, a BIRD folder that is someone else's - survive a
converge, a backend switch and a reset byte for byte; a foreign device or route that podnet wants makes
the run fail on that node, naming it, with the node unchanged, until the inventory hands it over."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .labkit import Lab

pytestmark = pytest.mark.integration

SITE, RESET = "playbooks/site.yml", "playbooks/reset.yml"
HOST = "node1"
# A VXLAN device named like calico-vxlan's VTEP, and a bridge holding an address, neither podnet's.
LOOKALIKE_VTEP, FOREIGN_BRIDGE = "vxlan.calico", "cni1"
FOREIGN_ROUTE = "10.98.0.0/24"  # protocol 152, outside the cluster CIDR: some other program's
DENY_ALL = [{"name": "deny-all", "selector": {}}]


def bird_dir(lab: Lab, host: str = HOST) -> Path:
    return Path(f"/run/podnet-lab/{lab.prefix}/{host}/bird")


def rt_protos_file(lab: Lab, host: str) -> Path:
    return Path(f"/run/podnet-lab/{lab.prefix}/{host}/iproute2/rt_protos.d/podnet.conf")


def foreign_setup(lab: Lab) -> None:
    for argv in (
        ["ip", "link", "add", LOOKALIKE_VTEP, "type", "vxlan", "id", "77", "dstport", "4789", "nolearning"],
        ["ip", "link", "add", FOREIGN_BRIDGE, "type", "bridge"],
        ["ip", "addr", "add", "10.99.0.1/24", "dev", FOREIGN_BRIDGE],
        ["ip", "link", "set", FOREIGN_BRIDGE, "up"],
        ["ip", "route", "add", FOREIGN_ROUTE, "dev", FOREIGN_BRIDGE, "proto", "152"],
        ["iptables", "-N", "PODNET-MINE"],
        ["iptables", "-A", "PODNET-MINE", "-s", "10.66.0.0/16", "-j", "DROP"],
        ["iptables", "-A", "FORWARD", "-j", "PODNET-MINE"],
        ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.98.0.0/16", "-m", "comment", "--comment",
         "podnet:legacy-vpn", "-j", "RETURN"],
    ):
        lab.exec(HOST, argv, check=True)
    folder = bird_dir(lab)
    folder.mkdir(parents=True)
    (folder / "bird.conf").write_text("# the admin's own BIRD\nrouter id 10.0.0.1;\n")
    (folder / "notes.txt").write_text("not podnet's\n")


def foreign_state(lab: Lab) -> dict:
    links = {link["ifname"]: link for link in lab.json(HOST, "-d", "link", "show")}
    saved = lab.exec(HOST, ["iptables-save"]).stdout.splitlines()
    folder = bird_dir(lab)
    def link(name: str) -> dict:
        # identity and configuration; a bridge's timers and counters move on their own
        info = links[name].get("linkinfo", {})
        return {"name": name, "alias": links[name].get("ifalias"), "mac": links[name]["address"],
                "mtu": links[name]["mtu"], "up": "UP" in links[name]["flags"], "kind": info.get("info_kind"),
                "vxlan": info.get("info_data") if info.get("info_kind") == "vxlan" else None}

    return {
        "links": [link(name) for name in (LOOKALIKE_VTEP, FOREIGN_BRIDGE) if name in links],
        "addresses": sorted((a["local"], a["prefixlen"]) for entry in lab.json(HOST, "-4", "addr", "show", "dev",
                                                                              FOREIGN_BRIDGE)
                            for a in entry["addr_info"]),
        "routes": lab.json(HOST, "route", "show", FOREIGN_ROUTE),
        "iptables": [line for line in saved if "PODNET-MINE" in line or "legacy-vpn" in line],
        "bird": {p.name: p.read_text() for p in sorted(folder.iterdir())} if folder.is_dir() else None,
    }


def node_state(lab: Lab, host: str) -> dict:
    """Everything of a node that a refused run must leave as it was."""
    return {
        "links": sorted((link["ifname"], link.get("ifalias"), link.get("address"), link.get("mtu"))
                        for link in lab.json(host, "link", "show")),
        "addresses": sorted((a["ifname"], i["local"], i["prefixlen"]) for a in lab.json(host, "addr", "show")
                            for i in a["addr_info"]),
        "routes": lab.json(host, "route", "show"),
        "iptables": [line for line in lab.exec(host, ["iptables-save"]).stdout.splitlines()
                     if not line.startswith("#")],
    }


def lease(lab: Lab, host: str) -> str:
    return json.loads(Path(f"/run/podnet-lab/{lab.prefix}/leases.json").read_text())[host]


@pytest.fixture(scope="module")
def lab():
    with Lab(extra_vars={"podnet_backend": "flannel-vxlan"}) as lab:
        foreign_setup(lab)
        lab.before = foreign_state(lab)
        yield lab


def test_lookalikes_survive_a_converge(lab):
    result = lab.run(SITE)
    assert result.rc == 0, result.output
    assert foreign_state(lab) == lab.before
    assert lab.json(HOST, "link", "show", "flannel.1")[0]["ifalias"] == "podnet:vtep"
    assert rt_protos_file(lab, HOST).read_text() == "# podnet:rt_protos\n152\tpodnet\n"
    assert oct(rt_protos_file(lab, HOST).stat().st_mode & 0o777) == "0o644"


def test_lookalikes_survive_a_backend_switch_with_policy(lab):
    result = lab.run(SITE, extra_vars={"podnet_backend": "calico-bgp", "podnet_network_policies": DENY_ALL})
    assert result.rc == 0, result.output
    assert foreign_state(lab) == lab.before
    saved = lab.exec(HOST, ["iptables-save", "-t", "filter"]).stdout
    assert ":PODNET-FORWARD - " in saved and "-A FORWARD -j PODNET-FORWARD" in saved
    assert not _exists(lab, "cni0")  # podnet's own bridge went with the switch; the foreign cni1 stayed


def _exists(lab: Lab, name: str) -> bool:
    return lab.exec(HOST, ["ip", "link", "show", name], check=False).returncode == 0


def test_a_foreign_route_podnet_wants_is_refused_until_handed_over(lab):
    peer = lease(lab, "node3")
    extra = {"podnet_backend": "calico-bgp", "podnet_network_policies": DENY_ALL}
    lab.exec(HOST, ["ip", "route", "replace", peer, "via", "172.30.0.13", "proto", "static"], check=True)
    before = {host: node_state(lab, host) for host in ("node1", "node2", "node3")}
    result = lab.run(SITE, extra_vars=extra)
    assert result.rc != 0
    assert (f"route {peer} exists and is not podnet's (proto 4, not 152 'podnet'): podnet will not replace it"
            in result.output)
    assert "Traceback" not in result.output
    assert node_state(lab, HOST) == before[HOST]
    handed = lab.run(SITE, extra_vars={**extra, "podnet_take_over": [peer]})
    assert handed.rc == 0, handed.output
    (route,) = lab.json(HOST, "route", "show", peer)
    assert route["protocol"] in ("152", "podnet") and route["gateway"] == "172.30.0.13"
    assert lab.run(SITE, extra_vars=extra).rc == 0  # podnet's now: no hand-over needed any more
    assert foreign_state(lab) == lab.before


def test_a_foreign_bridge_podnet_wants_is_refused_and_left_alone(lab):
    """node2 grows a bridge named like flannel's, holding an address: the switch back to flannel fails on
    node2 (naming it) and leaves node2 exactly as it was; the other nodes converge."""
    lab.exec("node2", ["ip", "link", "add", "cni0", "type", "bridge"], check=True)
    lab.exec("node2", ["ip", "addr", "add", "10.99.1.1/24", "dev", "cni0"], check=True)
    before = node_state(lab, "node2")
    result = lab.run(SITE)
    assert result.rc != 0
    assert "device cni0 exists and is not podnet's (a bridge device with no alias" in result.output
    assert "Traceback" not in result.output
    assert node_state(lab, "node2") == before
    assert result.failed("node1") == 0 and result.failed("node3") == 0
    assert foreign_state(lab) == lab.before


def test_lookalikes_survive_a_reset(lab):
    result = lab.run(RESET)
    assert result.rc == 0, result.output
    assert foreign_state(lab) == lab.before
    for host in ("node1", "node2", "node3"):
        assert not rt_protos_file(lab, host).exists()
        routes = lab.json(host, "route", "show")
        assert [r for r in routes if r.get("protocol") in ("152", "podnet") and r["dst"] != FOREIGN_ROUTE] == []
    # node2's foreign cni0 is not podnet's either: reset leaves it with its address
    assert [i["local"] for i in lab.json("node2", "addr", "show", "dev", "cni0")[0]["addr_info"]] == ["10.99.1.1"]
    saved = lab.exec(HOST, ["iptables-save"]).stdout
    assert "PODNET-FORWARD" not in saved and "-A FORWARD -j PODNET-MINE" in saved
    assert os.path.isdir(bird_dir(lab))
