# Copyright: podnet contributors
# Apache License 2.0
"""The vxlan_fdb resource: what podnet.dataplane.vxlan_fdb does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import os
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    VXLAN_OVERHEAD,
    vtep_objects,
    vxlan_peer_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    KernelState,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    Address,
    FdbEntry,
    Link,
    Neighbour,
    is_owned_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.offload import (
    TX_CHECKSUM,
    TX_CHECKSUM_MODES,
    OffloadDecision,
    decide_tx_checksum,
    feature_command,
    get_feature,
    set_feature,
    tx_checksum_lines,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import (
    PERSIST_OPTION,
    persist_result,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    check_interface_name,
    check_ipv4,
    check_mac,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import (
    STATES,
    TAKE_OVER_OPTION,
    NetlinkResource,
    plan_owned,
    result_for,
)

PEER_SPEC = {
    "vtep_ip": {"type": "str", "required": True},
    "mac": {"type": "str", "required": True},
    "node_ip": {"type": "str", "required": True},
}
ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "vni": {"type": "int", "default": 1},
    "port": {"type": "int", "default": 8472},
    "local": {"type": "str"},
    "underlay_interface": {"type": "str"},
    "mtu": {"type": "int"},
    "mac": {"type": "str"},
    "address": {"type": "str"},
    "learning": {"type": "bool", "default": False},
    # a str with on/off choices: YAML's bare on/off (booleans) and the old bool values map onto them
    "tx_checksum_offload": {"type": "str", "choices": list(TX_CHECKSUM_MODES), "default": "auto"},
    "persist_dir": PERSIST_OPTION,
    "take_over": TAKE_OVER_OPTION,
    "peers": {"type": "list", "elements": "dict", "options": PEER_SPEC, "default": []},
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}
# The VTEP's source address is what every state that builds the device needs (AnsibleModule's required_if).
REQUIRED_IF = [("state", state, ["local"]) for state in ("merged", "replaced", "overridden", "rendered")]


def input_problems(p: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    problems += check_interface_name("name", p["name"])
    if p["underlay_interface"]:
        problems += check_interface_name("underlay_interface", p["underlay_interface"])
    if not 1 <= p["vni"] <= 16777215:
        problems.append(f"vni: {p['vni']} is out of range 1..16777215")
    if not 1 <= p["port"] <= 65535:
        problems.append(f"port: {p['port']} is not a UDP port")
    if p["mtu"] is not None and not 68 <= p["mtu"] <= 65535:
        problems.append(f"mtu: {p['mtu']} is out of range 68..65535")
    if p["mac"]:
        problems += check_mac("mac", p["mac"])
    if p["local"]:
        problems += check_ipv4("local", p["local"])
    for i, peer in enumerate(p["peers"]):
        problems += check_ipv4(f"peers[{i}].vtep_ip", peer["vtep_ip"])
        problems += check_ipv4(f"peers[{i}].node_ip", peer["node_ip"])
        problems += check_mac(f"peers[{i}].mac", peer["mac"])
    return problems


def wanted_vtep(module: AnsibleModule, have: KernelState) -> dict:
    p = module.params
    underlay = p["underlay_interface"]
    if not underlay:
        holder = have.device_holding(p["local"])
        if holder is None:
            module.fail_json(msg=f"podnet.vxlan_fdb: local address {p['local']} is not on any interface of "
                                 "this node; set underlay_interface or fix podnet_node_ip")
        underlay = holder.name
    lower = have.objects.get(("link", None, underlay))
    if lower is None:
        module.fail_json(msg=f"podnet.vxlan_fdb: underlay_interface {underlay} does not exist on this node")
    mtu = p["mtu"] or lower.mtu - VXLAN_OVERHEAD
    return {"name": p["name"], "vni": p["vni"], "port": p["port"], "local": p["local"],
            "underlay_interface": underlay, "mac": p["mac"], "mtu": mtu, "address": p["address"],
            "learning": p["learning"]}


def purge_predicate(module: AnsibleModule):
    p = module.params
    name, state = p["name"], p["state"]
    peer_vteps = {peer["vtep_ip"] for peer in p["peers"]}
    peer_nodes = {peer["node_ip"] for peer in p["peers"]}

    def purge(obj) -> bool:
        if getattr(obj, "dev", None) != name:
            return False
        if isinstance(obj, Address):
            return True  # the VTEP carries exactly one address, podnet's
        if state == "overridden":
            return isinstance(obj, (Neighbour, FdbEntry))
        if state == "replaced":
            return ((isinstance(obj, Neighbour) and obj.dst in peer_vteps)
                    or (isinstance(obj, FdbEntry) and obj.dst in peer_nodes))
        return False

    return purge


class VxlanFdb(NetlinkResource):
    name = "vxlan_fdb"
    kinds = frozenset({Address, Neighbour, FdbEntry})

    def problems(self) -> list[str]:
        self.want: list = []
        return input_problems(self.p)

    def rendered(self) -> dict[str, Any]:
        p = self.p
        vtep = {k: p[k] for k in ("name", "vni", "port", "local", "underlay_interface", "mac", "mtu",
                                  "address", "learning")}
        objs = vtep_objects(vtep) + vxlan_peer_objects(p["name"], p["peers"])
        return {"rendered": [c for o in objs for c in o.add_commands()]
                + tx_checksum_lines(p["name"], offload_decision(self.module))}

    def gathered(self, have: KernelState) -> dict[str, Any]:
        """The device and its peers as this module's options ({}: no such device). A peer is a permanent
        neighbour entry on the device with the fdb entry of its MAC (one without is no peer podnet made)."""
        name = self.p["name"]
        link = have.objects.get(("link", None, name))
        if link is None:
            return {}
        fdb = {o.mac: o.dst for o in have.of_type(FdbEntry) if o.dev == name}
        peers = [{"vtep_ip": n.dst, "mac": n.mac, "node_ip": fdb[n.mac]}
                 for n in have.of_type(Neighbour) if n.dev == name and n.permanent and n.mac in fdb]
        addresses = [a.cidr for a in have.of_type(Address) if a.dev == name]
        v = link.vxlan
        offload = get_feature(name, TX_CHECKSUM)
        return {"name": name, "vni": v and v.vni, "port": v and v.port, "local": v and v.local,
                "underlay_interface": v and v.underlay, "learning": bool(v and v.learning), "mtu": link.mtu,
                "mac": link.mac, "address": addresses[0] if addresses else None,
                "tx_checksum_offload": None if offload is None else ("on" if offload else "off"),
                "peers": sorted(peers, key=lambda peer: peer["vtep_ip"])}

    def gathered_facts(self, have: KernelState) -> dict[str, Any]:
        link = have.objects.get(("link", None, self.p["name"]))
        return {} if link is None else {"kind": link.kind, "owned": is_owned_alias(link.alias)}

    def plan(self, have: KernelState) -> list[Change]:
        name = self.p["name"]
        self.existing = have.objects.get(("link", None, name))
        if self.state == "deleted":
            self.extra: dict[str, Any] = {}
            if self.existing is not None and not is_owned_alias(self.existing.alias):
                self.extra["left_alone"] = (f"device {name} is not podnet's (alias {self.existing.alias!r}, not "
                                            "'podnet:*'): left as it is")
            return deleted_changes(self.module, have, self.existing)
        if self.existing is not None and self.existing.kind != "vxlan":
            self.fail(f"device {name} exists but is a {self.existing.kind} device, not VXLAN; podnet will not "
                      "replace a device it did not create")
        vtep = wanted_vtep(self.module, have)
        self.want = vtep_objects(vtep) + vxlan_peer_objects(name, self.p["peers"])
        self.extra = {"mtu": vtep["mtu"], "mac": vtep["mac"] or (self.existing.mac if self.existing else None)}
        return plan_owned(self.module, self.want, have, purge_predicate(self.module))

    def write(self, have: KernelState, planned: list[Change]) -> None:
        super().write(have, planned)
        if self.state != "deleted" and not self.extra["mac"]:  # the kernel chose the new device's MAC
            self.extra["mac"] = self.engine.gather(set()).objects[("link", None, self.p["name"])].mac

    def result(self, planned: list[Change]) -> dict[str, Any]:
        result = result_for(planned, **self.extra)
        self.offload: list[dict[str, Any]] = []
        if self.state != "deleted":
            decision = offload_decision(self.module)
            converge_offload(self.module, result, decision, created=self.existing is None)
            result["tx_checksum_offload"] = decision._asdict()
            self.offload = [{"device": self.p["name"], "feature": TX_CHECKSUM, **decision._asdict()}]
        return result

    def record(self) -> None:
        persist_result(self.module, f"vxlan_fdb-{self.p['name']}", self.want, offload=self.offload)


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    VxlanFdb(module).run()


def offload_decision(module: AnsibleModule) -> OffloadDecision:
    """TX checksum offload for this node's kernel: the module runs on the node, a render (node_apply's, on
    the controller) says which kernel it renders for."""
    kernel = getattr(module, "render_kernel", None) or os.uname().release
    return decide_tx_checksum(module.params["tx_checksum_offload"], kernel)


def converge_offload(module: AnsibleModule, result: dict, decision: OffloadDecision, created: bool) -> None:
    """Bring TX checksum offload to the decided state. A device created in this run starts with the
    kernel's default (on); the diff shows the decision whenever the device is new or the feature changes."""
    name, wanted = module.params["name"], decision.enabled
    current = True if created and module.check_mode else get_feature(name, TX_CHECKSUM)
    if current is None or (current == wanted and not created):
        return
    if current != wanted:
        if not module.check_mode:
            try:
                set_feature(name, TX_CHECKSUM, wanted)
            except Exception as exc:
                module.fail_json(msg=f"podnet.vxlan_fdb: {feature_command(name, TX_CHECKSUM, wanted)}: {exc}")
        result["changed"] = True
        result["commands"].append(feature_command(name, TX_CHECKSUM, wanted))
        result["diff"]["before"] += f"offload dev={name} {TX_CHECKSUM}={'on' if current else 'off'}\n"
    result["diff"]["after"] += f"offload dev={name} {TX_CHECKSUM}={'on' if wanted else 'off'} ({decision.reason})\n"


def deleted_changes(module: AnsibleModule, have: KernelState, existing: Link | None) -> list[Change]:
    p = module.params
    if existing is None or not is_owned_alias(existing.alias):
        return []  # no device, or someone else's of that name: nothing of podnet's to remove
    if p["peers"]:
        keys = set()
        for obj in vxlan_peer_objects(p["name"], p["peers"]):
            keys.add(obj.key())
        return [Change("delete", None, have.objects[k]) for k in sorted(keys) if k in have.objects]
    return [Change("delete", None, existing)]
