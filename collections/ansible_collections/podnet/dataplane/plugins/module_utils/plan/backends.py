# Copyright: podnet contributors
# Apache License 2.0
"""The backends podnet builds, as compositions: pod wiring x transport x flannel's node facts.

The seed table's rows are presets; a transport may be swapped (canal over host-gw, BGP or IPIP) and the pod
wiring too (flannel's VXLAN with calico's routed wiring, calico's VXLAN with flannel's bridge), and
combinations podnet does not build are refused here, in the planner, before any node is touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    IPIP_OVERHEAD,
    UDP_OVERHEAD,
    VXLAN_OVERHEAD,
    WIREGUARD_OVERHEAD,
)

FLANNEL_BACKENDS = ("flannel-vxlan", "flannel-host-gw", "flannel-udp", "flannel-wireguard")
CALICO_BACKENDS = ("calico-bgp", "calico-ipip", "calico-vxlan", "calico-wireguard")
# The seed table's other rows: canal (flannel's VXLAN between nodes, calico's pod wiring and policy),
# romana (host-gw routing + policy) and weave (a VXLAN mesh + policy) — as kernel state, no daemons.
POLICY_STYLE_BACKENDS = ("canal", "romana-style", "weave-style")
KNOWN_BACKENDS = FLANNEL_BACKENDS + CALICO_BACKENDS + POLICY_STYLE_BACKENDS


@dataclass(frozen=True)
class Profile:
    """A backend as a composition: how pods are wired on the node, how packets reach the other nodes' pods,
    and whether flannel's node facts (masquerade rules, subnet.env) are kept. Presets are the seed table's
    rows; podnet_transport changes the transport of one (canal over host-gw, BGP or IPIP, as seed 000 says),
    podnet_pod_wiring its pod wiring."""

    pod_mode: str  # "bridge": cni0 + veths (flannel); "routed": /32 routes + proxy ARP (calico)
    # "vxlan", "ipip", "udp" (foo-over-UDP, flannel's udp wire format), "wireguard" (encrypted), "host-gw" (plain
    # routes via the peers) or "bgp" (static or BIRD)
    transport: str
    vtep: str = ""  # VXLAN device name; "{vni}" is filled in
    vni: int = 1
    port: int = 8472
    direct_var: str = ""  # variable that turns on plain routing to peers on the same underlay subnet
    flannel_env: bool = False  # flannel runs the network: its masquerade rules and subnet.env

    @property
    def encap(self) -> str | None:
        return self.transport if self.transport in ("vxlan", "ipip", "udp", "wireguard") else None

    @property
    def overhead(self) -> int:
        """Bytes the encapsulation costs, taken off the underlay MTU."""
        return {"vxlan": VXLAN_OVERHEAD, "ipip": IPIP_OVERHEAD, "udp": UDP_OVERHEAD,
                "wireguard": WIREGUARD_OVERHEAD}.get(self.transport, 0)

    @property
    def wireguard_device(self) -> str:
        """flannel's name for its WireGuard device where flannel runs the network (canal too), else calico's."""
        return "flannel-wg" if self.flannel_env else "wireguard.cali"


FLANNEL_VXLAN = {"vtep": "flannel.{vni}", "vni": 1, "port": 8472}
CALICO_VXLAN = {"vtep": "vxlan.calico", "vni": 4096, "port": 4789}
PROFILES = {
    "flannel-vxlan": Profile("bridge", "vxlan", **FLANNEL_VXLAN, direct_var="podnet_flannel_directrouting",
                             flannel_env=True),
    "flannel-host-gw": Profile("bridge", "host-gw", flannel_env=True),
    # flannel's udp backend on the wire (UDP 8285, the inner IPv4 packet as payload), made by the kernel's
    # foo-over-UDP instead of flanneld's TUN device and userspace copy
    "flannel-udp": Profile("bridge", "udp", flannel_env=True),
    # flannel's wireguard backend and calico's WireGuard mode: the pods' packets encrypted between the nodes
    "flannel-wireguard": Profile("bridge", "wireguard", flannel_env=True),
    "calico-bgp": Profile("routed", "bgp"),
    "calico-ipip": Profile("routed", "ipip", direct_var="podnet_calico_crosssubnet"),
    "calico-vxlan": Profile("routed", "vxlan", **CALICO_VXLAN, direct_var="podnet_calico_crosssubnet"),
    "calico-wireguard": Profile("routed", "wireguard"),
    "canal": Profile("routed", "vxlan", **FLANNEL_VXLAN, flannel_env=True),
    "romana-style": Profile("routed", "host-gw"),
    # weave's fast datapath is a VXLAN mesh on UDP 6784 (device vxlan-6784).
    "weave-style": Profile("routed", "vxlan", vtep="vxlan-6784", vni=6784, port=6784),
}
TRANSPORTS = ("vxlan", "host-gw", "ipip", "bgp", "udp", "wireguard")
WIRINGS = ("bridge", "routed")
# Bridge wiring is flannel's, whose backends are VXLAN, host-gw, UDP and WireGuard; IPIP and BGP come with
# calico's wiring.
WIRING_TRANSPORTS = {"bridge": ("vxlan", "host-gw", "udp", "wireguard"), "routed": TRANSPORTS}


def profile_for(backend: str, transport: Any = None, wiring: Any = None) -> Profile:
    """The preset, with its transport replaced when podnet_transport names another and its pod wiring when
    podnet_pod_wiring does (ValueError: a combination podnet does not build, with the reason)."""
    preset = PROFILES[backend]
    if transport not in (None, "") and transport not in TRANSPORTS:
        raise ValueError(f"podnet_transport: {transport!r} is not a transport; choose one of {', '.join(TRANSPORTS)}")
    if wiring not in (None, "") and wiring not in WIRINGS:
        raise ValueError(f"podnet_pod_wiring: {wiring!r} is not a pod wiring; choose one of {', '.join(WIRINGS)}")
    asked = " with podnet_pod_wiring: bridge" if wiring else ""
    transport = transport or preset.transport
    wiring = wiring or preset.pod_mode
    if transport not in WIRING_TRANSPORTS[wiring]:
        *others, last = WIRING_TRANSPORTS["bridge"]
        raise ValueError(f"{backend}{asked} wires pods to a bridge (flannel's way), which podnet combines with "
                         f"{', '.join(others)} or {last} only; {transport} comes with the routed wiring of calico, "
                         "canal and the other routed backends (podnet_pod_wiring: routed)")
    if transport == preset.transport:
        return Profile(wiring, transport, preset.vtep, preset.vni, preset.port, preset.direct_var, preset.flannel_env)
    vxlan = (FLANNEL_VXLAN if preset.flannel_env else CALICO_VXLAN) if transport == "vxlan" else {}
    direct = {"vxlan": "podnet_flannel_directrouting" if preset.flannel_env else "podnet_calico_crosssubnet",
              "ipip": "podnet_calico_crosssubnet"}.get(transport, "")
    return Profile(wiring, transport, **vxlan, direct_var=direct, flannel_env=preset.flannel_env)
