# Copyright: podnet contributors
# Apache License 2.0
"""The pod_network resource: what podnet.dataplane.pod_network does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    CALICO_GATEWAY,
    POD_ALIAS_ROLE,
    bridge_objects,
    calico_veth_name,
    host_veth_name,
    pod_network_commands,
    pod_objects,
    proxy_arp_objects,
    sysctl_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    Engine,
    KernelState,
    netns_path,
    veth_peers,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    PODNET_RTPROTO,
    Address,
    Link,
    Route,
    Sysctl,
    is_owned_alias,
    owner_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import shell_line
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import (
    PERSIST_OPTION,
    persist_result,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    check_interface_name,
    check_ipv4,
    check_pod_sysctls,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import (
    STATES,
    TAKE_OVER_OPTION,
    NetlinkResource,
    fail_on_engine_error,
    plan_owned,
    result_for,
)

POD_SPEC = {
    "name": {"type": "str", "required": True},
    "netns": {"type": "str", "required": True},
    "address": {"type": "str", "required": True},
    "gateway": {"type": "str"},
    "interface": {"type": "str", "default": "eth0"},
    "host_interface": {"type": "str"},
    "labels": {"type": "dict", "default": {}},
}
ARGUMENT_SPEC = {
    "mode": {"type": "str", "choices": ["bridge", "routed"], "default": "bridge"},
    "bridge": {"type": "dict", "options": {"name": {"type": "str", "default": "cni0"},
                                           "address": {"type": "str", "required": True}}},
    "mtu": {"type": "int"},
    "host_sysctls": {"type": "dict", "default": {}},
    "forwarding": {"type": "bool", "default": True},
    "persist_dir": PERSIST_OPTION,
    "take_over": TAKE_OVER_OPTION,
    "pods": {"type": "list", "elements": "dict", "options": POD_SPEC, "default": []},
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}
POD_ALIAS_PREFIX = owner_alias(POD_ALIAS_ROLE) + ":"


def input_problems(p: dict[str, Any]) -> list[str]:
    """What is wrong with the options; fills in each pod's host_interface and (routed) gateway defaults."""
    problems: list[str] = []
    routed = p["mode"] == "routed"
    if p["bridge"]:
        problems += check_interface_name("bridge.name", p["bridge"]["name"])
        if routed and p["state"] not in ("deleted", "gathered"):
            problems.append("bridge: not used with mode=routed")
    elif not routed and p["state"] not in ("deleted", "gathered"):
        problems.append("bridge: required with mode=bridge")
    problems += check_pod_sysctls("host_sysctls", p["host_sysctls"])
    for i, pod in enumerate(p["pods"]):
        naming = calico_veth_name if routed else host_veth_name
        pod["host_interface"] = pod["host_interface"] or naming(pod["netns"], pod["interface"])
        if routed:
            pod["gateway"] = pod["gateway"] or CALICO_GATEWAY
        elif not pod["gateway"]:
            problems.append(f"pods[{i}].gateway: required with mode=bridge")
        problems += check_interface_name(f"pods[{i}].interface", pod["interface"])
        problems += check_interface_name(f"pods[{i}].host_interface", pod["host_interface"])
        if pod["gateway"]:
            problems += check_ipv4(f"pods[{i}].gateway", pod["gateway"])
        if "/" in pod["netns"] or pod["netns"] in ("", ".", ".."):
            problems.append(f"pods[{i}].netns: {pod['netns']!r} is not a namespace name")
    return problems


def node_wants(module: AnsibleModule, host_settings: bool = True) -> list:
    """The node side of the pods; `host_settings`: with the routed pods' host-side settings (proxy_arp's
    record, not this module's, keeps those for the boot restore)."""
    p = module.params
    want = sysctl_objects({"net.ipv4.ip_forward": 1}) if p["forwarding"] else []
    if p["bridge"]:
        want += bridge_objects(p["bridge"], p["mtu"])
    for pod in p["pods"]:
        want += pod_objects(pod, p["bridge"]["name"] if p["bridge"] else None, p["mtu"], p["mode"])[0]
    return want + (host_sysctl_objects(p) if host_settings else [])


def host_sysctl_objects(p: dict[str, Any]) -> list:
    """The routed pods' host-side settings, written in the batch that creates their veths: a pod configured
    after them gets its first ARP for the gateway answered at once (set later, that ARP goes unanswered until
    the pod retries, or waits out the kernel's default proxy_delay, a random delay of up to 0.8 s)."""
    if p["mode"] != "routed" or not p["host_sysctls"]:
        return []
    return [o for pod in p["pods"] for o in proxy_arp_objects(pod["host_interface"], p["host_sysctls"])]


def node_purge(module: AnsibleModule, have):
    p = module.params
    state = p["state"]
    bridge = p["bridge"]["name"] if p["bridge"] else None
    listed = {pod["host_interface"] for pod in p["pods"]}
    pod_devices = {o.name for o in have.of_type(Link) if (o.alias or "").startswith(POD_ALIAS_PREFIX)}

    def purge(obj) -> bool:
        if isinstance(obj, Address):
            return state != "deleted" and obj.dev == bridge  # the bridge holds exactly the gateway
        if isinstance(obj, Link) and obj.alias == owner_alias("bridge"):  # e.g. cni0 after a switch to calico
            return state == "overridden" and obj.name != bridge
        if isinstance(obj, Route):  # a pod's /32 whose pod moved or left (routed mode)
            return state != "deleted" and obj.proto == PODNET_RTPROTO and obj.dev in pod_devices
        if not isinstance(obj, Link) or not (obj.alias or "").startswith(POD_ALIAS_PREFIX):
            return False
        if state == "overridden":
            return True
        return state == "deleted" and (not listed or obj.name in listed)

    return purge


def ensure_netns(module: AnsibleModule) -> list[str]:
    """Create missing pod namespaces first: the node side moves each veth's peer into one."""
    missing = [pod["netns"] for pod in module.params["pods"]
               if not os.path.exists(netns_path(pod["netns"]))]
    if missing and not module.check_mode:
        ip = module.get_bin_path("ip", required=True)
        for name in missing:
            rc, _out, err = module.run_command([ip, "netns", "add", name])
            if rc != 0:
                module.fail_json(msg=f"podnet.pod_network: ip netns add {name}: {err.strip()}")
    return missing


def configure_pod(module: AnsibleModule, pod: dict, missing_netns: list[str],
                  node: Engine | None = None) -> list[Change]:
    """Bring the pod's end of the veth, its address and default route in line (inside the pod). With `node`
    (the node's namespace), a pod end brought up here gets its address and routes only once the node's end
    passes traffic: the pod sends as soon as it has a route, and its first ARP must be answered."""
    p = module.params
    (host_veth, *_routes), pod_side = pod_objects(pod, p["bridge"]["name"] if p["bridge"] else None, p["mtu"],
                                                  p["mode"])
    if module.check_mode and pod["netns"] in missing_netns:
        return [_as_update(Change("add", o, None)) for o in pod_side]
    with Engine(pod["netns"]) as engine:
        have = engine.gather({Address, Route})
        # The veth's pod end comes from the node side: configure it, never create it here.
        changes = [_as_update(c) for c in plan_owned(module, pod_side, have)]
        if changes and not module.check_mode:
            links = [c for c in changes if isinstance(c.obj, Link)]
            fail_on_engine_error(module, engine.apply, links, have)
            if links and node is not None:
                node.wait_operational(host_veth.name)
            fail_on_engine_error(module, engine.apply, [c for c in changes if not isinstance(c.obj, Link)], have)
    return changes


def _as_update(change: Change) -> Change:
    if change.op == "add" and isinstance(change.want, Link):
        return Change("update", change.want, None, ["mtu", "up"])
    return change


class PodNetwork(NetlinkResource):
    name = "pod_network"
    kinds = frozenset({Address, Route})

    def problems(self) -> list[str]:
        return input_problems(self.p)

    def rendered(self) -> dict[str, Any]:
        p = self.p
        lines = sysctl_objects({"net.ipv4.ip_forward": 1})[0].add_commands() if p["forwarding"] else []
        return {"rendered": lines + pod_network_commands(p["bridge"], p["pods"], p["mtu"], p["mode"], p["host_sysctls"])}

    @contextmanager
    def reading(self) -> Iterator[KernelState]:
        self.configured: dict[str, list[Change]] = {}  # each pod's end, configured by write() (pod name: changes)
        # the pods' namespaces first: the node side moves each veth's peer into one
        self.missing_netns = ensure_netns(self.module) if self.state not in ("deleted", "gathered") else []
        with super().reading() as have:
            yield have

    def sysctls(self) -> list[str]:
        forwarding = ["net.ipv4.ip_forward"] if self.p["forwarding"] or self.state == "gathered" else []
        return forwarding + [o.name for o in host_sysctl_objects(self.p)]

    def gathered(self, have: KernelState) -> dict[str, Any]:
        return gathered(have, self.p["bridge"]["name"] if self.p["bridge"] else "cni0")

    def plan(self, have: KernelState) -> list[Change]:
        p = self.p
        if self.state != "deleted":
            return plan_owned(self.module, node_wants(self.module), have, node_purge(self.module, have))
        changes = plan_owned(self.module, [], have, node_purge(self.module, have))
        if not p["pods"] and p["bridge"]:
            bridge = have.objects.get(("link", None, p["bridge"]["name"]))
            if bridge is not None and is_owned_alias(bridge.alias):
                changes.append(Change("delete", None, bridge))
        return changes

    def grouped(self, planned: list[Change]) -> tuple[list[Change], dict[str, list[Change]], list[Change]]:
        """The node side's changes in the order they are written: first what belongs to no listed pod, then each
        pod's own (its old veth deleted, its new one made with its settings and /32 route; its end in the pod is
        configured right after), and last the deletion of a bridge the bridge wiring left - it takes tens of
        milliseconds (an RCU grace period) that no pod should spend without a network. So a rewiring leaves each
        pod unreachable only for its own few milliseconds, however many pods the node has."""
        owners = {owner_alias(f"{POD_ALIAS_ROLE}:{pod['name']}"): pod["name"] for pod in self.p["pods"]}
        devices = {pod["host_interface"]: pod["name"] for pod in self.p["pods"]}
        # a pod's old veth (another wiring names it otherwise), so its /32 route goes in the pod's turn too
        devices |= {c.have.name: owners[c.have.alias] for c in planned
                    if c.op == "delete" and isinstance(c.have, Link) and c.have.alias in owners}
        first: list[Change] = []
        mine: dict[str, list[Change]] = {pod["name"]: [] for pod in self.p["pods"]}
        later: list[Change] = []
        for change in planned:
            obj = change.obj
            if isinstance(obj, Link) and change.op == "delete" and obj.alias == owner_alias("bridge"):
                later.append(change)
                continue
            pod = (owners.get(obj.alias or "") if isinstance(obj, Link)
                   else devices.get(obj.interface or "") if isinstance(obj, Sysctl)
                   else devices.get(obj.dev or "") if isinstance(obj, Route) and obj.netns is None else None)
            if self.state == "deleted" or pod is None:
                first.append(change)
            else:
                mine[pod].append(change)
        return first, mine, later

    def write(self, have: KernelState, planned: list[Change]) -> None:
        first, mine, later = self.grouped(planned)
        super().write(have, first)
        for pod in self.p["pods"] if self.state != "deleted" else []:
            super().write(have, mine[pod["name"]])
            self.configured[pod["name"]] = configure_pod(self.module, pod, self.missing_netns, self.engine)
        super().write(have, later)

    def result(self, planned: list[Change]) -> dict[str, Any]:
        first, mine, later = self.grouped(planned)
        changes = list(first)
        for pod in self.p["pods"] if self.state != "deleted" else []:
            # each pod's end, in the pod's namespace, once its node side is in place (configured by write, or
            # nothing was to write on the node side, or check mode)
            done = self.configured.get(pod["name"])
            changes += mine[pod["name"]] + (done if done is not None else
                                            configure_pod(self.module, pod, self.missing_netns))
        changes += later
        result = result_for(changes, created_netns=self.missing_netns)
        if self.missing_netns:
            result["changed"] = True
            result["commands"] = [shell_line(["ip", "netns", "add", name]) for name in self.missing_netns] \
                + result["commands"]
        return result

    def record(self) -> None:
        p = self.p
        bridge = p["bridge"]["name"] if p["bridge"] else None
        persist_result(self.module, "pod_network", node_wants(self.module, host_settings=False) + [
            o for pod in p["pods"] for o in pod_objects(pod, bridge, p["mtu"], p["mode"])[1]])


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    PodNetwork(module).run()


def gathered(have: KernelState, bridge_name: str) -> dict[str, Any]:
    """podnet's pods on this node, and their bridge, as this module's options: each pod's namespace and
    interface found from its veth (veth_peers), its address and gateway read inside the pod. Labels are
    not kernel state: none come back. A pod whose other end is in no named namespace is left out."""
    pod_links = [o for o in have.of_type(Link) if (o.alias or "").startswith(POD_ALIAS_PREFIX)]
    peers = veth_peers() if pod_links else {}
    pods = []
    for link in sorted(pod_links, key=lambda o: o.name):
        if link.name not in peers:
            continue
        netns, interface = peers[link.name]
        with Engine(netns) as engine:
            inside = engine.gather({Address, Route})
        addresses = [a.cidr for a in inside.of_type(Address) if a.dev == interface]
        default = inside.objects.get(("route", netns, "0.0.0.0/0"))
        pods.append({"name": link.alias[len(POD_ALIAS_PREFIX):], "netns": netns, "interface": interface,
                     "host_interface": link.name, "address": addresses[0] if addresses else None,
                     "gateway": default.via if default is not None else None})
    bridge = have.objects.get(("link", None, bridge_name))
    bridged = bridge is not None and any(o.master == bridge_name for o in pod_links)
    gateways = [a.cidr for a in have.of_type(Address) if a.dev == bridge_name]
    mtus = {o.mtu for o in pod_links} | ({bridge.mtu} if bridged else set())
    forwarding = have.objects.get(("sysctl", None, "net.ipv4.ip_forward"))
    return {
        "mode": "bridge" if bridged or (bridge is not None and not pod_links) else "routed",
        "bridge": {"name": bridge_name, "address": gateways[0]} if bridge is not None and gateways else None,
        "mtu": mtus.pop() if len(mtus) == 1 else None,
        "forwarding": forwarding is not None and forwarding.value == "1",
        "pods": pods,
    }
