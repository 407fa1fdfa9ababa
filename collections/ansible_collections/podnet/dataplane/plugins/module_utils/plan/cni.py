# Copyright: podnet contributors
# Apache License 2.0
"""Render a node's CNI network configuration list (conflist) from its podnet plan.

Pure functions, no host access: `render_conflist(node)` takes one node of the plan (the `podnet_node`
fact, i.e. `plan_cluster(...)["nodes"][host]`) and returns the conflist as a dict, ready for
`json.dumps`, for the reference plugins of containernetworking/plugins:

- flannel-style backends (pod mode "bridge": flannel-vxlan, flannel-host-gw): the ``bridge`` plugin on
  the node's pod bridge (``cni0``) with ``isGateway`` (the bridge keeps the subnet's first address, as
  podnet sets it), ``ipMasq: false`` (podnet installs flannel's own masquerade rules), ``hairpinMode`` and
  ``host-local`` IPAM on the node's subnet with a route to the cluster CIDR - what flannel's CNI plugin
  hands to ``bridge`` as its delegate.
- calico-style backends (pod mode "routed": calico-*, canal, romana-style, weave-style): the ``ptp``
  plugin with ``host-local`` IPAM. ptp is as close to calico's wiring as the reference plugins get:
  like calico, the pod's veth gets a host route to the pod's /32 on the node and the pod reaches
  everything through a link-scope route to one gateway address. Unlike calico, that gateway is not
  ``169.254.1.1`` answered by proxy ARP but a real address (the subnet's first, which podnet reserves
  and never gives to a pod) that ptp puts as a /32 on every host-side veth, so proxy ARP is not needed.
  ``169.254.1.1`` itself cannot be used: host-local accepts it as gateway, but ptp installs the IPAM
  routes ("cluster CIDR via gateway") while only the subnet route exists in the pod, and the kernel
  refuses them ("network is unreachable"); without routes the pod would reach only its own node.

In both cases IPAM hands out only addresses that podnet's own lab pods (``node.pods``) do not use,
nor the gateway, nor anything in `exclude`: the free addresses are split into ``rangeStart``/``rangeEnd``
ranges of one range set (host-local allows several ranges of the same subnet if they do not overlap).
"""
from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any

DEFAULT_NAME = "podnet"
DEFAULT_CNI_VERSION = "1.0.0"
DEFAULT_DEST = "/etc/cni/net.d/10-podnet.conflist"
DEFAULT_BRIDGE = "cni0"


class CNIError(ValueError):
    """The node plan cannot be turned into a conflist."""


def free_ranges(subnet: str, used: Iterable[str]) -> list[tuple[str, str]]:
    """(first, last) of every run of usable host addresses of `subnet` that are not in `used`."""
    net = ipaddress.IPv4Network(subnet, strict=False)
    taken = {ipaddress.IPv4Address(str(a).split("/", maxsplit=1)[0]) for a in used}
    runs: list[tuple[str, str]] = []
    start = last = None
    for addr in net.hosts():
        if addr in taken:
            if start is not None:
                runs.append((str(start), str(last)))
                start = None
            continue
        if start is None:
            start = addr
        last = addr
    if start is not None:
        runs.append((str(start), str(last)))
    return runs


def _node_field(node: dict[str, Any], key: str) -> Any:
    if not isinstance(node, dict) or node.get(key) in (None, ""):
        raise CNIError(f"the node plan has no {key!r} (pass the podnet_node fact of a planned node)")
    return node[key]


def ipam_config(node: dict[str, Any], gateway: str, data_dir: str | None = None,
                routes: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """host-local IPAM on the node's subnet, skipping the gateway, the lab pods and `exclude`."""
    subnet = str(ipaddress.IPv4Network(_node_field(node, "subnet"), strict=False))
    used = [gateway, *(p["address"] for p in node.get("pods") or [] if p.get("address")), *exclude]
    runs = free_ranges(subnet, used)
    if not runs:
        raise CNIError(f"subnet {subnet} has no address left for CNI pods (lab pods and exclusions use all)")
    ranges = [{"subnet": subnet, "rangeStart": first, "rangeEnd": last, "gateway": gateway}
              for first, last in runs]
    if routes is None:
        routes = [str(_node_field(node, "cluster_cidr"))]
    ipam: dict[str, Any] = {"type": "host-local", "ranges": [ranges], "routes": [{"dst": r} for r in routes]}
    if data_dir:
        ipam["dataDir"] = data_dir
    return ipam


def render_conflist(node: dict[str, Any], name: str = DEFAULT_NAME, cni_version: str = DEFAULT_CNI_VERSION,
                    data_dir: str | None = None, mtu: int | None = None, default_route: bool = False,
                    exclude: Iterable[str] = (), extra_plugins: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The node's conflist (see the module docstring). `mtu` defaults to the plan's MTU."""
    pod_mode = _node_field(node, "pod_mode")
    subnet = ipaddress.IPv4Network(_node_field(node, "subnet"), strict=False)
    cluster = str(_node_field(node, "cluster_cidr"))
    routes = [cluster] + (["0.0.0.0/0"] if default_route else [])
    mtu = mtu or node.get("mtu") or node.get("render_mtu")
    if pod_mode == "bridge":
        bridge = node.get("bridge") or {}
        gateway = str(bridge.get("address") or next(subnet.hosts())).split("/", maxsplit=1)[0]
        plugin: dict[str, Any] = {
            "type": "bridge",
            "bridge": bridge.get("name") or DEFAULT_BRIDGE,
            "isGateway": True,
            "isDefaultGateway": False,
            "ipMasq": False,
            "hairpinMode": True,
        }
    elif pod_mode == "routed":
        gateway = str(next(subnet.hosts()))
        plugin = {"type": "ptp", "ipMasq": False}
    else:
        raise CNIError(f"unknown pod mode {pod_mode!r} (expected 'bridge' or 'routed')")
    if mtu:
        plugin["mtu"] = int(mtu)
    plugin["ipam"] = ipam_config(node, gateway, data_dir=data_dir, routes=routes, exclude=exclude)
    return {"cniVersion": cni_version, "name": name, "plugins": [plugin, *[dict(p) for p in extra_plugins]]}


def network_config(conflist: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """The single-plugin network configuration a runtime feeds plugin `index` of the list on stdin
    (cniVersion and name added, no prevResult)."""
    return {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][index]}


def dumps(conflist: dict[str, Any]) -> str:
    """The file content: stable JSON, two-space indent, trailing newline."""
    return json.dumps(conflist, indent=2) + "\n"
