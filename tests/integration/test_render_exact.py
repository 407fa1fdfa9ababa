"""Render is exact: a namespace-lab cluster built only by running each node's rendered script (render.yml)
works (verify.yml: no drift, every pod pair answers), and a converge (site.yml) afterwards changes nothing
in any node's or pod's kernel state - no device recreated (ifindex kept), no route, address, neighbour, fdb
entry, sysctl or iptables rule different - nor in the files the run writes.

One lab per backend the namespace lab can run (the IPIP backend needs the guest's kernel).
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .labkit import REPO_ROOT, Lab, netns_exec, netns_json, netns_json_batch
from .test_calico_bird import CONVERGE_TIMEOUT, bird_routes, bird_running

pytestmark = pytest.mark.integration

RENDER = REPO_ROOT / "playbooks" / "render.yml"
SITE = REPO_ROOT / "playbooks" / "site.yml"
VERIFY = REPO_ROOT / "playbooks" / "verify.yml"
HOSTS = ("node1", "node2", "node3")
PODS = ("pod1", "pod2")
# presets, and canal over the other transports the lab can run
BACKENDS = {name: {"podnet_backend": name} for name in ("flannel-vxlan", "flannel-host-gw", "calico-bgp",
                                                        "calico-vxlan", "canal", "romana-style", "weave-style")}
BACKENDS["canal-host-gw"] = {"podnet_backend": "canal", "podnet_transport": "host-gw"}
BACKENDS["canal-bgp"] = {"podnet_backend": "canal", "podnet_transport": "bgp"}
# BGP on BIRD: the script writes podnet's bird.conf and starts BIRD, as a run does
BACKENDS["calico-bgp-bird"] = {"podnet_backend": "calico-bgp", "podnet_calico_bgp": "bird"}
# The sysctls a backend sets: forwarding, and felix's per-interface settings on the pods' host ends.
SYSCTLS = re.compile(r"net\.ipv4\.(ip_forward|conf\.[^.]+\.(proxy_arp|forwarding|rp_filter|route_localnet)"
                     r"|neigh\.[^.]+\.proxy_delay)")


def _untimed(value: Any) -> Any:
    """Without what runs on its own clock: bridge timers, and the IPv6 link-local addresses and routes the
    kernel adds once duplicate address detection ends (podnet makes no IPv6 state)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not k.endswith("_timer") and k != "operstate"}
    if isinstance(value, list):
        return [_untimed(v) for v in value
                if not (isinstance(v, dict) and str(v.get("local") or v.get("dst") or "").startswith("fe80:"))]
    return value


# The sysctls above, read in the namespace as `sysctl -a` names them (a "." in a device name shown as "/"),
# after its iptables-save: one process for both, not `sysctl -a`'s walk through every file.
_RULES_AND_SYSCTLS = ("iptables-save && echo '#podnet-sysctls' && cd /proc/sys && grep -H . net/ipv4/ip_forward "
                      "net/ipv4/conf/*/proxy_arp net/ipv4/conf/*/forwarding net/ipv4/conf/*/rp_filter "
                      "net/ipv4/conf/*/route_localnet net/ipv4/neigh/*/proxy_delay")


def _sysctl_line(line: str) -> str:
    """"net/ipv4/conf/flannel.1/forwarding:1" -> "net.ipv4.conf.flannel/1.forwarding = 1" (sysctl's form)."""
    path, value = line.split(":", 1)
    return ".".join(part.replace(".", "/") for part in path.split("/")) + " = " + value


def _net(ns: str) -> dict[str, Any]:
    """One namespace's state as podnet could change it. Counters and what traffic changes (learned
    neighbours and fdb entries) are left out; ifindex stays in, so a device made again shows."""
    links, addresses, routes, neighbours = netns_json_batch(ns, "link show", "addr show", "route show table all",
                                                            "neigh show")
    for link in links:
        link.pop("stats", None), link.pop("stats64", None)
    neigh = [n for n in neighbours if "PERMANENT" in n.get("state", [])]
    fdb = [f for f in netns_json(ns, "fdb", "show", tool="bridge") if f.get("state") in ("permanent", "static")]
    rules, sysctl = netns_exec(ns, ["sh", "-c", _RULES_AND_SYSCTLS], check=True).stdout.split("#podnet-sysctls\n")
    return _untimed({
        "link": links,
        "addr": addresses,
        "route": routes,
        "neigh": neigh,
        "fdb": fdb,
        # comment lines carry the time of the dump; counters are [packets:bytes]
        "iptables": [re.sub(r"\[\d+:\d+\]", "", r) for r in rules.splitlines() if not r.startswith("#")],
        "sysctl": sorted(line for line in map(_sysctl_line, sysctl.splitlines())
                         if SYSCTLS.fullmatch(line.split(" = ")[0])),
    })


def _files(lab: Lab, host: str) -> dict[str, Any]:
    """The files a node's run writes (the lab keeps each node's under its state folder)."""
    base = Path(f"/run/podnet-lab/{lab.prefix}/{host}")
    out = {}
    for path in (base / "flannel" / "subnet.env", base / "iproute2" / "rt_protos.d" / "podnet.conf",
                 base / "bird" / "bird.conf", base / "node.json"):
        if path.exists():
            out[str(path)] = (path.read_text(), stat.S_IMODE(path.stat().st_mode))
    return out


def wait_for_bird(lab: Lab) -> None:
    """Until every node's BIRD runs and has learned a route to each other node's block (render.yml keeps no
    lease file to say which blocks: the count tells). The script's `bird` returns once it has forked: the
    child writes its pid file a moment later."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while any(not bird_running(lab, host) or len(bird_routes(lab, host)) != len(HOSTS) - 1 for host in HOSTS):
        assert time.monotonic() < deadline, {host: (bird_running(lab, host), bird_routes(lab, host))
                                             for host in HOSTS}
        time.sleep(0.2)


def snapshot(lab: Lab) -> dict[str, Any]:
    return {host: {"node": _net(lab.node_ns(host)),
                   "pods": {pod: _net(lab.pod_ns(host, pod)) for pod in PODS},
                   "files": _files(lab, host)} for host in HOSTS}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [line for key in sorted(set(a) | set(b), key=str)
                for line in differences(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list) and a != b:
        return [f"{path}: only before {[x for x in a if x not in b]}; only after {[x for x in b if x not in a]}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_cluster_built_from_the_rendered_scripts_is_what_site_yml_converges_to(backend, tmp_path):
    with Lab(extra_vars=BACKENDS[backend]) as lab:
        kernel = os.uname().release  # the offload decision is the nodes' kernel's
        rendered = lab.run(RENDER, extra_vars={"podnet_render_dir": str(tmp_path),
                                               "podnet_render_kernel": kernel})
        assert rendered.rc == 0, rendered.output
        for host in HOSTS:
            # a fresh node: lab_up.yml made the pods' namespaces (as a container runtime would); the script
            # makes them itself
            for pod in PODS:
                subprocess.run(["ip", "netns", "del", lab.pod_ns(host, pod)], check=True)
            script = tmp_path / f"{host}.sh"
            # in the node's network only: `ip netns exec` would also give the script a mount namespace of its
            # own, where the pod namespaces it makes would stay
            built = subprocess.run(["nsenter", f"--net=/run/netns/{lab.node_ns(host)}", "sh", str(script)],
                                   capture_output=True, text=True, timeout=120)
            assert built.returncode == 0, (host, built.stderr, script.read_text())
        if BACKENDS[backend].get("podnet_calico_bgp") == "bird":  # the routes come once BIRD has learned them
            wait_for_bird(lab)
        before = snapshot(lab)

        # the script-built cluster is the planned one, and it carries traffic
        verified = lab.run(VERIFY)
        assert verified.rc == 0, verified.output

        converged = lab.run(SITE)
        assert converged.rc == 0, converged.output
        after = snapshot(lab)
        assert differences(before, after) == [], "\n".join(differences(before, after))
        # what was compared is the backend's state, not an empty node
        node1 = before["node1"]["node"]
        assert [r for r in node1["route"] if r.get("protocol") == "152"], node1["route"]
        assert len({link["ifname"] for link in node1["link"]}) > 3
        assert any(path.endswith("/node.json") for path in before["node1"]["files"])  # the script wrote the record
