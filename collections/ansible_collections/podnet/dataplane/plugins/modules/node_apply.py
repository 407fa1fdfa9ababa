#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_apply
short_description: Converge a node's whole backend (devices, peers, routes, pods, rules, subnet.env) in one run
version_added: "0.4.0"
description:
  - Applies one node's part of the plan (C(podnet_node), set by the C(podnet.dataplane.plan) role) in a
    single module run, which is what the C(podnet.dataplane.node) role calls (the C(podnet.dataplane.flannel)
    and C(podnet.dataplane.calico) roles are that role with the pod wiring they apply). Each piece is done by
    the code of its own module, in this order and with these states - so results, check mode, diffs and
    error messages are that module's.
  - "flannel backends: the node's path - M(podnet.dataplane.vxlan_fdb) (the VTEP and static peers,
    flannel-vxlan), M(podnet.dataplane.ipip_tunnel) for the UDP tunnel C(flannel0) (flannel-udp),
    M(podnet.dataplane.wireguard_tunnel) for C(flannel-wg) (flannel-wireguard) -, podnet's BIRD of a calico-bgp
    run stopped (see I(bird_dir)), M(podnet.dataplane.pod_route) C(overridden), then every other path
    C(deleted) (the other VTEPs in I(other_vteps), C(tunl0), C(flannel0), C(flannel-wg) and C(wireguard.cali)
    with their keys), M(podnet.dataplane.proxy_arp) C(deleted) on C(cali*), M(podnet.dataplane.pod_network)
    (bridge) C(overridden), M(podnet.dataplane.iptables_rules) C(overridden), then C(subnet.env)."
  - "calico and the other routed backends: the node's path - the VTEP (calico-vxlan, canal) or
    M(podnet.dataplane.ipip_tunnel) for C(tunl0) (calico-ipip) or C(flannel0) (the UDP transport) or
    M(podnet.dataplane.wireguard_tunnel) for C(wireguard.cali) (calico-wireguard; C(flannel-wg) for canal over
    WireGuard) -, M(podnet.dataplane.pod_network) (routed) C(overridden) with the pods' host-side settings
    (I(pod_sysctls)) set as their veths are made, M(podnet.dataplane.proxy_arp) on the pods' host interfaces,
    podnet's BIRD of an earlier run stopped where BGP does not run on it, M(podnet.dataplane.pod_route)
    C(overridden), every other path C(deleted) as above, M(podnet.dataplane.iptables_rules) C(overridden), then
    C(subnet.env) for canal (removed otherwise), then BIRD (I(bird)) where the node's BGP runs on it."
  - The other paths go after the routes - every route changes its path in place (C(ip route replace)), and
    only then are the old devices (and the routes still through them) removed. I(phase) splits a change of
    path across a cluster into three runs per node, so no node removes a path a peer still sends on.
  - The pods' MTU is the one the VTEP or tunnel got on the node (derived from the real underlay MTU),
    else the node's explicit C(mtu), else the planner's render-time value; C(subnet.env) carries the same.
  - Before the first step, the node is read once to check that every device (VTEP, tunnel, bridge, the pods'
    host interfaces) and every route of the node's namespace the backend will change is podnet's (alias
    C(podnet:*), route protocol C(152)), absent, or handed over in C(node.take_over); that no other name is
    given to protocol C(152) in C(rt_protos); and that I(rt_protos_file) is podnet's if it exists.
    Otherwise the module fails, having changed nothing, naming each object (result C(foreign)).
  - The same steps, with the same parameters, are what the P(podnet.dataplane.commands#filter) filter and
    C(render.yml) print (each resource in its C(rendered) state), so a node built from its rendered script is
    one this module then leaves unchanged.
  - The first failing step ends the run with that step's message; the steps before it stay applied,
    as separate tasks would have left them.
author:
  - podnet maintainers (@podnet)
requirements:
  - Linux with rtnetlink; the module uses only the Python standard library on the node (no pyroute2)
  - iproute2's C(ip) on the node, to create pod network namespaces that do not exist
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  state:
    description:
      - C(overridden) - the node holds exactly I(node)'s state (and nothing of another backend's).
      - C(deleted) - everything podnet makes on a node is removed, whichever backend made it, each piece by
        its module's C(deleted) state (only what carries podnet's marker) - podnet's BIRD shut down (I(bird_dir)),
        the proxy-ARP values podnet changed on C(cali*) given back (I(proxy_arp_state_file)), podnet's pod
        veths and the pod bridge I(bridge), podnet's routes to I(networks), the VXLAN devices in
        I(other_vteps), podnet's iptables rules, the IPIP tunnel's configuration, the UDP tunnel and its FOU
        port, the WireGuard devices (C(flannel-wg), C(wireguard.cali)) and podnet's keys in I(wireguard_key_dir),
        the network policy chains,
        I(subnet_env), I(rt_protos_file) and I(node_record) when they are podnet's, and podnet's records in I(persist_dir) (the folder
        too once empty). I(node) is not needed. This is what C(reset.yml) runs.
    type: str
    choices: [overridden, deleted]
    default: overridden
  node:
    description:
      - Required with I(state=overridden).
      - This node's planned state, C(podnet_node) as the C(podnet.dataplane.plan) role sets it
        (C(backend), C(pod_mode), C(node_ip), C(vtep), C(tunnel), C(routes), C(pods), C(bridge),
        C(iptables), C(subnet_env), C(mtu), C(render_mtu)); C(pod_mode) C(bridge) selects the flannel
        steps below, C(routed) the calico ones.
      - C(take_over) (from C(podnet_take_over)) lists devices and route destinations that are not podnet's
        but that podnet may change (and so mark as its own); passed to every step as its I(take_over).
      - C(vtep.tx_checksum_offload) (C(auto), C(on) or C(off), from C(podnet_vxlan_tx_checksum_offload)) is
        passed to M(podnet.dataplane.vxlan_fdb), which decides the VTEP's TX checksum offload from the node's
        kernel for C(auto); a plan without it means C(auto).
    type: dict
  bridge:
    description: With I(state=deleted), the pod bridge to remove when it is podnet's (C(podnet_bridge)).
    type: str
    default: cni0
  networks:
    description:
      - With I(state=deleted), where podnet's peer routes lie (C(podnet_cluster_cidr)); a route of podnet's
        protocol elsewhere is some other program's and stays. Empty - every route of podnet's protocol that does
        not lead into a pod.
    type: list
    elements: str
    default: []
  pod_mode:
    description:
      - The kind of backend this task is meant to apply - C(bridge) (the flannel backends) or C(routed)
        (calico and the other routed ones); a node planned for the other kind fails before anything changes
        (the C(podnet.dataplane.flannel) and C(podnet.dataplane.calico) roles set it). Omitted, the node's
        own C(pod_mode) decides.
    type: str
    choices: [bridge, routed]
  other_vteps:
    description: VXLAN devices of the other backends, removed when this node's backend does not use them.
    type: list
    elements: str
    default: [flannel.1, vxlan.calico, vxlan-6784]
  subnet_env:
    description: Where flannel's C(subnet.env) is written (flannel backends, canal) or removed (the others).
    type: path
    default: /run/flannel/subnet.env
  proxy_arp_state_file:
    description: Where the proxy-ARP values podnet found before changing them are remembered (restored on a switch to flannel).
    type: path
    default: /var/lib/podnet/proxy_arp.json
  pod_sysctls:
    description:
      - What routed backends set on each host-side pod interface (C({}) stands for the interface).
        Defaults to felix's settings, as M(podnet.dataplane.proxy_arp) does.
    type: dict
  policy:
    description:
      - This node's compiled network policy (C(podnet_node.policy) from the planner), applied after the
        backend as M(podnet.dataplane.network_policy) does - C(overridden) with its chains, C(deleted)
        (podnet's chains and the jump removed, for open access) when it has none. Omitted, the policy chains
        are left alone (the C(podnet.dataplane.policy) role manages them).
    type: dict
    suboptions:
      chains:
        description: Chain name to its rules, as M(podnet.dataplane.network_policy) I(chains).
        type: dict
        default: {}
      jump:
        description:
          - Where podnet's entry chain is jumped to from, as M(podnet.dataplane.network_policy) I(jump).
          - Omitted, the defaults below apply.
        type: dict
        suboptions:
          table:
            description: Table of the jump and the chains.
            type: str
            choices: [filter, nat, mangle, raw]
            default: filter
          chain:
            description: Built-in chain holding the jump.
            type: str
            default: FORWARD
          target:
            description: podnet's entry chain.
            type: str
            default: PODNET-FORWARD
          position:
            description: Rule number of the jump in I(chain).
            type: int
            default: 1
  bird_dir:
    description:
      - Where podnet's BIRD keeps its configuration, control socket and pid file (see I(bird)).
      - flannel backends, and routed backends whose BGP is static or absent (C(podnet_node.bgp.mode) is not C(bird)), run no
        BIRD of podnet's - a BIRD left in this folder by an earlier C(bird) run is shut down with
        C(birdc down) (withdrawing its routes) and the folder removed.
    type: path
    default: /etc/podnet/bird
  birdc:
    description: The C(birdc) binary that reloads podnet's BIRD or shuts it down.
    type: str
    default: birdc
  rt_protos_file:
    description:
      - Where podnet names its route protocol (C(152 podnet)), so that C(ip route) shows podnet's routes as
        C(proto podnet) and other programs see the number taken. Written with podnet's first line
        C(# podnet:rt_protos) (mode 0644); an existing file without that line is not podnet's and makes the
        run fail before any change. Empty - do not write it.
      - The folder's other C(*.conf) files and the C(rt_protos) file one folder up are read to find another
        name for C(152).
    type: path
    default: /etc/iproute2/rt_protos.d/podnet.conf
  node_record:
    description:
      - The node's own record, written first in every run (mode 0644, its folder 0755 when new) - a JSON object
        with the node's C(subnet), C(vtep_mac), C(backend), C(node_ip), C(cluster_cidr) and inventory name
        (C(host)), marked as podnet's by its key C(podnet) set to C(node-record).
      - The nodes are the source of truth for their subnets. The plan role reads every node's record
        (M(podnet.dataplane.preflight)) before it allocates anything, takes the subnets a lost lease file lacks
        from them, and refuses a lease file that disagrees (P(podnet.dataplane.node_leases#filter)).
      - An existing file that is not podnet's record makes the run fail before any change; I(state=deleted)
        removes podnet's record and leaves anything else alone. Empty - do not write it.
    type: path
    default: /etc/podnet/node.json
  bird:
    description:
      - For a node whose BGP runs on BIRD (C(node.bgp.mode) is C(bird)) - the BIRD configuration to keep in
        I(bird_dir) (C(bird.conf), mode 0640, its folder 0750 when new) and the BIRD to run with it, as the
        last step of the run (after the routes and rules BIRD works with) - started when no BIRD serves this
        node's network namespace (the pid file in I(bird_dir) names no live C(bird) process in it), asked
        to reload (C(birdc configure)) when the configuration changed. Recorded for the boot restore.
      - The configuration must carry podnet's line C(# podnet:bird) in its first ten lines; an existing
        C(bird.conf) without it is another BIRD's, and the run fails before any change.
      - Omitted, a node whose BGP runs on BIRD keeps whatever BIRD it has.
    type: dict
    suboptions:
      config:
        description: The text of C(bird.conf) (the C(podnet.dataplane.node) role renders it from the plan).
        type: str
        required: true
      binary:
        description: The C(bird) binary.
        type: str
        default: bird
  wireguard_keys:
    description:
      - Every node's WireGuard public key, by inventory name (the C(podnet.dataplane.node) role gathers them from
        M(podnet.dataplane.wireguard_key) on each node, else from C(podnet_wireguard_keys_file)). A peer in
        I(node)'s C(wireguard.peers) takes its key from here. A peer with no key fails the run before any
        change - except in check mode, where its key is one this run would make, and the peer is left out.
    type: dict
    default: {}
  wireguard_key_dir:
    description:
      - Where podnet keeps the node's WireGuard private keys (C(<device>.key), mode 0600, with podnet's record
        C(<device>.json)) when I(node) has no WireGuard device - a run removes the keys of the WireGuard
        devices it removes, and C(deleted) all of podnet's keys (only podnet's).
    type: path
    default: /etc/podnet/wireguard
  phase:
    description:
      - Which part of the run this is, for a change of path made before it is broken across nodes -
        C(site.yml) runs each phase on every node before any node runs the next.
      - C(prepare) - the run first previews what the whole run would change. When that moves traffic off a path
        it takes now (a route changed or removed, a device removed - see C(moves_paths)), it makes only additions -
        the node's new VTEP and static peers, tunnel or WireGuard device, the routes to destinations nothing
        routes yet (a new node's), and where BGP runs on BIRD, BIRD (its routes go in at metric 32, beside the
        static ones) - changes no route's path, removes nothing, writes no boot record, and returns
        C(pending=true). Otherwise (a re-run, a node's first converge, a node added or removed elsewhere, a new
        pod, an MTU change) it does the whole run here and returns C(pending=false).
      - C(switch) - everything of the node's backend (routes moved to the new path in place, pods, rules,
        files, BIRD) except removing the other paths, which peers not switched yet still send on. A node changing
        to BGP on BIRD first waits (up to 60 s) until its BIRD has a route to every destination of its static
        routes, then removes those; BIRD's routes take their traffic.
      - C(all) - the whole run; after C(switch) on every node, what remains is removing the old paths and
        writing the boot records.
      - Check mode always previews the whole run (C(all)), whatever the phase.
    type: str
    choices: [all, prepare, switch]
    default: all
  lock:
    description:
      - Take the node lock before anything else and hold it until the run ends, so no other podnet run
        changes the node meanwhile. The lock is an exclusive C(flock) on I(path), held by this module's own
        process on the node - the kernel releases it when that process ends, however it ends (killed, its
        SSH connection cut, the node rebooted), so a killed run never makes the next one wait.
      - The file records the holder (run id, controller, process id, boot id) for the message of a run that
        waits too long, and is emptied on a clean end; a record found in a lock that could be taken names a
        run that died holding it (result C(lock.abandoned_by)). The file is never removed.
      - Not taken in check mode (nothing is changed then).
    type: dict
    suboptions:
      owner:
        description: The run, as returned by the C(podnet.dataplane.run_owner) lookup (C(host), C(run)); recorded only.
        type: dict
        default: {}
      path:
        description: Lock file on the node (a symbolic link there is refused).
        type: path
        default: /run/podnet/node.lock
      wait_timeout:
        description: Seconds to wait for a run in progress before failing.
        type: int
        default: 600
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - podnet.dataplane.persist
notes:
  - Supports check mode and diff mode (one diff per step that would change).
  - For a single piece of state, use its own module; this module exists so that a node costs one
    module run instead of seven to twelve (with the lock, the policy and BIRD, site.yml's whole apply of a
    node is this one run).
seealso:
  - module: podnet.dataplane.vxlan_fdb
  - module: podnet.dataplane.pod_network
  - module: podnet.dataplane.pod_route
"""

EXAMPLES = r"""
- name: Converge this node's backend (podnet_node from the podnet.dataplane.plan role)
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
    persist_dir: /var/lib/podnet/state

- name: Converge the node and its network policy under the node lock (what site.yml does)
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
    policy: "{{ podnet_node.policy | default({}, true) }}"
    lock:
      owner: "{{ lookup('podnet.dataplane.run_owner') }}"
      path: /run/podnet/node.lock

# A change of path without loss: each phase in its own play (a barrier), on every node (what site.yml does)
- name: New paths beside the old ones
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
    phase: prepare
  register: podnet_prepared

- name: Routes moved to the new paths (a later play; old paths kept for the peers not switched yet)
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
    phase: switch
  when: podnet_prepared.pending

- name: Old paths removed (a later play again, once every node has switched)
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
  when: podnet_prepared.pending

- name: calico-bgp with BIRD - the routes, then BIRD with its configuration, in one run
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
    bird:
      config: "{{ lookup('ansible.builtin.template', 'bird.conf.j2') }}"

- name: Remove everything podnet made on the node, under the node lock (what reset.yml does)
  podnet.dataplane.node_apply:
    state: deleted
    networks: [10.244.0.0/16]
    persist_dir: /etc/podnet/state
    lock:
      path: /run/podnet/node.lock

- name: Preview what a converge would change, without changing it
  podnet.dataplane.node_apply:
    node: "{{ podnet_node }}"
  check_mode: true
  diff: true
"""

RETURN = r"""
commands:
  description: The ip/bridge/iptables/sysctl commands equivalent to what changed (or would change), in order.
  returned: always
  type: list
  elements: str
results:
  description:
    - One entry per step, in order - that module's own result plus C(step) (what it does) and
      C(resource) (the module name, or C(file) for C(subnet.env)).
    - The VTEP's and the tunnel's entries carry the C(mtu) they got.
  returned: always
  type: list
  elements: dict
kernel_reads:
  description:
    - How often the run read each network namespace's whole netlink state (C("") is the node's own, the
      others are pod namespaces). Steps share one read per namespace; a namespace is read again only after
      a step wrote there, so a run that changes nothing reads each namespace once.
  returned: always
  type: dict
  sample: {"": 1, "pod-a": 1, "pod-b": 1}
pending:
  description:
    - Whether a later phase has work left (I(phase)) - after C(prepare), whether the node's C(switch) and C(all)
      runs are needed (only when they move traffic off a path); always true after C(switch), false after C(all)
      and in check mode.
  returned: with I(state=overridden)
  type: bool
  sample: false
moves_paths:
  description:
    - Whether what the later phases have left moves traffic off a path it takes now - a route, fdb or neighbour
      entry changed, a route removed where another of the node's routes takes its traffic, a device removed
      (another backend's path, the old veth of a pod being rewired), podnet's BIRD stopped. Adding, and removing
      what leads nowhere any more (a removed node's route and entries, a removed pod), do not.
    - Only such work makes C(prepare) leave the node C(pending); C(site.yml) holds it back on every node once any
      node has failed.
  returned: with I(state=overridden)
  type: bool
  sample: true
lock:
  description:
    - With I(lock) (not in check mode) - C(waited) (seconds spent waiting for another run) and, when the
      previous holder died holding the lock, C(abandoned_by) (its record).
  returned: when I(lock) is given
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import shared_reads
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_apply import (
    ARGUMENT_SPEC,
    NodeRun,
    StepFailed,
    moves_paths,
    node_steps,
    owned_or_refuse,
    prepare,
    record_for_boot,
    remaining,
    reset_steps,
    summary,
    with_defaults,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_lock import (
    LockError,
    LockTimeout,
    NodeLock,
)

NODE_KEYS = ("backend", "pod_mode", "node_ip", "routes", "pods", "iptables", "render_mtu")
BRIDGE_NODE_KEYS = ("bridge", "subnet_env")
FAMILIES = {"bridge": "flannel backends (pods on a bridge)", "routed": "routed backends (calico and the like)"}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "overridden", ["node"])])
    p = module.params
    deleting = p["state"] == "deleted"
    node = p["node"] or {}
    wanted = () if deleting else NODE_KEYS + (BRIDGE_NODE_KEYS if node.get("pod_mode") == "bridge" else ())
    missing = [key for key in wanted if key not in node]
    if missing:
        module.fail_json(msg=f"podnet.node_apply: node lacks {', '.join(missing)}; pass podnet_node as the "
                             "podnet.dataplane.plan role sets it")
    if p["pod_mode"] and not deleting and p["pod_mode"] != node["pod_mode"]:
        module.fail_json(msg=f"podnet.node_apply: this task applies the {FAMILIES[p['pod_mode']]}, but "
                             f"{node['backend']} wires pods the {node['pod_mode']} way; nothing was changed")
    with_defaults(p)
    lock = NodeLock(p["lock"]["path"], p["lock"]["owner"]) if p["lock"] and not module.check_mode else None
    outcome: dict = {}
    if lock:
        try:
            outcome["lock"] = lock.acquire(p["lock"]["wait_timeout"])
        except (LockTimeout, LockError) as exc:
            module.fail_json(msg=str(exc))
    # a check-mode run previews the whole change, whichever phase is asked for
    phase = "all" if module.check_mode or deleting else p["phase"]
    run = NodeRun(module, node.get("take_over"), phase)
    try:
        with shared_reads() as reads:  # one kernel read per namespace, again only after a write there
            try:
                if deleting:
                    reset_steps(run)
                elif phase == "prepare":
                    outcome.update(prepare(run, node))
                else:
                    owned_or_refuse(run, node, p["rt_protos_file"])
                    node_steps(run, node)
                    record_for_boot(run)
                    # after a switch the last phase always remains: it writes the boot records
                    outcome.update(pending=phase == "switch", moves_paths=phase == "switch" and moves_paths(
                        remaining(run, node), node))
            finally:
                outcome["kernel_reads"] = dict(sorted(reads.reads.items()))
    except StepFailed as exc:
        details = {k: v for k, v in exc.extra.items() if k not in ("msg", "step")}
        # a dict display, not update(**...): the failing step's details repeat keys of the summary
        outcome = {**outcome, "msg": exc.msg, "step": exc.step, **summary(run.results), **details}
    else:
        outcome.update(summary(run.results))
    finally:
        if lock:
            lock.release()
    if "msg" in outcome:
        module.fail_json(**outcome)
    module.exit_json(**outcome)


if __name__ == "__main__":
    main()
