"""Adopting a running cluster (namespace lab): nodes programmed by hand as seed 003 does - flannel.1 with a random
MAC, permanent neighbour and fdb entries, routes `proto boot`, cni0, subnet.env, a pod on the bridge; or
calico-style, a pod behind a veth with its /32 route and proxy ARP, routes to the other nodes via their node IPs -
on subnets podnet would not have picked. podnet runs beside their pods' traffic, which the project's loss probe
measures (podnet_probe_pods: pods podnet did not wire).

site.yml refuses such a cluster before any node changes; playbooks/adopt.yml takes it over without losing a
probe, keeping every node's subnet, VTEP (same device, same MAC) and peers' entries, marking them podnet's; the
controller's files and the nodes' records then hold them, site.yml after it changes nothing, and a controller that
lost its files takes them back from the nodes."""
from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .labkit import LAB_NODE_IPS, Lab, lab_inventory, netns_exec, probed_runs, unique_prefix
from .modulekit import lab_state_dir
from .test_render_exact import differences, snapshot

pytestmark = pytest.mark.integration

HOSTS = ("node1", "node2", "node3")
# not the subnets podnet would allocate (10.244.0.0/24, 10.244.1.0/24, ...): adoption must read them
SUBNETS = {"node1": "10.244.5.0/24", "node2": "10.244.9.0/24", "node3": "10.244.2.0/24"}
HAND_POD = "hand"  # the pod podnet did not wire, on every node: <subnet>.200


def random_mac() -> str:
    """A locally administered unicast MAC, as flanneld's kernel picks for flannel.1."""
    first, *rest = secrets.token_bytes(6)
    return ":".join(f"{b:02x}" for b in [(first & 0xFE) | 0x02, *rest])


def host_ip(host: str, last: int) -> str:
    return str(ipaddress.IPv4Network(SUBNETS[host])[last])


def hand_pod_ns(lab: Lab, host: str) -> str:
    return f"{lab.prefix}-{host}-{HAND_POD}"


def program_flannel(lab: Lab, host: str, macs: dict[str, str]) -> None:
    """Seed 003's flannel-vxlan commands on one node, with the pod on cni0 and flanneld's subnet.env."""
    net = ipaddress.IPv4Network(SUBNETS[host])
    lines = [f"link add flannel.1 address {macs[host]} type vxlan id 1 local {LAB_NODE_IPS[host]} dev eth0 "
             "dstport 8472 nolearning",
             "link set flannel.1 up", f"address add {net.network_address}/32 dev flannel.1",
             "link add cni0 type bridge", f"address add {host_ip(host, 1)}/{net.prefixlen} dev cni0", "link set cni0 up"]
    for peer in HOSTS:
        if peer != host:
            vtep = ipaddress.IPv4Network(SUBNETS[peer]).network_address
            lines += [f"neigh add {vtep} dev flannel.1 lladdr {macs[peer]} nud permanent",
                      f"route add {SUBNETS[peer]} via {vtep} dev flannel.1 onlink"]
    node = lab.node_ns(host)
    netns_exec(node, ["ip", "-batch", "-"], input="\n".join(lines) + "\n", check=True)
    for peer in HOSTS:
        if peer != host:
            netns_exec(node, ["bridge", "fdb", "add", macs[peer], "dst", LAB_NODE_IPS[peer], "dev", "flannel.1"],
                       check=True)
    netns_exec(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    pod = hand_pod_ns(lab, host)
    netns_exec(node, ["ip", "link", "add", "vethhand", "type", "veth", "peer", "name", "eth0", "netns", pod], check=True)
    netns_exec(node, ["ip", "link", "set", "vethhand", "master", "cni0", "up"], check=True)
    netns_exec(pod, ["ip", "-batch", "-"], check=True, input="\n".join([
        "link set lo up", "link set eth0 up", f"address add {host_ip(host, 200)}/{net.prefixlen} dev eth0",
        f"route add default via {host_ip(host, 1)}"]) + "\n")
    env = Path(lab_state_dir(lab, host), "flannel", "subnet.env")
    env.parent.mkdir(parents=True, exist_ok=True)
    env.write_text(f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={host_ip(host, 1)}/{net.prefixlen}\n"
                   "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def program_calico(lab: Lab, host: str, _macs: dict[str, str]) -> None:
    """Seed 003's calico commands (BGP's routes made static) on one node: the pod behind a veth with its /32 route
    and proxy ARP, routes to the other nodes' subnets via their node IPs."""
    node, pod = lab.node_ns(host), hand_pod_ns(lab, host)
    netns_exec(node, ["ip", "link", "add", "calihand", "type", "veth", "peer", "name", "eth0", "netns", pod], check=True)
    lines = ["link set calihand up", f"route add {host_ip(host, 200)} dev calihand"]
    lines += [f"route add {SUBNETS[peer]} via {LAB_NODE_IPS[peer]}" for peer in HOSTS if peer != host]
    netns_exec(node, ["ip", "-batch", "-"], input="\n".join(lines) + "\n", check=True)
    netns_exec(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.calihand.proxy_arp=1"], check=True)
    netns_exec(pod, ["ip", "-batch", "-"], check=True, input="\n".join([
        "link set lo up", "link set eth0 up", f"address add {host_ip(host, 200)}/32 dev eth0",
        "route add 169.254.1.1 dev eth0", "route add default via 169.254.1.1"]) + "\n")


@contextlib.contextmanager
def hand_programmed(tmp_path: Path, backend: str) -> Iterator[tuple[Lab, Path, dict[str, str]]]:
    """A lab whose nodes someone else programmed for `backend` (podnet has run nowhere yet), its inventory (each
    node's hand-made pod in podnet_probe_pods) and the VTEP MACs; the hand-made pods' namespaces go with it."""
    prefix = unique_prefix()
    inventory = lab_inventory(tmp_path / "inventory", HOSTS)
    (inventory / "host_vars").mkdir()
    for host in HOSTS:
        pods = [{"name": HAND_POD, "netns": f"{prefix}-{host}-{HAND_POD}", "address": host_ip(host, 200)}]
        (inventory / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump({"podnet_probe_pods": pods}))
    macs = {host: random_mac() for host in HOSTS}
    program = program_flannel if backend == "flannel-vxlan" else program_calico
    with Lab(inventory=inventory, prefix=prefix, extra_vars={"podnet_backend": backend}) as lab:
        try:
            for host in HOSTS:
                subprocess.run(["ip", "netns", "add", hand_pod_ns(lab, host)], check=True)
                program(lab, host, macs)
            yield lab, inventory, macs
        finally:
            for host in HOSTS:
                subprocess.run(["ip", "netns", "delete", hand_pod_ns(lab, host)], capture_output=True, check=False)


def hand_pods_reach_each_other(lab: Lab) -> None:
    for host in HOSTS:
        for peer in HOSTS:
            if peer != host:
                netns_exec(hand_pod_ns(lab, host), ["ping", "-c", "1", "-W", "2", host_ip(peer, 200)], check=True)


def adopt_while_probing(lab: Lab, inventory: Path, report: Path) -> None:
    """adopt.yml while every hand-made pod probes the others: it succeeds and loses no probe."""
    results, rows = probed_runs(lab, report, [{"_playbook": "playbooks/adopt.yml"}], inventory=inventory)
    assert results[0].rc == 0, results[0].output
    assert len(rows) == 6 and all(row["sent"] > 20 for row in rows), rows
    assert [row for row in rows if row["lost"]] == [], rows


def routes(lab: Lab, host: str) -> dict[str, dict]:
    return {r["dst"]: r for r in lab.json(host, "route", "show") if r["dst"] in SUBNETS.values()}


def test_a_flannel_cluster_programmed_by_hand_is_adopted_without_losing_a_probe(tmp_path):
    with hand_programmed(tmp_path, "flannel-vxlan") as (lab, inventory, macs):
        hand_pods_reach_each_other(lab)
        before = {host: lab.json(host, "-d", "link", "show", "flannel.1")[0] for host in HOSTS}
        entries = {host: (lab.json(host, "neigh", "show", "dev", "flannel.1"),
                          lab.json(host, "fdb", "show", "dev", "flannel.1", tool="bridge")) for host in HOSTS}

        # an ordinary run refuses the cluster, whole: no node changes, no lease is written
        refused = lab.run("playbooks/site.yml")
        assert refused.rc != 0 and "playbooks/adopt.yml" in refused.output, refused.output
        assert all(f"{host}: flannel.1, cni0" in refused.output for host in HOSTS), refused.output
        assert not Path(lab_state_dir(lab), "leases.json").exists()
        assert all("ifalias" not in lab.json(host, "-d", "link", "show", "flannel.1")[0] for host in HOSTS)
        assert all(r.get("protocol", "boot") == "boot" for host in HOSTS for dst, r in routes(lab, host).items()
                   if dst != SUBNETS[host])

        adopt_while_probing(lab, inventory, tmp_path / "adopt.json")

        for host in HOSTS:
            vtep = lab.json(host, "-d", "link", "show", "flannel.1")[0]
            # the same device, with flanneld's MAC, now podnet's
            assert (vtep["ifindex"], vtep["address"], vtep["ifalias"]) == (before[host]["ifindex"], macs[host],
                                                                           "podnet:vtep")
            assert (lab.json(host, "neigh", "show", "dev", "flannel.1"),
                    lab.json(host, "fdb", "show", "dev", "flannel.1", tool="bridge")) == entries[host]
            assert {dst: (r.get("gateway"), r.get("protocol")) for dst, r in routes(lab, host).items()
                    if dst != SUBNETS[host]} == {SUBNETS[peer]: (SUBNETS[peer].split("/")[0], "152")
                                                 for peer in HOSTS if peer != host}
            assert lab.json(host, "link", "show", "vethhand")[0]["master"] == "cni0"  # left alone, still wired
            record = json.loads(Path(lab_state_dir(lab, host), "node.json").read_text())
            assert (record["subnet"], record["vtep_mac"]) == (SUBNETS[host], macs[host])
        state = Path(lab_state_dir(lab))
        assert json.loads((state / "leases.json").read_text()) == SUBNETS
        assert json.loads((state / "vtep_macs.json").read_text()) == macs
        hand_pods_reach_each_other(lab)

        again = lab.run("playbooks/site.yml")
        assert again.rc == 0 and [again.changed(host) for host in HOSTS] == [0, 0, 0], again.output

        # a controller that lost its files (or another checkout) takes them back from the nodes' records
        kernel = snapshot(lab)
        (state / "leases.json").unlink()
        (state / "vtep_macs.json").unlink()
        recovered = lab.run("playbooks/site.yml")
        assert recovered.rc == 0, recovered.output
        assert differences(kernel, snapshot(lab)) == []  # no node changed: only the controller's two files
        assert json.loads((state / "leases.json").read_text()) == SUBNETS
        assert json.loads((state / "vtep_macs.json").read_text()) == macs

        # render.yml gives the adopted MACs too: a rendered script is what a run applies
        rendered = lab.run("playbooks/render.yml", extra_vars={"podnet_render_dir": str(tmp_path / "render")})
        assert rendered.rc == 0, rendered.output
        script = (tmp_path / "render" / "node1.sh").read_text()
        assert f"address {macs['node1']}" in script and f"lladdr {macs['node2']}" in script, script


def test_a_calico_style_cluster_is_adopted_without_losing_a_probe(tmp_path):
    with hand_programmed(tmp_path, "calico-bgp") as (lab, inventory, _macs):
        hand_pods_reach_each_other(lab)
        adopt_while_probing(lab, inventory, tmp_path / "adopt.json")
        for host in HOSTS:
            assert {dst: (r.get("gateway"), r.get("protocol")) for dst, r in routes(lab, host).items()} == \
                {SUBNETS[peer]: (LAB_NODE_IPS[peer], "152") for peer in HOSTS if peer != host}
            # the hand-made pod's veth and /32 route are not podnet's: left as they were
            hand = [r for r in lab.json(host, "route", "show", host_ip(host, 200)) if r.get("dev") == "calihand"]
            assert hand and hand[0].get("protocol", "boot") == "boot", hand  # ip -j leaves out the default
        assert json.loads(Path(lab_state_dir(lab), "leases.json").read_text()) == SUBNETS
        again = lab.run("playbooks/site.yml")
        assert again.rc == 0 and [again.changed(host) for host in HOSTS] == [0, 0, 0], again.output
