# Copyright: podnet contributors
# Apache License 2.0
"""A node's whole backend in one module run (podnet.dataplane.node_apply).

Every podnet module costs a process on the node (Python, AnsiballZ, ansible's imports: ~0.3-0.5 CPU-s)
and a worker on the controller; a backend applied as one task per resource costs 7-9 of them per node,
which is what dominated a large cluster's converge. Here the same resources run in one process, in the
order the backend roles used to run them, each through its module's own code (``<module>_resource.run``)
with its own argument spec, so results, check mode, diffs and error messages are the module's.
Cleanups (another backend's VTEP, tunl0, proxy-ARP records) always run: in-process they cost a netlink
dump, not a module run.
"""
from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    CALICO_HOST_SYSCTLS,
    POD_ALIAS_ROLE,
    UDP_DEVICE,
    subnet_env_text,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Engine,
    KernelState,
    written_elsewhere,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    IPIP_FALLBACK,
    PODNET_RTPROTO,
    FouPort,
    Link,
    Route,
    is_owned_alias,
    owner_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.ownership import (
    RT_PROTOS_FILE,
    RTPROT_BIRD,
    foreign_conflicts,
    foreign_fou_port,
    is_podnets_rt_protos,
    route_destination,
    rt_proto_claims,
    rt_protos_text,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import comment_line, shell_line
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.wireguard_keys import (
    DEFAULT_FOLDER as DEFAULT_KEY_DIR,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.wireguard_keys import (
    ForeignKeyError,
    key_paths,
    remove_key,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node import files, persist
from ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply import (
    SERVICE_START_TIMEOUT,
    service_running,
    wait_for_service,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.node_lock import LOCK_SPEC
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import PERSIST_OPTION
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.node_record import (
    NODE_RECORD_FILE,
    is_podnets,
    record_text,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources import (
    ipip_tunnel_resource,
    iptables_rules_resource,
    network_policy_resource,
    pod_network_resource,
    pod_route_resource,
    proxy_arp_resource,
    vxlan_fdb_resource,
    wireguard_tunnel_resource,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.network_policy_resource import (
    JUMP_SPEC,
)

RESOURCES = {
    "vxlan_fdb": vxlan_fdb_resource,
    "ipip_tunnel": ipip_tunnel_resource,
    "pod_route": pod_route_resource,
    "pod_network": pod_network_resource,
    "proxy_arp": proxy_arp_resource,
    "iptables_rules": iptables_rules_resource,
    "network_policy": network_policy_resource,
    "wireguard_tunnel": wireguard_tunnel_resource,
}
# The module's options: also what a render takes (render_node), so both read the same defaults.
ARGUMENT_SPEC = {
    "node": {"type": "dict"},
    "state": {"type": "str", "choices": ["overridden", "deleted"], "default": "overridden"},
    "bridge": {"type": "str", "default": "cni0"},
    "networks": {"type": "list", "elements": "str", "default": []},
    "pod_mode": {"type": "str", "choices": ["bridge", "routed"]},
    "other_vteps": {"type": "list", "elements": "str", "default": ["flannel.1", "vxlan.calico", "vxlan-6784"]},
    "subnet_env": {"type": "path", "default": "/run/flannel/subnet.env"},
    "proxy_arp_state_file": {"type": "path", "default": "/var/lib/podnet/proxy_arp.json"},
    "pod_sysctls": {"type": "dict"},
    "policy": {"type": "dict", "options": {
        "chains": {"type": "dict", "default": {}},
        "jump": {"type": "dict", "options": JUMP_SPEC, "apply_defaults": True},
    }},
    "bird_dir": {"type": "path", "default": "/etc/podnet/bird"},
    "birdc": {"type": "str", "default": "birdc"},
    "rt_protos_file": {"type": "path", "default": RT_PROTOS_FILE},
    "node_record": {"type": "path", "default": NODE_RECORD_FILE},
    "bird": {"type": "dict", "options": {
        "config": {"type": "str", "required": True},
        "binary": {"type": "str", "default": "bird"},
    }},
    "lock": {"type": "dict", "options": LOCK_SPEC},
    "persist_dir": PERSIST_OPTION,
    # every node's WireGuard public key by inventory name (made on the nodes: podnet.dataplane.wireguard_key)
    "wireguard_keys": {"type": "dict", "default": {}, "no_log": False},  # public keys: nothing to hide
    "wireguard_key_dir": {"type": "path", "default": DEFAULT_KEY_DIR},
    # A change of path across nodes, made before broken (site.yml runs each phase on every node before the next):
    # "prepare" adds only - the new devices and their peers, routes to destinations not routed yet; "switch"
    # moves the traffic - routes replaced in place, pods, rules, files, BIRD - with every old device kept, so
    # that a peer not switched yet still reaches this node; "all" is the whole run, the old devices removed.
    "phase": {"type": "str", "choices": ["all", "prepare", "switch"], "default": "all"},
}
SUBNET_ENV_MODE = 0o644
FILE_MODE = SUBNET_ENV_MODE  # every file node_apply writes
# Boot records node_apply keeps beside the resources' (persist.py): its files, and the calico role's BIRD.
FILES_RECORD = "node_files"
BIRD_RECORD = "bird"
SUBNET_ENV_DIR_MODE = 0o755


class StepFailed(Exception):
    def __init__(self, step: str, msg: str, extra: dict[str, Any]):
        super().__init__(msg)
        self.step, self.msg, self.extra = step, msg, extra


class _StepDone(Exception):
    def __init__(self, result: dict[str, Any]):
        super().__init__("step done")
        self.result = result


class StepModule:
    """What a resource's run() uses of AnsibleModule, for one resource inside node_apply: its own
    validated parameters, the run's check mode, and exit/fail that end the step instead of the process."""

    def __init__(self, parent, step: str, resource: str, params: dict[str, Any]):
        self.step = step
        self._parent = parent
        spec = RESOURCES[resource]
        checked = ArgumentSpecValidator(spec.ARGUMENT_SPEC, required_if=getattr(spec, "REQUIRED_IF", None)
                                        ).validate(params)
        if checked.error_messages:
            raise StepFailed(step, f"podnet.{resource}: " + "; ".join(checked.error_messages), {})
        self.params = checked.validated_parameters
        self.check_mode = parent.check_mode
        # set when rendering on the controller: the nodes' kernel, for what depends on it (vxlan_fdb's offload)
        self.render_kernel = getattr(parent, "render_kernel", None)

    def exit_json(self, **result: Any) -> None:
        raise _StepDone(result)

    def fail_json(self, msg: str, **extra: Any) -> None:
        raise StepFailed(self.step, msg, extra)

    def get_bin_path(self, *args: Any, **kwargs: Any):
        return self._parent.get_bin_path(*args, **kwargs)

    def run_command(self, *args: Any, **kwargs: Any):
        return self._parent.run_command(*args, **kwargs)


class NodeRun:
    """Runs a node's steps in order and keeps their results; the first failure ends the run."""

    rendering = False

    def __init__(self, module, take_over: list[str] | None = None, phase: str = "all"):
        self.module = module
        self.phase = phase
        self.results: list[dict[str, Any]] = []
        self.take_over = list(take_over or [])
        # the node's devices as read before the first step (owned_or_refuse): name -> alias
        self.aliases: dict[str, str | None] = {}
        # the destinations routed in the node's main table before the first step (owned_or_refuse)
        self.routed: set[str] = set()
        # of those, the ones podnet's own BIRD routes (proto bird, podnet's bird.conf): podnet's to replace
        self.bird_routes: set[str] = set()
        # devices this phase leaves to a later one (a WireGuard device whose port another still holds)
        self.deferred: set[str] = set()
        # the files this run wrote (path -> (content, mode)): what the boot restore writes again
        self.files: dict[str, tuple[str, int]] = {}
        # the daemons this run keeps running (BIRD): what the boot restore starts again
        self.services: list[dict[str, Any]] = []

    @property
    def cleans(self) -> bool:
        """Whether this run removes what the node's backend does not use (the last phase)."""
        return self.phase == "all"

    def sibling(self, module, phase: str = "all") -> NodeRun:
        """Another run of the same node that starts from what this one read before its first step."""
        other = NodeRun(module, self.take_over, phase)
        other.aliases, other.routed, other.bird_routes = self.aliases, self.routed, self.bird_routes
        return other

    def resource(self, step: str, resource: str, **params: Any) -> dict[str, Any]:
        # the boot records describe a finished run: a reboot between phases brings back the earlier state whole
        params["persist_dir"] = self.module.params["persist_dir"] if self.cleans else None
        if "take_over" in RESOURCES[resource].ARGUMENT_SPEC:
            params.setdefault("take_over", self.take_over)
        sub = StepModule(self.module, step, resource, params)
        try:
            RESOURCES[resource].run(sub)
        except _StepDone as done:
            return self.keep(step, resource, done.result)
        # every run() ends in exit_json or fail_json; reaching here is a bug in the resource
        raise StepFailed(step, f"podnet.{resource} returned without a result", {})

    def file(self, step: str, path: str, content: str | None, boot: bool = True) -> dict[str, Any]:
        """A small text file with exactly this content (mode 0644, its folder 0755); None: no file. `boot`: the
        boot restore writes it again (a file on tmpfs); a file that outlives a reboot needs no boot record."""
        try:
            result = converge_file(self.module, path, content)
        except OSError as exc:
            raise StepFailed(step, f"podnet.node_apply: {step} ({path}): {exc}", {}) from exc
        if content is not None and boot:
            self.files[path] = (content, FILE_MODE)
        return self.keep(step, "file", result)

    def keep(self, step: str, resource: str, result: dict[str, Any]) -> dict[str, Any]:
        result = dict(result, step=step, resource=resource)
        diff = result.get("diff")
        if isinstance(diff, dict):
            result["diff"] = dict(diff, before_header=step, after_header=step)
        self.results.append(result)
        return result


def converge_file(module, path: str, content: str | None) -> dict[str, Any]:
    """What ansible.builtin.file + copy did for subnet.env, in-process: content and mode exactly as
    wanted, written atomically (files.atomic_write), or the file removed when content is None. A missing
    folder is made 0755; an existing one keeps its mode (it may be someone else's)."""
    before = files.read_text(path)
    changed_dir = False
    if content is None:
        changed = before is not None
        if changed and not module.check_mode:
            files.remove(path)
        after = None
    else:
        folder = os.path.dirname(path) or "."
        changed_dir = not os.path.isdir(folder)
        if changed_dir and not module.check_mode:
            files.make_folder(folder, SUBNET_ENV_DIR_MODE)
        changed = files.converge(path, content, SUBNET_ENV_MODE, SUBNET_ENV_DIR_MODE, check=module.check_mode)
        after = content
    return {
        "changed": changed or changed_dir,
        "path": path,
        "commands": [],
        "diff": {"before": before or "", "after": after or ""},
    }


class RenderHost:
    """What the steps use of AnsibleModule when a node is rendered on the controller: node_apply's options,
    check mode (nothing is touched), no binaries and no commands run."""

    check_mode = True

    def __init__(self, params: dict[str, Any], kernel: str):
        self.params = params
        self.render_kernel = kernel

    def get_bin_path(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def run_command(self, *_args: Any, **_kwargs: Any):
        raise RuntimeError("a render runs no command")


class RenderRun(NodeRun):
    """The node's steps, exactly as a run takes them, turned into the commands that build their state on a
    fresh host: each resource in its `rendered` state with the parameters the run would give it, each file
    written as the run writes it. What a run removes (another backend's devices, rules, BIRD) is not on a
    fresh host, so removals print nothing."""

    rendering = True

    def __init__(self, module: RenderHost, take_over: list[str] | None = None):
        super().__init__(module, take_over)
        self.lines: list[str] = []

    def resource(self, step: str, resource: str, **params: Any) -> dict[str, Any]:
        if params.get("state") == "deleted":
            return self.keep(step, resource, {"changed": False, "commands": []})
        result = super().resource(step, resource, **dict(params, state="rendered"))
        # a routed pod's settings come with its veth (pod_network) and again from proxy_arp, which then finds
        # them set and changes nothing: the script sets them once, where the run does
        self.lines += [line for line in result["rendered"]
                       if not (line.startswith("sysctl -w ") and line in self.lines)]
        return result

    def file(self, step: str, path: str, content: str | None, boot: bool = True) -> dict[str, Any]:
        if content is None:
            return self.keep(step, "file", {"changed": False, "commands": []})
        self.write(path, content, FILE_MODE, SUBNET_ENV_DIR_MODE)
        return self.keep(step, "file", {"changed": True, "commands": []})

    def write(self, path: str, content: str, mode: int, folder_mode: int) -> None:
        """As files.converge does: a missing folder made with folder_mode (an existing one keeps its mode), the
        file's content and mode exactly; one argv each, so the script stays plain commands."""
        self.lines += [shell_line(["mkdir", "-p", "-m", f"{folder_mode:04o}", os.path.dirname(path) or "."]),
                       shell_line(["sh", "-c", f'printf %s "$2" > "$1" && chmod {mode:04o} "$1"', "sh",
                                   path, content])]


def _vtep_params(vtep: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "vni", "port", "local", "underlay_interface", "mtu", "mac", "address", "peers")
    # a plan made before the offload decision existed carries none: the module's default (auto) then
    return ({key: vtep.get(key) for key in keys} | {"state": "overridden"}
            | {"tx_checksum_offload": vtep.get("tx_checksum_offload") or "auto"})


def _pod_mtu(node: dict[str, Any], *device_results: dict[str, Any] | None) -> int:
    """The MTU the VTEP or tunnel got on the node (derived from the real underlay), else the explicit
    podnet_mtu, else the planner's render-time value."""
    for result in device_results:
        if result and result.get("mtu"):
            return int(result["mtu"])
    return int(node.get("mtu") or node["render_mtu"])


# The tunnel devices a node may have: calico's IPIP (the fallback tunl0) and the UDP transport's own device.
TUNNELS = ((IPIP_FALLBACK, "IPIP tunnel"), (UDP_DEVICE, "UDP tunnel (foo-over-UDP)"))


def tunnel_steps(run: NodeRun, node: dict[str, Any]) -> dict[str, Any] | None:
    """The node's IPIP or UDP tunnel (its result; None without one)."""
    t = node.get("tunnel") or {}
    if not t:
        return None
    # a run derives the MTU from the node's underlay device; a render takes the planner's
    return run.resource("UDP tunnel (foo-over-UDP)" if t.get("fou_port") else "IPIP tunnel", "ipip_tunnel",
                        name=t["name"], local=node["node_ip"],
                        mtu=t.get("mtu") or (node["render_mtu"] if run.rendering else None),
                        address=t.get("address"), fou_port=t.get("fou_port"),
                        underlay_interface=t.get("underlay_interface"), state="overridden")


# The WireGuard devices a node may have: flannel's and calico's names.
WIREGUARD_DEVICES = ("flannel-wg", "wireguard.cali")


def wireguard_peers(node: dict[str, Any], keys: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The node's WireGuard peers as wireguard_tunnel takes them, each with the public key its node made (from
    `keys`, by inventory name), and the names of the peers whose key is not known."""
    peers, unknown = [], []
    for peer in (node.get("wireguard") or {}).get("peers") or []:
        key = peer.get("public_key") or keys.get(peer["name"])
        if key:
            peers.append({"public_key": key, "endpoint": peer["endpoint"], "allowed_ips": peer["allowed_ips"]})
        else:
            unknown.append(peer["name"])
    return peers, unknown


def unknown_keys_message(unknown: list[str]) -> str:
    return (f"no WireGuard public key for {', '.join(unknown)}: every node makes its key on itself "
            "(podnet.dataplane.wireguard_key) and the run hands the public keys round; run site.yml on all nodes "
            "(a run limited to some takes the others' keys from what earlier runs recorded)")


def wireguard_steps(run: NodeRun, node: dict[str, Any]) -> dict[str, Any] | None:
    """The node's WireGuard device (its result; None without one): its key file, port and peers, each peer with
    the public key its node made. A peer whose key is not known yet is one whose key this very run makes: a
    check-mode run shows the device without it (a run that changes the node has stopped before its first
    change: owned_or_refuse)."""
    w = node.get("wireguard") or {}
    if not w:
        return None
    # podnet's WireGuard devices all listen on podnet_wireguard_port: another one of podnet's must go before this
    # one can bind it. Traffic stays on the old device until the switch; the device is made then.
    holders = [name for name in WIREGUARD_DEVICES if name != w["name"] and is_owned_alias(run.aliases.get(name))]
    if holders and run.phase == "prepare":
        run.deferred.add(w["name"])
        run.keep("WireGuard device and peers", "wireguard_tunnel", {
            "changed": False, "commands": [],
            "msg": f"{w['name']} is made at the switch: {', '.join(holders)} holds the port until then"})
        return None
    for name in holders:
        run.resource(f"no WireGuard device {name} (it holds the port)", "wireguard_tunnel", name=name, state="deleted")
    peers, unknown = wireguard_peers(node, run.module.params["wireguard_keys"] or {})
    step = "WireGuard device and peers"
    if unknown and run.rendering:
        raise StepFailed(step, f"podnet.node_apply: {unknown_keys_message(unknown)}", {"unknown_keys": unknown})
    result = run.resource(step, "wireguard_tunnel", name=w["name"], local=node["node_ip"],
                          mtu=w.get("mtu") or (node["render_mtu"] if run.rendering else None),
                          listen_port=w["listen_port"], private_key_file=key_paths(w["key_dir"], w["name"])[0],
                          address=w.get("address"), peers=peers, state="overridden")
    if unknown:
        result["msg"] = f"peers {', '.join(unknown)} left out: their keys are made by this run"
    return result


def no_wireguard_key(run: NodeRun, folder: str, device: str) -> None:
    """podnet's key of a WireGuard device and its record gone (reset), the folder too once empty; a key file
    that is not podnet's stays."""
    step = f"no WireGuard key of {device}"
    if run.rendering:
        return
    paths = list(key_paths(folder, device))
    try:
        removed = remove_key(folder, device, check=run.module.check_mode)
    except (ForeignKeyError, ValueError) as exc:
        run.keep(step, "file", {"changed": False, "commands": [], "msg": f"{exc}: left alone"})
        return
    run.keep(step, "file", {"changed": removed, "commands": [shell_line(["rm", "-f", *paths])] if removed else [],
                            "diff": {"before": "".join(f"{path}\n" for path in paths) if removed else "",
                                     "after": ""}})


def transport_steps(run: NodeRun, node: dict[str, Any]) -> tuple[dict[str, Any] | None, ...]:
    """The devices that carry the node's pod traffic to its peers - VTEP and static peers, IPIP or UDP tunnel,
    WireGuard device - each one's result, None where the transport has none."""
    vtep = None
    if node.get("vtep"):
        vtep = run.resource("VXLAN endpoint and static peers", "vxlan_fdb", **_vtep_params(node["vtep"]))
    return vtep, tunnel_steps(run, node), wireguard_steps(run, node)


def no_other_paths(run: NodeRun, node: dict[str, Any]) -> None:
    """Nothing left of a VTEP, tunnel or WireGuard device (and its key) that the node's transport does not use.
    After the routes: every route through them has moved to the node's own path by then, so deleting them
    (the kernel drops a device's routes with it) loses nothing."""
    own = (node.get("vtep") or {}).get("name")
    for name in run.module.params["other_vteps"]:
        # a device of that name that is not podnet's is someone else's: left alone, and no run of its own
        if name != own and (name not in run.aliases or is_owned_alias(run.aliases[name])):
            run.resource(f"no VXLAN endpoint {name}", "vxlan_fdb", name=name, state="deleted")
    for name, what in TUNNELS:
        if name != (node.get("tunnel") or {}).get("name"):
            run.resource(f"no {what}", "ipip_tunnel", name=name, state="deleted")
    w = node.get("wireguard") or {}
    folder = w.get("key_dir") or run.module.params["wireguard_key_dir"]
    for name in WIREGUARD_DEVICES:
        if name != w.get("name"):
            run.resource(f"no WireGuard device {name}", "wireguard_tunnel", name=name, state="deleted")
            no_wireguard_key(run, folder, name)


def peer_routes(run: NodeRun, node: dict[str, Any], step: str) -> None:
    """The routes to the peers' pods. Each is written with NLM_F_REPLACE, so a route that changes its path
    changes it in one step. The prepare phase adds only the destinations that nothing routes yet: a route
    that exists keeps its path until the switch."""
    if run.phase == "prepare":
        new = [route for route in node["routes"] if route_destination(str(route["dst"])) not in run.routed
               and route.get("dev") not in run.deferred]
        if new:
            run.resource(step + " (new destinations only)", "pod_route", routes=new, state="merged")
        return
    # A node leaving BIRD takes over its BIRD's routes: the static route (metric 0) goes in beside BIRD's
    # (metric 32) and wins at once; BIRD, stopped in the last phase, deletes only its own (proto bird).
    take_over = run.take_over + sorted(run.bird_routes) if not runs_bird(node) else run.take_over
    run.resource(step, "pod_route", routes=node["routes"], state="overridden", networks=_route_networks(node),
                 take_over=take_over)


def wanted_devices(node: dict[str, Any]) -> list[str]:
    """The devices of the node's namespace that the node's backend creates or configures."""
    names = [(node.get(key) or {}).get("name") for key in ("vtep", "tunnel", "wireguard", "bridge")]
    names += [pod.get("host_interface") for pod in node.get("pods") or []]
    return [name for name in names if name]


def wanted_routes(node: dict[str, Any]) -> list[str]:
    """Destinations of the routes the node's backend installs in the node's namespace."""
    dsts = [route_destination(str(route["dst"])) for route in node.get("routes") or []]
    if node.get("pod_mode") == "routed":
        dsts += [f"{ipaddress.ip_interface(pod['address']).ip}/32" for pod in node.get("pods") or []]
    return [dst for dst in dsts if dst]


def owned_or_refuse(run: NodeRun, node: dict[str, Any], rt_protos_file: str | None) -> None:
    """Before the first change: every device and route the node's backend will touch is podnet's, absent,
    or handed over (podnet_take_over); nobody else names podnet's route protocol; the file that names it
    is podnet's. Otherwise the run ends here, having changed nothing, with every problem named."""
    step = "only what podnet owns"
    with Engine() as engine:
        have = engine.gather({Route, FouPort})
    run.aliases = {o.name: o.alias for o in have.of_type(Link) if o.netns is None}
    run.routed = {o.dst for o in have.of_type(Route) if o.netns is None}
    want = [Link(name=name) for name in wanted_devices(node)] + [Route(dst=dst) for dst in wanted_routes(node)]
    # BIRD's routes are podnet's when podnet's BIRD made them
    bird = (RTPROT_BIRD,) if bird_conf_is_podnets(run.module.params["bird_dir"]) else ()
    run.bird_routes = {o.dst for o in have.of_type(Route) if o.netns is None and o.proto in bird}
    problems = foreign_conflicts(want, have.objects, run.take_over, bird)
    foreign_port = foreign_fou_port((node.get("tunnel") or {}).get("fou_port"), have.objects)
    if foreign_port:
        problems.append(foreign_port)
    if rt_protos_file:
        problems += [f"route protocol {PODNET_RTPROTO} is named {name!r} in {where}: something else uses "
                     "podnet's protocol number, so podnet cannot tell its routes from that program's"
                     for where, name in rt_proto_claims(rt_protos_file)]
        existing = files.read_text(rt_protos_file)
        if existing is not None and not is_podnets_rt_protos(existing):
            problems.append(f"{rt_protos_file} exists and is not podnet's (its first line is not "
                            f"{rt_protos_text().splitlines()[0]!r}): podnet will not overwrite it")
    record_file = run.module.params["node_record"]
    if record_file and os.path.lexists(record_file) and not is_podnets(files.read_text(record_file)):
        problems.append(f"{record_file} exists and is not podnet's node record (a JSON object with \"podnet\": "
                        "\"node-record\"): podnet will not overwrite it; move it away or set podnet_node_record")
    if runs_bird(node) and run.module.params["bird"]:
        problems += bird_refusals(run.module.params["bird_dir"], run.module.params["bird"]["config"])
    unknown = wireguard_peers(node, run.module.params["wireguard_keys"] or {})[1]
    if unknown and not run.module.check_mode:
        problems.append(unknown_keys_message(unknown))
    if problems:
        raise StepFailed(step, "podnet.node_apply: nothing changed: " + "; ".join(problems), {"foreign": problems})
    run.keep(step, "ownership", {"changed": False, "commands": []})


def record_node(run: NodeRun, node: dict[str, Any], path: str | None) -> None:
    """The node's own record of its subnet, VTEP MAC and backend, first: a node holds its subnet from the first
    change on, so a controller that lost its leases takes it from here (plan/node_record.py)."""
    if path:
        run.file("the node's own record (subnet, VTEP MAC, backend)", path, record_text(node), boot=False)


def name_route_protocol(run: NodeRun, rt_protos_file: str | None) -> None:
    """`ip route` shows podnet's routes as `proto podnet`, and the number is seen to be taken."""
    if rt_protos_file:
        run.file("name of podnet's route protocol", rt_protos_file, rt_protos_text())


def _route_networks(node: dict[str, Any]) -> list[str]:
    """Where podnet's peer routes lie: the cluster CIDR (a plan without it: anywhere)."""
    return [node["cluster_cidr"]] if node.get("cluster_cidr") else []


def apply_flannel(run: NodeRun, node: dict[str, Any]) -> None:
    """The bridge wiring (flannel-vxlan, flannel-host-gw, any preset with podnet_pod_wiring: bridge): VTEP and
    peers (vxlan), routes, bridge and pods, masquerade, subnet.env; and nothing left of another backend (its
    VTEP, tunl0, BIRD, proxy-ARP settings)."""
    p = run.module.params
    vtep, tunnel, wireguard = transport_steps(run, node)
    peer_routes(run, node, "routes to every peer's pod subnet")
    if run.phase == "prepare":
        return
    if run.cleans:
        # after the routes, which took over BIRD's destinations: BIRD withdraws only its own routes
        no_bird(run, p["bird_dir"], p["birdc"])
        no_other_paths(run, node)
        run.resource("no proxy-ARP settings of a routed backend", "proxy_arp", interfaces=["cali*"],
                     state_file=p["proxy_arp_state_file"], state="deleted")
    mtu = _pod_mtu(node, vtep, tunnel, wireguard)
    run.resource("pod bridge, pods and forwarding", "pod_network", bridge=node["bridge"], mtu=mtu,
                 pods=node["pods"], state="overridden")
    run.resource("masquerade and forward rules", "iptables_rules", rules=node["iptables"], state="overridden")
    # (a calico preset given the bridge wiring runs no flannel: no subnet.env)
    content = subnet_env_text(node["subnet_env"], mtu) if node.get("subnet_env") else None
    run.file("subnet.env of flannel", p["subnet_env"], content)


def apply_calico(run: NodeRun, node: dict[str, Any]) -> None:
    """calico-bgp / calico-ipip / calico-vxlan / canal and the routed backends: VTEP or tunnel, pods
    wired the routed way with proxy ARP, routes, masquerade, subnet.env only for canal."""
    p = run.module.params
    vtep, tunnel, wireguard = transport_steps(run, node)
    if run.phase == "prepare":
        peer_routes(run, node, "routes to every peer's block")
        if runs_bird(node) and p["bird"]:
            # BIRD's routes (metric 32) go in beside the static ones, which keep the traffic until the switch
            with_bird(run, p["bird"])
        return
    mtu = _pod_mtu(node, vtep, tunnel, wireguard)
    run.resource("pods wired the routed way", "pod_network", mode="routed", mtu=mtu, pods=node["pods"],
                 host_sysctls=p["pod_sysctls"], state="overridden")
    if node["pods"]:
        run.resource("proxy ARP and forwarding on the pods' host interfaces", "proxy_arp",
                     interfaces=[pod["host_interface"] for pod in node["pods"]], settings=p["pod_sysctls"],
                     state_file=p["proxy_arp_state_file"], state="merged")
    if runs_bird(node) and run.phase == "switch":
        bird_has_learned(run, node)
    peer_routes(run, node, "routes to every peer's block")
    if run.cleans:
        if not runs_bird(node):
            # after the routes, which took over BIRD's destinations: BIRD withdraws only its own routes
            no_bird(run, p["bird_dir"], p["birdc"])
        no_other_paths(run, node)
    run.resource("masquerade rules", "iptables_rules", rules=node["iptables"], state="overridden")
    content = subnet_env_text(node["subnet_env"], mtu) if node.get("subnet_env") else None
    run.file("subnet.env of flannel (canal only)", p["subnet_env"], content)
    if runs_bird(node) and p["bird"]:
        with_bird(run, p["bird"])


def apply_policy(run: NodeRun, policy: dict[str, Any]) -> None:
    """The node's network policy chains and their jump, as M(network_policy) C(overridden); no chains:
    C(deleted), which removes podnet's chains and the jump (open access)."""
    chains = policy.get("chains") or {}
    jump = policy.get("jump")
    if not chains and (jump or {}).get("table", "filter") == "filter" and not run.module.get_bin_path("iptables-save"):
        return  # no iptables on the node: no chain of podnet can exist to remove
    run.resource("network policy chains and their jump", "network_policy", chains=chains, jump=jump,
                 state="overridden" if chains else "deleted")


# bird.conf as podnet writes it carries this line; podnet's own files in podnet_bird_dir, and nothing else.
BIRD_MARKER = "# podnet:bird"
BIRD_LEGACY_MARKER = "# BIRD 2 for podnet's calico-bgp backend on "  # bird.conf of earlier releases
BIRD_FILES = ("bird.conf", "bird.ctl", "bird.pid", "bird.log")


def bird_conf_is_podnets(bird_dir: str) -> bool:
    try:
        with open(os.path.join(bird_dir, "bird.conf"), encoding="utf-8", errors="replace") as handle:
            head = list(itertools.islice(handle, 10))  # after ansible_managed, however long
    except OSError:
        return False
    return any(line.rstrip("\n") == BIRD_MARKER or line.startswith(BIRD_LEGACY_MARKER) for line in head)


def no_bird(run: NodeRun, bird_dir: str, birdc: str) -> None:
    """A routed node whose BGP is static or absent runs no BIRD of podnet's: a BIRD left from an earlier
    bird run is shut down (a clean `birdc down` withdraws the routes it installed), podnet's files are
    removed, and the folder too once nothing else is in it. A folder whose bird.conf is not podnet's
    (no BIRD_MARKER) is someone else's BIRD: nothing in it is touched."""
    step = "no BIRD where BGP is static or absent"
    if run.rendering or not os.path.lexists(bird_dir):
        run.keep(step, "bird", {"changed": False, "commands": []})
        return
    if os.path.islink(bird_dir) or not os.path.isdir(bird_dir) or not bird_conf_is_podnets(bird_dir):
        run.keep(step, "bird", {"changed": False, "commands": [],
                                "msg": f"{bird_dir} holds no bird.conf of podnet's ({BIRD_MARKER!r}): left alone"})
        return
    socket = os.path.join(bird_dir, "bird.ctl")
    ours = [os.path.join(bird_dir, name) for name in BIRD_FILES if os.path.lexists(os.path.join(bird_dir, name))]
    others = sorted(set(os.listdir(bird_dir)) - set(BIRD_FILES))
    stop = [birdc, "-s", socket, "down"] if os.path.exists(socket) else None
    done: dict[str, Any] = {}
    if stop and not run.module.check_mode:
        binary = run.module.get_bin_path(birdc)
        if binary:
            # a BIRD that no longer answers is gone already: its files are removed all the same
            rc, _out, err = run.module.run_command([binary, *stop[1:]])
            written_elsewhere()  # BIRD withdrew its routes as it went down
            done = {"birdc_rc": rc, "birdc_stderr": err.strip()}
        else:
            done = {"birdc_rc": None, "birdc_stderr": f"{birdc} not found: BIRD not asked to shut down"}
    # BIRD removes its control socket and pid file itself as it goes down: the removal tolerates that
    result = remove_ours(run, step, bird_dir, ours, others, "podnet's BIRD files")
    if stop:
        result["commands"].insert(0, shell_line(stop))
    result.update(done)
    run.keep(step, "bird", result)


BIRD_CONF_MODE = 0o640
BIRD_DIR_MODE = 0o750


def bird_refusals(bird_dir: str, config: str) -> list[str]:
    """Why podnet must not write this BIRD configuration into bird_dir, if it must not."""
    problems = []
    if BIRD_MARKER not in config.splitlines()[:10]:
        problems.append(f"the BIRD configuration lacks podnet's line {BIRD_MARKER!r} in its first ten lines: "
                        "podnet could not tell it from another BIRD's later")
    if os.path.islink(bird_dir) or (os.path.lexists(bird_dir) and not os.path.isdir(bird_dir)):
        problems.append(f"{bird_dir} (BIRD's folder) is not a folder: podnet will not write into it")
    elif os.path.lexists(os.path.join(bird_dir, "bird.conf")) and not bird_conf_is_podnets(bird_dir):
        problems.append(f"{bird_dir}/bird.conf is not podnet's (no {BIRD_MARKER!r} line): podnet will not "
                        "overwrite another BIRD's configuration")
    return problems


def runs_bird(node: dict[str, Any]) -> bool:
    return ((node.get("bgp") or {}).get("mode") or "") == "bird"


BIRD_LEARN_TIMEOUT = 60.0  # BGP: a session retries its connect every 2 s, a hold time is 9 s


def bird_routes_to(node: dict[str, Any], dst: str) -> bool:
    """Whether BIRD routes `dst` on this node: its BGP runs on BIRD and `dst` lies in a peer's block (in the
    cluster CIDR, outside the node's own block)."""
    cidr, own = node.get("cluster_cidr"), (node.get("bgp") or {}).get("block")
    if not runs_bird(node) or not cidr or not own:
        return False
    net = ipaddress.ip_network(dst)
    return net.subnet_of(ipaddress.ip_network(cidr)) and not net.subnet_of(ipaddress.ip_network(own))


def handed_to_bird(node: dict[str, Any], state: KernelState) -> tuple[list[str], list[str]]:
    """The destinations of podnet's static routes that BIRD takes over on a node whose BGP runs on BIRD, and of
    those the ones BIRD has no route to yet."""
    static = sorted(o.dst for o in state.of_type(Route)
                    if o.netns is None and o.proto == PODNET_RTPROTO and bird_routes_to(node, o.dst))
    return static, [dst for dst in static if RTPROT_BIRD not in state.route_protos.get(("route", None, dst), ())]


def bird_has_learned(run: NodeRun, node: dict[str, Any]) -> None:
    """A node changing from static routes to BIRD's (its BIRD started in the prepare phase, as every peer's):
    wait until BIRD has installed a route to every destination of a static route before those are removed, so
    the traffic moves from one route to the other. Too long: the run ends here, the static routes kept."""
    step = "BIRD has learned every peer's block"
    if run.rendering or run.module.check_mode:
        return
    start = time.monotonic()
    while True:
        written_elsewhere()  # BIRD adds routes of its own: every look is a new read
        with Engine() as engine:
            static, missing = handed_to_bird(node, engine.gather({Route}))
        if not missing or time.monotonic() - start > BIRD_LEARN_TIMEOUT:
            break
        time.sleep(0.2)
    if missing:
        raise StepFailed(step, f"podnet.node_apply: {step}: BIRD has no route to {', '.join(missing)} after "
                               f"{BIRD_LEARN_TIMEOUT:.0f} s: the static routes stay until it has (see "
                               f"{run.module.params['bird_dir']}/bird.log and the peers' BGP sessions)",
                         {"missing": missing})
    run.keep(step, "bird", {"changed": False, "commands": [], "handed_over": static,
                            "waited": round(time.monotonic() - start, 3)})


def with_bird(run: NodeRun, bird: dict[str, Any]) -> None:
    """A node whose BGP runs on BIRD: podnet's bird.conf in bird_dir, and one BIRD serving this node's
    namespace with it - started when none runs, asked to reload when the configuration changed. Done
    inside the node's run, under its lock: BIRD is part of the node's state like its routes."""
    step = "BIRD with podnet's configuration"
    p = run.module.params
    bird_dir, config = p["bird_dir"], bird["config"]
    conf, ctl, pidfile = (os.path.join(bird_dir, name) for name in ("bird.conf", "bird.ctl", "bird.pid"))
    argv = [bird["binary"], "-c", conf, "-s", ctl, "-P", pidfile]
    if run.rendering:  # a fresh host: the configuration written as a run writes it, then BIRD started
        run.write(conf, config, BIRD_CONF_MODE, BIRD_DIR_MODE)
        run.lines.append(shell_line(argv))
        run.keep(step, "bird", {"changed": True, "commands": [shell_line(argv)]})
        return
    before = files.read_text(conf)  # podnet's, or none: owned_or_refuse checked that before the first change
    changed_conf = not files.holds(conf, config, BIRD_CONF_MODE)
    # a BIRD that runs is asked to reload a changed configuration; none that runs: one is started
    command = (None if not changed_conf else [p["birdc"], "-s", ctl, "configure"]) \
        if service_running(pidfile, bird["binary"]) else argv
    result: dict[str, Any] = {"changed": changed_conf or command is not None,
                              "commands": [shell_line(command)] if command else [],
                              "diff": {"before": before or "", "after": config}}
    if not run.module.check_mode:
        try:
            files.make_folder(bird_dir, BIRD_DIR_MODE)
            files.converge(conf, config, BIRD_CONF_MODE)
        except OSError as exc:
            raise StepFailed(step, f"podnet.node_apply: {step}: {exc}", result) from exc
        if command:
            binary = run.module.get_bin_path(command[0])
            if not binary:
                raise StepFailed(step, f"podnet.node_apply: {step}: {command[0]} not found on the node", result)
            rc, out, err = run.module.run_command([binary, *command[1:]])
            written_elsewhere()  # BIRD installs (or, reconfigured, withdraws) routes of its own
            if rc != 0:
                raise StepFailed(step, f"podnet.node_apply: {step}: {shell_line(command)} failed (rc {rc}): "
                                       f"{(err or out).strip()}", result)
            if command is argv and not wait_for_service(pidfile, bird["binary"]):
                raise StepFailed(step, f"podnet.node_apply: {step}: {shell_line(command)} returned, but no BIRD "
                                       f"runs after {SERVICE_START_TIMEOUT:.0f} s: see {bird_dir}/bird.log", result)
    run.files[conf] = (config, BIRD_CONF_MODE)
    run.services.append({"name": "bird", "pidfile": pidfile, "argv": argv})
    run.keep(step, "bird", result)


def record_for_boot(run: NodeRun) -> None:
    """What the boot restore needs beyond the resources' own records: the files this run wrote (subnet.env
    lives on tmpfs and is gone after a reboot) and the daemons it keeps running (none: the record goes)."""
    directory = run.module.params["persist_dir"]
    if not directory or run.module.check_mode or not run.cleans:
        return
    persist.save(directory, FILES_RECORD, files=[{"path": path, "content": content, "mode": f"{mode:04o}"}
                                                 for path, (content, mode) in sorted(run.files.items())])
    if run.services:
        persist.save(directory, BIRD_RECORD, services=run.services)
    else:
        persist.forget(directory, BIRD_RECORD)


def backend_of(node: dict[str, Any]) -> Callable[[NodeRun, dict[str, Any]], None]:
    """The planner's pod mode says which family the backend is: "bridge" (cni0 + veths) for the
    flannel backends, "routed" (/32 routes + proxy ARP) for calico and the other routed ones."""
    return apply_flannel if node["pod_mode"] == "bridge" else apply_calico


def with_defaults(params: dict[str, Any]) -> dict[str, Any]:
    """Options whose default depends on others: the routed backends' pod sysctls are felix's by default."""
    if params["pod_sysctls"] is None:
        params["pod_sysctls"] = dict(CALICO_HOST_SYSCTLS)
    return params


def node_steps(run: NodeRun, node: dict[str, Any]) -> None:
    """Everything a node's run does after the ownership check, in order: the one sequence that both a run
    and a render take."""
    p = run.module.params
    record_node(run, node, p["node_record"])
    name_route_protocol(run, p["rt_protos_file"])
    backend_of(node)(run, node)
    if p["policy"] is not None and run.phase != "prepare":
        apply_policy(run, p["policy"])
    if run.rendering and runs_bird(node) and not p["bird"]:
        run.lines.append(comment_line("the routes to the other nodes' pods come from BIRD (podnet_calico_bgp: "
                                      "bird): site.yml writes its bird.conf and starts it"))


class CheckView:
    """The module as a check-mode run sees it: the same options, nothing written."""

    check_mode = True

    def __init__(self, module):
        self._module = module
        self.params = module.params

    def get_bin_path(self, *args: Any, **kwargs: Any):
        return self._module.get_bin_path(*args, **kwargs)

    def run_command(self, *args: Any, **kwargs: Any):
        return self._module.run_command(*args, **kwargs)


def remaining(run: NodeRun, node: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps a whole run would change from the kernel's state now (check mode: nothing written)."""
    preview = run.sibling(CheckView(run.module))
    node_steps(preview, node)
    return [result for result in preview.results if result.get("changed")]


def moves_paths(results: list[dict[str, Any]], node: dict[str, Any]) -> bool:
    """Whether these steps move traffic off a path it takes now: a route, fdb or neighbour entry changed, a route
    removed where another of the node's routes (or BIRD's) takes its traffic, a device removed (another backend's
    path, the old veth of a pod rewired), podnet's BIRD stopped. Not: only adding (a node's first converge), nor
    removing what leads nowhere any more (a removed node's route and entries, a removed pod's veth)."""
    wanted = [ipaddress.ip_network(dst) for dst in (route_destination(str(r["dst"])) for r in node.get("routes") or [])
              if dst]
    pods = {owner_alias(f"{POD_ALIAS_ROLE}:{pod['name']}") for pod in node.get("pods") or []}
    for result in results:
        if result["resource"] == "bird" and result["step"].startswith("no BIRD"):
            return True
        for change in result.get("changes") or []:
            obj, op = change["object"], change["op"]
            if op == "update" and obj["object"] in ("route", "fdbentry", "neighbour"):
                return True
            if op == "delete" and obj["object"] == "route":
                dst = route_destination(obj["dst"]) or "0.0.0.0/0"
                # a static route to a peer's block goes because BIRD's takes its traffic
                if any(ipaddress.ip_network(dst).overlaps(other) for other in wanted) or bird_routes_to(node, dst):
                    return True
            if op == "delete" and obj["object"] == "link" and (
                    not str(obj.get("alias") or "").startswith(owner_alias(POD_ALIAS_ROLE) + ":")
                    or obj.get("alias") in pods):
                return True
    return False


def prepare(run: NodeRun, node: dict[str, Any]) -> dict[str, bool]:
    """The prepare phase (run.phase), then whether later phases are needed (`pending`, `moves_paths`): only when
    the whole run moves traffic off a path it takes now. Otherwise - a re-run, a node's first converge, a new
    node's routes and peers, a new pod, an MTU or policy change - the whole run is done here instead (the node's
    records written), and site.yml skips the node's later phases: one module run, as before phases existed.
    The whole run is previewed first (check mode, in-process, on the kernel reads the run then shares), so that
    common case costs one preview and one run, not a prepare on top."""
    owned_or_refuse(run, node, run.module.params["rt_protos_file"])
    if moves_paths(remaining(run, node), node):
        node_steps(run, node)
        return {"pending": True, "moves_paths": True}
    finish = run.sibling(run.module)
    node_steps(finish, node)
    record_for_boot(finish)
    run.results += finish.results
    return {"pending": False, "moves_paths": False}


def render_node(node: dict[str, Any], kernel: str, options: dict[str, Any] | None = None) -> list[str]:
    """The node's steps as script lines for a fresh host whose kernel release is `kernel`. `options` are
    node_apply's (subnet_env, rt_protos_file, pod_sysctls, ...); the node's own policy is applied, as site.yml
    does. Raises ValueError naming the step and the problem."""
    given = {"node": node, "policy": node.get("policy") or {}, **(options or {})}
    checked = ArgumentSpecValidator(ARGUMENT_SPEC).validate(given)
    if checked.error_messages:
        raise ValueError("; ".join(checked.error_messages))
    run = RenderRun(RenderHost(with_defaults(checked.validated_parameters), kernel), node.get("take_over"))
    try:
        node_steps(run, node)
    except StepFailed as exc:
        raise ValueError(f"{exc.step}: {exc.msg}") from None
    return run.lines


def reset_steps(run: NodeRun) -> None:
    """Everything podnet makes on a node, whichever backend made it, removed - each by its resource's
    `deleted` state, which takes only what carries podnet's marker: BIRD first (its clean shutdown withdraws
    its routes), the proxy-ARP values given back while the pods' interfaces still exist, then pods and bridge,
    peer routes, VTEPs, rules, the tunnel, the policy chains and podnet's files and records."""
    p = run.module.params
    no_bird(run, p["bird_dir"], p["birdc"])
    run.resource("proxy-ARP values given back", "proxy_arp", interfaces=["cali*"],
                 state_file=p["proxy_arp_state_file"], state="deleted")
    # pod_network wants a bridge address for a bridge; a deletion matches the bridge by name and alias only
    run.resource("no pods, no pod bridge", "pod_network", bridge={"name": p["bridge"], "address": "0.0.0.0/32"},
                 state="deleted")
    run.resource("no peer routes", "pod_route", networks=p["networks"], state="deleted")
    for name in p["other_vteps"]:
        run.resource(f"no VXLAN endpoint {name}", "vxlan_fdb", name=name, state="deleted")
    run.resource("no masquerade or forward rules", "iptables_rules", state="deleted")
    for name, what in TUNNELS:
        run.resource(f"no {what}", "ipip_tunnel", name=name, state="deleted")
    for name in WIREGUARD_DEVICES:
        run.resource(f"no WireGuard device {name}", "wireguard_tunnel", name=name, state="deleted")
        no_wireguard_key(run, p["wireguard_key_dir"], name)
    apply_policy(run, {})
    run.file("no subnet.env", p["subnet_env"], None)
    remove_if_podnets(run, "no node record", p["node_record"], is_podnets)
    remove_if_podnets(run, "no name for podnet's route protocol", p["rt_protos_file"], is_podnets_rt_protos)
    forget_records(run)


def remove_if_podnets(run: NodeRun, step: str, path: str | None, podnets: Callable[[str | None], bool]) -> None:
    """A file of podnet's removed; one that is not podnet's (`podnets` of its text is false) left alone."""
    if not path:
        return
    if podnets(files.read_text(path)):
        run.file(step, path, None)
    elif os.path.lexists(path):
        run.keep(step, "file", {"changed": False, "commands": [], "msg": f"{path} is not podnet's: left alone"})


def forget_records(run: NodeRun) -> None:
    """The boot restore's records go with the state they describe: podnet's *.json records, and the folder
    once nothing else is in it (anything else there is not podnet's and stays)."""
    step = "no boot records"
    directory = run.module.params["persist_dir"]
    if not directory or not os.path.isdir(directory) or os.path.islink(directory):
        run.keep(step, "file", {"changed": False, "commands": []})
        return
    records = sorted(name for name in os.listdir(directory) if name.endswith(".json") and not name.startswith("."))
    others = sorted(set(os.listdir(directory)) - set(records))
    paths = [os.path.join(directory, name) for name in records]
    run.keep(step, "file", remove_ours(run, step, directory, paths, others, "podnet's records"))


def remove_ours(run: NodeRun, step: str, folder: str, ours: list[str], others: list[str],
                what: str) -> dict[str, Any]:
    """podnet's files `ours` in `folder` removed, and the folder once nothing else (`others`) is in it: what
    is not podnet's stays. The step's result: changed, the commands, a diff listing the files. A dead
    writer's temporary files (files.is_stale_temporary) are podnet's too."""
    stale = [name for name in others if files.is_stale_temporary(name)]
    ours = [*ours, *(os.path.join(folder, name) for name in stale)]
    others = [name for name in others if name not in stale]
    commands = ([shell_line(["rm", "-f", *ours])] if ours else []) + ([] if others else [shell_line(["rmdir", folder])])
    # nothing of podnet's in a folder that holds something else: nothing to do
    result: dict[str, Any] = {"changed": bool(commands), "commands": commands,
                              "diff": {"before": "".join(f"{path}\n" for path in ours), "after": ""}}
    if others:
        result["msg"] = f"{folder} kept: it also holds {', '.join(others)}, which is not podnet's"
    if not run.module.check_mode:
        try:
            for path in ours:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if not others:
                os.rmdir(folder)
        except OSError as exc:
            raise StepFailed(step, f"podnet.node_apply: {step}: cannot remove {what} in {folder}: {exc}",
                             result) from exc
    return result


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The module result: changed if any step changed; every step's commands, in order; one diff per step."""
    return {
        "changed": any(r.get("changed") for r in results),
        "commands": [cmd for r in results for cmd in r.get("commands") or []],
        "diff": [r["diff"] for r in results if r.get("changed") and isinstance(r.get("diff"), dict)],
        "results": results,
    }
