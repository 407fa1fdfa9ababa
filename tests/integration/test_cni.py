"""Real CNI plugins on a podnet-converged lab: playbooks/cni.yml writes each node's conflist
(podnet.dataplane.cni_config), then pods are attached by invoking the Debian containernetworking plugins
(/usr/lib/cni/bridge or ptp, with host-local IPAM) inside the node namespace, exactly as a runtime would:
CNI_COMMAND=ADD, the network config on stdin. Those pods must reach podnet's lab pods and each other
across nodes, survive a verify.yml run (podnet leaves foreign veths alone), and disappear with DEL
(veth, address and IPAM lease gone).

flannel-vxlan uses bridge on cni0; calico-bgp (static routes) uses ptp, whose gateway is the subnet's
first address on each host veth rather than calico's proxy-ARP'd 169.254.1.1 (see module_utils/plan/cni.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from .labkit import Lab, list_netns, netns_exec, netns_json

pytestmark = pytest.mark.integration

CNI_BIN = Path("/usr/lib/cni")
NODES = ("node1", "node2", "node3")
CNI_NODES = ("node1", "node2")  # nodes that get a CNI pod
PLUGIN = {"flannel-vxlan": "bridge", "calico-bgp": "ptp"}

if not (CNI_BIN / "bridge").exists():
    pytest.skip("the containernetworking plugins (/usr/lib/cni) are not installed", allow_module_level=True)


def cni_dir(lab: Lab, host: str) -> Path:
    return Path(f"/run/podnet-lab/{lab.prefix}/{host}/cni")


def cni_vars() -> dict[str, str]:
    # templated per host by Ansible
    return {"podnet_cni_conf_file": "{{ podnet_lab_state_dir }}/{{ inventory_hostname }}/cni/10-podnet.conflist",
            "podnet_cni_ipam_dir": "{{ podnet_lab_state_dir }}/{{ inventory_hostname }}/cni/ipam"}


@pytest.fixture(scope="module", params=list(PLUGIN))
def cni_lab(request):
    backend = request.param
    lab = Lab(extra_vars={"podnet_backend": backend})
    with lab:
        lab.backend = backend
        result = lab.run("playbooks/site.yml")
        assert result.rc == 0, result.output
        result = lab.run("playbooks/cni.yml", extra_vars=cni_vars())
        assert result.rc == 0, result.output
        assert result.changed() == len(NODES), result.output
        again = lab.run("playbooks/cni.yml", extra_vars=cni_vars())
        assert again.rc == 0 and again.changed() == 0, again.output
        yield lab
    assert list_netns(lab.prefix) == []


def conflist(lab: Lab, host: str) -> dict:
    return json.loads((cni_dir(lab, host) / "10-podnet.conflist").read_text())


def cni(lab: Lab, host: str, command: str, pod_ns: str, conf: dict) -> dict:
    """Invoke the conflist's main plugin inside the node namespace, as a container runtime would."""
    plugin = conf["plugins"][0]
    stdin = json.dumps({"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin})
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": pod_ns, "CNI_NETNS": f"/run/netns/{pod_ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(CNI_BIN), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(["ip", "netns", "exec", lab.node_ns(host), str(CNI_BIN / plugin["type"])],
                          input=stdin, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{plugin['type']} {command} on {host}: {proc.stdout} {proc.stderr}"
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def host_veth(result: dict, conf: dict) -> str:
    """The node-side veth in an ADD result (bridge also lists the bridge; the pod's end has a sandbox)."""
    bridge = conf["plugins"][0].get("bridge")
    (name,) = [i["name"] for i in result["interfaces"] if "sandbox" not in i and i["name"] != bridge]
    return name


def pod_address(ns: str) -> str:
    addrs = netns_json(ns, "addr", "show", "dev", "eth0")[0]["addr_info"]
    return next(a["local"] for a in addrs if a["family"] == "inet")


def ping(ns: str, address: str) -> bool:
    return netns_exec(ns, ["ping", "-c", "2", "-i", "0.2", "-W", "2", address]).returncode == 0


def test_cni_pods_reach_podnet_pods_and_are_removed_by_del(cni_lab: Lab):
    lab = cni_lab
    kind = PLUGIN[lab.backend]
    confs = {h: conflist(lab, h) for h in NODES}
    for host, conf in confs.items():
        path = cni_dir(lab, host) / "10-podnet.conflist"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        plugin = conf["plugins"][0]
        assert plugin["type"] == kind
        assert plugin["ipam"]["dataDir"] == str(cni_dir(lab, host) / "ipam")
        lab_pods = {pod_address(lab.pod_ns(host, p)) for p in ("pod1", "pod2")}
        for rng in plugin["ipam"]["ranges"][0]:  # IPAM never hands out a lab pod's address
            first, last = (ipaddress.ip_address(rng[k]) for k in ("rangeStart", "rangeEnd"))
            assert not any(first <= ipaddress.ip_address(a) <= last for a in lab_pods)

    # ADD: one pod per node, named with the lab prefix so that lab_down removes it whatever happens
    pods, results = {}, {}
    for host in CNI_NODES:
        pods[host] = f"{lab.node_ns(host)}-cni1"
        subprocess.run(["ip", "netns", "add", pods[host]], check=True)
        results[host] = cni(lab, host, "ADD", pods[host], confs[host])
    addresses = {h: r["ips"][0]["address"].split("/")[0] for h, r in results.items()}
    for host, address in addresses.items():
        assert ipaddress.ip_address(address) in ipaddress.ip_network(confs[host]["plugins"][0]["ipam"]
                                                                     ["ranges"][0][0]["subnet"])
        assert pod_address(pods[host]) == address
        lease = cni_dir(lab, host) / "ipam" / "podnet" / address
        assert lease.exists()
        if kind == "ptp":  # the host veth holds the gateway as /32; the pod reaches it on-link
            gateway = results[host]["ips"][0]["gateway"]
            veth = host_veth(results[host], confs[host])
            veth_addrs = [a["local"] for a in lab.json(host, "addr", "show", "dev", veth)[0]["addr_info"]
                          if a["family"] == "inet"]
            assert veth_addrs == [gateway]
            routes = {r["dst"]: r for r in netns_json(pods[host], "route", "show")}
            assert routes[gateway].get("scope") == "link" and routes["10.244.0.0/16"]["gateway"] == gateway
        else:  # bridge: the host veth is a port of podnet's cni0
            veth = host_veth(results[host], confs[host])
            assert lab.json(host, "link", "show", "dev", veth)[0].get("master") == "cni0"

    # CNI pod -> podnet's lab pods on every other node, and back; CNI pod <-> CNI pod across nodes
    failures = []
    for host in CNI_NODES:
        for other in NODES:
            if other == host:
                continue
            for pod in ("pod1", "pod2"):
                target_ns = lab.pod_ns(other, pod)
                target = pod_address(target_ns)
                if not ping(pods[host], target):
                    failures.append(f"{pods[host]} -> {target_ns} ({target})")
                if not ping(target_ns, addresses[host]):
                    failures.append(f"{target_ns} -> {pods[host]} ({addresses[host]})")
    if not ping(pods["node1"], addresses["node2"]):
        failures.append(f"{pods['node1']} -> {pods['node2']}")
    assert not failures, failures

    # podnet's own check does not mistake the CNI pods for drift, nor lose connectivity because of them
    verify = lab.run("playbooks/verify.yml")
    assert verify.rc == 0, verify.output

    # DEL: the plugin removes the veth, the pod's address and the IPAM lease
    for host in CNI_NODES:
        veth = host_veth(results[host], confs[host])
        cni(lab, host, "DEL", pods[host], confs[host])
        assert lab.exec(host, ["ip", "link", "show", veth]).returncode != 0, f"{veth} still exists"
        assert netns_exec(pods[host], ["ip", "link", "show", "eth0"]).returncode != 0
        assert not (cni_dir(lab, host) / "ipam" / "podnet" / addresses[host]).exists()
        # a second DEL is harmless, as the CNI spec requires
        cni(lab, host, "DEL", pods[host], confs[host])
        subprocess.run(["ip", "netns", "del", pods[host]], check=True)
