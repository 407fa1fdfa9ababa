# Copyright: podnet contributors
# Apache License 2.0
"""Turn the plain-data shapes that modules take (and the planner emits) into kernel objects.

Modules and the render filters both go through these functions, so what `render.yml` prints is by
construction what a module run writes.
"""
from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    PODNET_RTPROTO,
    Address,
    FdbEntry,
    FouPort,
    IpipInfo,
    KObject,
    Link,
    Neighbour,
    Route,
    Sysctl,
    VxlanInfo,
    WireguardDevice,
    WireguardPeer,
    owner_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import shell_line

VXLAN_OVERHEAD = 50
IPIP_OVERHEAD = 20
UDP_OVERHEAD = 28  # foo-over-UDP: the outer IPv4 header and a UDP header, as flannel's udp backend (MTU - 28)
# The UDP transport's device: flannel's udp backend names its TUN device so (podnet's is an IPIP device with
# foo-over-UDP encapsulation, but routes and tools show the name flannel users know).
UDP_DEVICE = "flannel0"
# WireGuard over an IPv4 underlay: outer IPv4 (20) + UDP (8) + WireGuard's data header (16) + its
# authentication tag (16), as flannel's and calico's WireGuard MTUs
WIREGUARD_OVERHEAD = 60
WIREGUARD_PORT = 51820
POD_ALIAS_ROLE = "pod"


def normalize_mac(mac: str) -> str:
    return mac.strip().lower()


def host_veth_name(netns: str, interface: str = "eth0") -> str:
    """Stable host-side veth name for a pod, `veth` + 8 hex digits like the CNI bridge plugin's
    (15-character limit), derived from the pod's namespace so every run picks the same name."""
    return "veth" + hashlib.sha256(f"{netns}/{interface}".encode()).hexdigest()[:8]


def calico_veth_name(netns: str, interface: str = "eth0") -> str:
    """Host-side veth name in calico's style: `cali` + 11 hex digits (15 characters)."""
    return "cali" + hashlib.sha256(f"{netns}/{interface}".encode()).hexdigest()[:11]


def vtep_objects(vtep: dict[str, Any]) -> list[KObject]:
    """The VXLAN device and its /32 address.  `underlay_interface`/`mtu` may be None when rendering
    without host access: the kernel then derives the MTU from the underlay device as `ip` would."""
    link = Link(
        name=vtep["name"],
        kind="vxlan",
        mtu=vtep.get("mtu"),
        mac=normalize_mac(vtep["mac"]) if vtep.get("mac") else None,
        up=True,
        alias=owner_alias("vtep"),
        vxlan=VxlanInfo(vni=vtep["vni"], port=vtep["port"], local=vtep.get("local"),
                        underlay=vtep.get("underlay_interface"), learning=bool(vtep.get("learning"))),
    )
    objs: list[KObject] = [link]
    if vtep.get("address"):
        objs.append(Address(dev=vtep["name"], cidr=str(ipaddress.ip_interface(vtep["address"]))))
    return objs


def tunnel_objects(tunnel: dict[str, Any]) -> list[KObject]:
    """calico's IPIP device: the fallback tunl0 (created when the ipip module loads), up, with the
    tunnel MTU and a /32 from the node's block as the source of host-originated tunnel traffic.

    With `fou_port`, the UDP transport instead: an IPIP device of podnet's own (tunnel["name"]) that puts every
    packet into a UDP datagram from and to that port (checksummed) - the bytes flannel's udp backend sends
    from its socket on 8285 - and the FOU receive port that hands such datagrams to it. Its local address
    (`local`) tells the kernel which device receives them, instead of the fallback tunl0."""
    ipip = None
    if tunnel.get("fou_port"):
        port = int(tunnel["fou_port"])
        ipip = IpipInfo(local=tunnel.get("local"), underlay=tunnel.get("underlay_interface"), encap_dport=port,
                        encap_sport=port, encap_csum=True)
    objs: list[KObject] = [Link(name=tunnel["name"], kind="ipip", mtu=tunnel.get("mtu"), up=True,
                                alias=owner_alias("tunnel"), ipip=ipip)]
    if ipip is not None:
        objs.append(FouPort(port=ipip.encap_dport or 0))
    if tunnel.get("address"):
        objs.append(Address(dev=tunnel["name"], cidr=str(ipaddress.ip_interface(tunnel["address"]))))
    return objs


def wireguard_objects(tunnel: dict[str, Any]) -> list[KObject]:
    """A WireGuard device of podnet's own: up, its MTU, the node's /32, its listen port and private key (a file
    on the node: the objects name it and hold only the public key it gives, `public_key`, None where not
    known, as when rendering), and one peer per other node - its public key, `endpoint` (address:port) and
    `allowed_ips` (the peer's pod subnet: what may come from it and is sent to it)."""
    name = tunnel["name"]
    objs: list[KObject] = [
        Link(name=name, kind="wireguard", mtu=tunnel.get("mtu"), up=True, alias=owner_alias("wireguard")),
        WireguardDevice(dev=name, listen_port=int(tunnel.get("listen_port") or WIREGUARD_PORT),
                        public_key=tunnel.get("public_key"), private_key_file=tunnel["private_key_file"]),
    ]
    if tunnel.get("address"):
        objs.append(Address(dev=name, cidr=str(ipaddress.ip_interface(tunnel["address"]))))
    objs += [WireguardPeer(dev=name, public_key=peer["public_key"], endpoint=peer.get("endpoint"),
                           allowed_ips=tuple(peer.get("allowed_ips") or ()))
             for peer in tunnel.get("peers") or []]
    return objs


def vxlan_peer_objects(device: str, peers: list[dict[str, Any]]) -> list[KObject]:
    """Per peer: a permanent neighbour for its VTEP address and a static fdb entry for its MAC."""
    objs: list[KObject] = []
    for peer in peers:
        mac = normalize_mac(peer["mac"])
        objs.append(Neighbour(dev=device, dst=peer["vtep_ip"], mac=mac))
        objs.append(FdbEntry(dev=device, mac=mac, dst=peer["node_ip"]))
    return objs


def route_objects(routes: list[dict[str, Any]], netns: str | None = None) -> list[KObject]:
    return [
        Route(dst=str(ipaddress.ip_network(r["dst"] if r["dst"] != "default" else "0.0.0.0/0")),
              via=r.get("via"), dev=r.get("dev"), onlink=bool(r.get("onlink")) or None,
              proto=PODNET_RTPROTO, netns=netns)
        for r in routes
    ]


def bridge_objects(bridge: dict[str, Any], mtu: int | None) -> list[KObject]:
    return [
        Link(name=bridge["name"], kind="bridge", mtu=mtu, up=True, alias=owner_alias("bridge")),
        Address(dev=bridge["name"], cidr=str(ipaddress.ip_interface(bridge["address"]))),
    ]


CALICO_GATEWAY = "169.254.1.1"
# What felix sets on every host-side pod veth (calico's interface handling): answer ARP for
# 169.254.1.1 at once, route what the pod sends, and strict reverse-path filtering so a pod cannot
# send with another pod's source address.
CALICO_HOST_SYSCTLS = {"net.ipv4.conf.{}.proxy_arp": 1, "net.ipv4.neigh.{}.proxy_delay": 0,
                       "net.ipv4.conf.{}.forwarding": 1, "net.ipv4.conf.{}.route_localnet": 1,
                       "net.ipv4.conf.{}.rp_filter": 1}


def sysctl_interface(name: str) -> str:
    """An interface name as one component of a dotted sysctl name (sysctl(8) writes '.' as '/')."""
    return name.replace(".", "/")


def pod_objects(pod: dict[str, Any], bridge: str | None, mtu: int | None,
                mode: str = "bridge") -> tuple[list[KObject], list[KObject]]:
    """A pod wired as seed 003 does it.  Returns (node objects, pod objects).

    bridge (flannel): a veth from the node, enslaved to the bridge, into the pod's namespace; the
    pod's address and a default route via the bridge.  routed (calico): the host end has no address
    and no bridge, the node routes the pod's /32 to it, and the pod reaches everything via
    169.254.1.1, which the node answers by proxy ARP (see the proxy_arp module)."""
    netns = pod["netns"]
    interface = pod.get("interface") or "eth0"
    host_if = pod.get("host_interface") or host_veth_name(netns, interface)
    address = ipaddress.ip_interface(pod["address"])
    node_side: list[KObject] = [
        Link(name=host_if, kind="veth", peer=interface, peer_netns=netns, mtu=mtu, up=True,
             master=bridge if mode == "bridge" else None, alias=owner_alias(f"{POD_ALIAS_ROLE}:{pod['name']}")),
    ]
    pod_side: list[KObject] = [
        Link(name="lo", kind="device", up=True, netns=netns),
        Link(name=interface, kind="veth", mtu=mtu, up=True, netns=netns),
        Address(dev=interface, cidr=str(address), netns=netns),
    ]
    if mode == "routed":
        node_side.append(Route(dst=f"{address.ip}/32", dev=host_if, proto=PODNET_RTPROTO))
        pod_side.append(Route(dst=f"{CALICO_GATEWAY}/32", dev=interface, proto=PODNET_RTPROTO, netns=netns))
        pod_side.append(Route(dst="0.0.0.0/0", via=CALICO_GATEWAY, proto=PODNET_RTPROTO, netns=netns))
    else:
        pod_side.append(Route(dst="0.0.0.0/0", via=pod["gateway"], proto=PODNET_RTPROTO, netns=netns))
    return node_side, pod_side


def proxy_arp_objects(interface: str, values: dict[str, Any] | None = None) -> list[KObject]:
    """felix's per-interface sysctls for a host-side pod veth."""
    component = sysctl_interface(interface)
    return [Sysctl(name=template.format(component), value=str(value))
            for template, value in (values or CALICO_HOST_SYSCTLS).items()]


def pod_network_argvs(bridge: dict[str, Any] | None, pods: list[dict[str, Any]], mtu: int | None,
                      mode: str = "bridge", host_sysctls: dict[str, Any] | None = None) -> list[list[str]]:
    """The bridge and pods as typed on a fresh host, one argument vector per command; a routed pod's host-side
    settings (host_sysctls) right after its veth, before the pod's end is configured."""
    argvs = [a for o in bridge_objects(bridge, mtu) for a in o.add_argvs()] if bridge else []
    for pod in pods:
        host_side, pod_side = pod_objects(pod, bridge["name"] if bridge else None, mtu, mode)
        argvs.append(["ip", "netns", "add", pod["netns"]])
        link, *host_routes = host_side
        argvs += link.add_argvs()
        if mode == "routed" and host_sysctls:
            argvs += [a for o in proxy_arp_objects(link.name, host_sysctls) for a in o.add_argvs()]
        for obj in pod_side:  # the pod's end of the veth already exists: only configure it
            argvs += obj.update_argvs(["mtu", "up"]) if isinstance(obj, Link) else obj.add_argvs()
        argvs += [a for o in host_routes for a in o.add_argvs()]
    return argvs


def pod_network_commands(bridge: dict[str, Any] | None, pods: list[dict[str, Any]], mtu: int | None,
                         mode: str = "bridge", host_sysctls: dict[str, Any] | None = None) -> list[str]:
    """The bridge and pods as typed on a fresh host."""
    return [shell_line(argv) for argv in pod_network_argvs(bridge, pods, mtu, mode, host_sysctls)]


def sysctl_objects(sysctls: dict[str, Any]) -> list[KObject]:
    return [Sysctl(name=name, value=str(int(value) if isinstance(value, bool) else value))
            for name, value in sysctls.items()]


# Rules podnet adds carry a comment "podnet:<id>" (id derived from table, chain and arguments): how a
# later run finds its own rules, and only those.
RULE_COMMENT = "podnet"


def iptables_rule_tag(rule: dict[str, Any]) -> str:
    digest = hashlib.sha256("\0".join([rule["table"], rule["chain"], *rule["rule"]]).encode()).hexdigest()
    return f"{RULE_COMMENT}:{digest[:12]}"


def iptables_rule_args(rule: dict[str, Any]) -> list[str]:
    """The rule's match/target arguments as podnet installs them, ownership comment included."""
    args = list(rule["rule"])
    at = args.index("-j") if "-j" in args else len(args)
    return args[:at] + ["-m", "comment", "--comment", iptables_rule_tag(rule)] + args[at:]


def iptables_argv(table: str, action: str, chain: str, args: list[str]) -> list[str]:
    return ["iptables", "-t", table, action, chain, *args]


def iptables_command(table: str, action: str, chain: str, args: list[str]) -> str:
    return shell_line(iptables_argv(table, action, chain, args))


def subnet_env_text(values: dict[str, Any], mtu: int | str) -> str:
    """flannel's /run/flannel/subnet.env (seed 004 format), with the MTU the node really got."""
    return "".join(f"{key}={mtu if key == 'FLANNEL_MTU' else value}\n" for key, value in values.items())
