"""Helpers for integration tests on the machines lab (scripts/machines/lab, docs/machines-lab.md): three booted
systemd-nspawn machines node1..node3, each in its network namespace ``<prefix>-<host>`` on this host, reached
by Ansible over real SSH.

- ``lab_cmd``: the lab script (up, down, reboot, status).
- ``lab_fixture()``: a module-scoped pytest fixture with a lab of its own (unique prefix, brought up once,
  always torn down, nothing of it left afterwards).
- ``ansible`` (ad hoc on every node), ``playbook`` (ansible-playbook, a ``PlaybookResult``), ``leftovers``.
- ``snapshot``/``snapshot_diff``: podnet's whole state on every node, normalized so that two correct runs
  compare equal.
- ``NetlinkMonitor``, ``kill_controller``, ``kill_pid``: what the SIGKILL trials need.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.integration.labkit import (
    REPO_ROOT,
    VENV_BIN,
    PlaybookResult,
    list_netns,
    parse_recap,
    playbook_env,
    unique_prefix,
)

LAB = REPO_ROOT / "scripts" / "machines" / "lab"
INVENTORY = REPO_ROOT / "inventories" / "lab-machines"
HOSTS = ("node1", "node2", "node3")
NODE_IPS = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13"}
PODS = ("pod1", "pod2")  # namespaces inside each machine (the lab script creates them at every boot)
RUN_ROOT = Path("/run/podnet-lab")
STATE_ROOT = Path("/var/lib/podnet-lab")
# "node1 | CHANGED | rc=0 | (stdout) node1" from `ansible -o`.
_ONE_LINE = re.compile(r"^(?P<host>\S+) \| (?P<status>[A-Z]+) \| rc=(?P<rc>\d+) \| \(stdout\) ?(?P<out>.*)$")


# --- the lab ---------------------------------------------------------------------------------------


def lab_cmd(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """scripts/machines/lab ARGS (`up` builds the image first when it is not cached: ~1.5 min once)."""
    return subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=timeout)


def ssh_dir(prefix: str) -> Path:
    """The lab's SSH directory (the inventory's podnet_lab_ssh_dir): key, known_hosts, control sockets."""
    return RUN_ROOT / prefix / "ssh"


def leftovers(prefix: str) -> list[str]:
    """Whatever of the lab still exists: namespaces, mounts, machine processes, directories, cgroups."""
    left = [f"netns {n}" for n in list_netns(prefix)]
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    left += [f"mount {m}" for m in mounts.split() if f"/podnet-lab/{prefix}/" in m + "/"]
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    left += [f"process {p.strip()}" for p in ps.splitlines() if f"--machine={prefix}-" in p]
    left += [f"dir {d}" for d in (STATE_ROOT / prefix, RUN_ROOT / prefix) if d.exists()]
    left += [f"cgroup {g}" for g in Path("/sys/fs/cgroup").glob(f"**/podnet-lab-{prefix}-*")]
    return left


@contextlib.contextmanager
def machines_lab(prefix: str | None = None) -> Iterator[str]:
    """A machines lab for the duration of the block: up, yield its prefix, down (also after a failed up),
    then assert that nothing of it is left."""
    prefix = prefix or unique_prefix()
    start = time.monotonic()
    try:
        up = lab_cmd("up", prefix)
        assert up.returncode == 0, f"lab up {prefix} failed:\n{up.stdout}\n{up.stderr}"
        print(f"\nlab up {prefix} {time.monotonic() - start:.1f}s")
        yield prefix
    finally:
        for pid in ssh_master_pids(prefix):  # `down` asks them to exit; a wedged one is killed here
            _kill(pid)
        down = lab_cmd("down", prefix, timeout=300)
        left = leftovers(prefix)
    assert down.returncode == 0 and left == [], f"lab down {prefix}: rc={down.returncode} left={left}\n{down.stderr}"


def lab_fixture() -> Callable[..., Any]:
    """A module-scoped fixture: ``machines = machinekit.lab_fixture()`` gives the module one lab."""

    @pytest.fixture(scope="module")
    def machines() -> Iterator[str]:
        with machines_lab() as prefix:
            yield prefix

    return machines


# --- running Ansible -------------------------------------------------------------------------------


def ansible(prefix: str, command: str, timeout: float = 300) -> dict[str, str]:
    """Run a command on every node with ad-hoc Ansible over SSH: host -> stdout (asserting rc 0)."""
    argv = [str(VENV_BIN / "ansible"), "-i", str(INVENTORY), "podnet_nodes", "-o", "-m", "command", "-a", command]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=playbook_env(prefix), cwd=REPO_ROOT
    )
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        match = _ONE_LINE.match(line)
        if match and match["rc"] == "0":
            # The one-line callback writes the command's newlines as a literal backslash-n.
            out[match["host"]] = match["out"].replace("\\n", "\n").strip()
    assert proc.returncode == 0 and set(out) == set(HOSTS), f"{argv}\n{proc.stdout}\n{proc.stderr}"
    return out


_MODULE_LINE = re.compile(r"^(?P<host>\S+) \| (?P<status>[A-Z]+) => (?P<result>\{.*\})$")


def ansible_module(prefix: str, module: str, args: str, timeout: float = 300) -> tuple[dict[str, dict], str]:
    """Run a module on every node with ad-hoc Ansible over SSH: (host -> the module's result, everything the run
    printed), asserting it succeeded on every node."""
    argv = [str(VENV_BIN / "ansible"), "-i", str(INVENTORY), "podnet_nodes", "-o", "-m", module, "-a", args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=playbook_env(prefix),
                          cwd=REPO_ROOT)
    results = {}
    for line in proc.stdout.splitlines():
        match = _MODULE_LINE.match(line)
        if match:
            results[match["host"]] = json.loads(match["result"])
    assert proc.returncode == 0 and set(results) == set(HOSTS), f"{argv}\n{proc.stdout}\n{proc.stderr}"
    return results, proc.stdout + proc.stderr


def playbook_argv(name: str, *extra: str) -> list[str]:
    return [str(VENV_BIN / "ansible-playbook"), "-i", str(INVENTORY), str(REPO_ROOT / "playbooks" / name), *extra]


def playbook(prefix: str, name: str, *extra: str, timeout: float = 900) -> PlaybookResult:
    """ansible-playbook playbooks/NAME against the lab (extra: more arguments, like "-e", "k=v")."""
    argv = playbook_argv(name, *extra)
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=playbook_env(prefix),
                          cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    return PlaybookResult(argv=argv, rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                          seconds=time.monotonic() - start, recap=parse_recap(proc.stdout))


def start_playbook(prefix: str, name: str, *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """ansible-playbook in a session of its own (so its whole process group can be killed), output to log."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below, Popen keeps its dup
    try:
        return subprocess.Popen(playbook_argv(name, *extra), cwd=REPO_ROOT, env=playbook_env(prefix),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


# --- processes: the controller's, and the machines' ------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _started(pid: int) -> float:
    """When a process started (seconds since the epoch); 0 when it is gone."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`."""
    children: dict[int, list[int]] = {}
    for child in _all_pids():
        children.setdefault(_ppid(child), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def ssh_master_pids(prefix: str) -> list[int]:
    """The lab's ssh ControlPersist masters ("ssh: <ssh dir>/cp/<hash> [mux]": in sessions of their own,
    not below the playbook) and the `lab proxy` relays they started. The paths are this lab's alone."""
    cp = f"{ssh_dir(prefix)}/cp/"
    proxy = f"{LAB} proxy {prefix} "
    pids = {pid: _cmdline(pid) for pid in _all_pids() if pid != os.getpid()}
    # The relays of the snapshot's own connections (ssh_argv) are not the controller's.
    observer = {pid for pid, cmd in pids.items() if f"{ssh_dir(prefix)}/snap-" in cmd}
    return [pid for pid, cmd in pids.items() if cp in cmd or (proxy in cmd and _ppid(pid) not in observer)]


def kill_controller(proc: subprocess.Popen[bytes], prefix: str) -> list[int]:
    """What a controller machine dying does: SIGKILL ansible-playbook's process group, every process below
    it (ansible's workers start sessions of their own) and the lab's ssh masters, so no connection to a
    node survives. Returns the pids killed."""
    below = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    masters = ssh_master_pids(prefix)
    for pid in below + masters:
        _kill(pid)
    return [proc.pid, *below, *masters]


def machine_pids(prefix: str, host: str) -> list[int]:
    """The processes of one machine, from its cgroups (every process of the machine is in them)."""
    pids: set[int] = set()
    for base in (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        group = base / f"podnet-lab-{prefix}-{host}"
        if group.is_dir():
            for procs in group.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def module_processes(prefix: str, host: str) -> dict[int, str]:
    """The Ansible module processes running in a machine: pid -> module name.

    With pipelining (ansible.cfg) a module is a bare `/usr/bin/python3` below `/bin/sh -c '/usr/bin/python3
    && sleep 0'`, its name nowhere on its command line; its AnsiballZ wrapper unpacks into the machine's
    /tmp as ansible_<module>_payload_<random>/ for as long as it runs. A node runs one task at a time
    (strategy free: one worker per host), so one module process goes with the one payload directory."""
    found: dict[int, str] = {}
    for pid in machine_pids(prefix, host):
        cmd = _cmdline(pid)
        if "AnsiballZ_" in cmd:  # without pipelining: the module file is named on the command line
            found[pid] = cmd.split("AnsiballZ_", 1)[1].split(".py", 1)[0]
        elif cmd == "/usr/bin/python3" and "/usr/bin/python3" in _cmdline(_ppid(pid)):
            # A module killed earlier leaves its payload directory behind: only those made since this
            # process started are its own.
            started = _started(pid)
            try:
                payloads = [p.name for p in Path(f"/proc/{pid}/root/tmp").glob("ansible_*_payload_*")
                            if p.stat().st_mtime >= started - 0.1]
            except OSError:
                payloads = []
            names = [p[len("ansible_"):].rsplit("_payload_", 1)[0] for p in payloads]
            found[pid] = names[0] if len(names) == 1 else "?" + ",".join(sorted(names))
    return found


def kill_pid(pid: int, cmdline: str = "/usr/bin/python3") -> bool:
    """SIGKILL one process of a machine (its pid as this host sees it), if it still runs that command line
    (a module process seen a moment ago); False when it had ended already."""
    if _cmdline(pid) != cmdline:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


# --- watching the kernel ---------------------------------------------------------------------------


_EVENT = re.compile(r"^\[(?P<ts>\d{4}-\d\d-\d\dT[\d:.]+)\] \[(?P<kind>[A-Z]+)\](?P<rest>.*)$")


class NetlinkMonitor:
    """`ip -n <prefix>-<host> -ts monitor label link route neigh address` for every node while a run goes
    on, read from this host (a namespace of the lab; reading changes nothing)."""

    def __init__(self, prefix: str, hosts: Sequence[str] = HOSTS) -> None:
        self.procs = {
            host: subprocess.Popen(
                ["ip", "-n", f"{prefix}-{host}", "-ts", "monitor", "label", "link", "route", "neigh", "address"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for host in hosts
        }
        time.sleep(0.2)  # subscribed before the run starts

    def stop(self) -> dict[str, list[tuple[float, str]]]:
        """End the monitors; per host its write events as (wall-clock time, line)."""
        time.sleep(0.2)  # events of the last moment
        events: dict[str, list[tuple[float, str]]] = {}
        for host, proc in self.procs.items():
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            events[host] = [e for e in map(parse_event, out.splitlines()) if e is not None]
        return events

    def __enter__(self) -> NetlinkMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


_LINK_LOCAL6 = re.compile(r"\b(fe80|ff00|ff02)::")


def parse_event(line: str) -> tuple[float, str] | None:
    match = _EVENT.match(line)
    if match is None:
        return None  # a continuation line of the event before
    if match["kind"] == "NEIGH" and "PERMANENT" not in match["rest"]:
        # ARP of the lab's own SSH traffic and of pings: the kernel's, not a write of a run. podnet's
        # neighbours are all permanent.
        return None
    if "proto bird" in match["rest"]:
        return None  # BIRD's learned routes: written by BIRD when its sessions come and go, at any time
    if _LINK_LOCAL6.search(match["rest"]):
        return None  # IPv6 link-local addresses and routes: the kernel's own, after a device comes up
    return datetime.datetime.fromisoformat(match["ts"]).timestamp(), f"[{match['kind']}]{match['rest']}"


# --- the snapshot ----------------------------------------------------------------------------------

# Every file and directory podnet writes on a node (roles/plan, calico, flannel and boot defaults):
# subnet.env, the persist dir (podnet_persist_dir) with BIRD's record, the rt_protos name, BIRD's dir
# (podnet_bird_dir), calico's remembered proxy-ARP values, the lock dir, the boot unit and podnet's engine
# for it, CNI configuration.
NODE_PATHS = ("/run/flannel", "/etc/podnet", "/run/podnet", "/var/lib/podnet", "/etc/iproute2/rt_protos.d",
              "/etc/cni", "/usr/local/lib/podnet", "/etc/systemd/system/podnet-apply.service",
              "/etc/systemd/system/multi-user.target.wants/podnet-apply.service")

# Runs on the node (its own /usr/bin/python3): everything raw, as JSON; snapshot() normalizes.
_NODE_SCRIPT = r"""
import hashlib, json, os, stat, subprocess, sys
PATHS, PODS = json.loads(sys.argv[1])

def run(argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else "rc=%d %s" % (p.returncode, p.stderr.strip())

def js(argv):
    out = run(argv)
    if out.startswith("rc="):
        return {"error": out}
    return json.loads(out) if out.strip() else []

def net(ns):
    ip = ["ip"] + (["-n", ns] if ns else []) + ["-j"]
    inside = ["ip", "netns", "exec", ns] if ns else []
    return {
        "link": js(ip + ["-d", "link", "show"]),
        "addr": js(ip + ["addr", "show"]),
        "route": js(ip + ["-d", "-4", "route", "show", "table", "all"]) + js(ip + ["-d", "-6", "route", "show", "table", "all"]),
        "rule": js(ip + ["-4", "rule", "show"]) + js(ip + ["-6", "rule", "show"]),
        "neigh": js(ip + ["neigh", "show"]),
        "neigh_proxy": js(ip + ["neigh", "show", "proxy"]),
        "fdb": js(["bridge"] + ip[1:] + ["fdb", "show"]),
        "iptables": run(inside + ["iptables-save"]),
        "ip6tables": run(inside + ["ip6tables-save"]),
        "sysctl": run(inside + ["sh", "-c", "grep -r . /proc/sys/net/ipv4/conf/ /proc/sys/net/ipv4/ip_forward "
                                "/proc/sys/net/ipv4/neigh/*/proxy_delay /proc/sys/net/ipv6/conf/*/forwarding "
                                "2>/dev/null; true"]),
    }

def entry(path):
    st = os.lstat(path)
    e = {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        e.update(type="symlink", target=os.readlink(path))
    elif stat.S_ISDIR(st.st_mode):
        e.update(type="dir")
    elif stat.S_ISREG(st.st_mode):
        data = open(path, "rb").read()
        try:
            e.update(type="file", content=data.decode()) if len(data) < 4096 else e.update(type="file", sha256=hashlib.sha256(data).hexdigest())
        except UnicodeDecodeError:
            e.update(type="file", sha256=hashlib.sha256(data).hexdigest())
    else:
        e.update(type="socket" if stat.S_ISSOCK(st.st_mode) else "other")
    return e

files = {}
for top in PATHS:
    if not os.path.lexists(top):
        continue
    files[top] = entry(top)
    if os.path.isdir(top) and not os.path.islink(top):
        for root, dirs, names in os.walk(top):
            for name in dirs + names:
                files[os.path.join(root, name)] = entry(os.path.join(root, name))

procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        procs[pid] = open("/proc/%s/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode().strip()
    except OSError:
        pass

print(json.dumps({
    "net": net(None),
    "pods": {pod: net(pod) for pod in PODS},
    "netns": sorted(line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()),
    "files": files,
    "procs": procs,
    "unit": run(["systemctl", "is-enabled", "podnet-apply.service"]).strip(),
}))
"""


def ssh_argv(prefix: str, host: str, *command: str) -> list[str]:
    """Plain ssh to a node as the inventory connects (the lab's key, known_hosts and underlay relay)."""
    keys = ssh_dir(prefix)
    return ["ssh", "-F", "none", "-i", str(keys / "id_ed25519"), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
            "-o", f"ProxyCommand={LAB} proxy {prefix} %h %p",
            # A connection of the test's own (not Ansible's: a killed controller's are killed with it),
            # kept for the next snapshot; `lab down` closes it with the lab's other control sockets.
            "-o", "ControlMaster=auto", "-o", "ControlPersist=300", "-o", f"ControlPath={keys}/snap-%h",
            f"root@{NODE_IPS[host]}", *command]


def raw_snapshot(prefix: str, hosts: Sequence[str] = HOSTS) -> dict[str, Any]:
    """podnet-relevant state of every node as read there (one SSH command per node, all at once)."""
    arg = json.dumps([list(NODE_PATHS), list(PODS)])
    procs = {
        host: subprocess.Popen(ssh_argv(prefix, host, "python3", "-c", _shell_quote(_NODE_SCRIPT), _shell_quote(arg)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        for host in hosts
    }
    raw: dict[str, Any] = {}
    for host, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"snapshot of {host}: rc={proc.returncode}\n{err}"
        raw[host] = json.loads(out)
    leases = RUN_ROOT / prefix / "leases.json"  # the subnet leases podnet keeps on the controller
    raw["controller"] = {"leases": leases.read_text() if leases.exists() else None}
    return raw


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def snapshot(prefix: str, hosts: Sequence[str] = HOSTS) -> dict[str, Any]:
    """The whole podnet-relevant state of every node, normalized: equal after two correct runs of the same
    inventory, different wherever podnet's result differs (see normalize_node)."""
    raw = raw_snapshot(prefix, hosts)
    out: dict[str, Any] = {host: normalize_node(raw[host]) for host in hosts}
    out["controller"] = raw["controller"]
    return out


# Link attributes that differ between two correct runs: kernel numbering (ifindex, the peer's ifindex and
# namespace id: allocated in creation order, so a device created again gets a new one) and counters.
_LINK_DROP = {"ifindex", "link_index", "link_netnsid", "stats", "stats64"}
# Device kinds whose MAC the kernel picks at random because podnet sets none (pod_network_resource:
# veth pairs; the bridge cni0 takes the smallest MAC of its ports). Their MACs, and what is derived from
# them, are replaced by a name: the 33:33:ff:xx:xx:xx solicited-node multicast fdb entries and the
# fe80:: EUI-64 addresses and routes (all the kernel's). podnet's VXLAN MACs are its own and kept.
_RANDOM_MAC_KINDS = {"veth", "bridge"}


def normalize_node(raw: dict[str, Any]) -> dict[str, Any]:
    macs: dict[str, str] = {}
    # Veths first: a bridge has the MAC of one of its ports (the smallest), so the bridge's own entries
    # are named after the bridge where they are its own (_normalize_net), after the port elsewhere.
    for ns, net in [("", raw["net"]), *((pod, raw["pods"][pod]) for pod in sorted(raw["pods"]))]:
        for link in sorted(_list(net["link"]), key=lambda link: _kind(link) == "bridge"):
            mac = link.get("address")
            if _kind(link) in _RANDOM_MAC_KINDS and mac and mac not in macs:
                name = f"{ns + '/' if ns else ''}{link['ifname']}"
                macs[mac] = f"<mac of {name}>"
                macs["33:33:ff:" + mac[-8:]] = f"<33:33:ff of {name}>"

    def mac(value: Any) -> Any:
        return macs.get(value, value) if isinstance(value, str) else value

    node = {"net": _normalize_net(raw["net"], mac),
            "pods": {pod: _normalize_net(net, mac) for pod, net in sorted(raw["pods"].items())},
            "netns": raw["netns"], "unit": raw["unit"]}
    node["files"] = _normalize_files(raw["files"], raw["procs"])
    # BIRD (started by the calico role or the boot restore): its command lines; its pid is in the files.
    node["bird"] = sorted(cmd for cmd in raw["procs"].values() if cmd.split(" ", 1)[0].endswith("bird"))
    return node


def _kind(link: Any) -> str | None:
    return (link.get("linkinfo") or {}).get("info_kind") if isinstance(link, dict) else None


def _sorted(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))


def _is_link_local6(text: str | None) -> bool:
    return bool(text) and text.lower().startswith(("fe80:", "ff00:", "ff02:"))


def _normalize_net(net: dict[str, Any], mac: Callable[[Any], Any]) -> dict[str, Any]:
    # A bridge's own MAC (a port's) and its bridge id "8000.<MAC>": named after the bridge.
    bridges = {link["address"]: link["ifname"] for link in _list(net["link"]) if _kind(link) == "bridge"}
    # (iproute2 prints the id's bytes without leading zeros: 8000.6:ea:...)
    bridge_ids = {_unpadded(f"8000.{m}"): f"8000.<mac of {b}>" for m, b in bridges.items()}
    links = {}
    for link in _list(net["link"]):
        if not isinstance(link, dict):
            links["error"] = link
            continue
        kept = {k: v for k, v in link.items() if k not in _LINK_DROP}
        kept["address"] = f"<mac of {link['ifname']}>" if _kind(link) == "bridge" else mac(kept.get("address"))
        kept.pop("permaddr", None)
        info = kept.get("linkinfo")
        if info:
            # Bridge and bridge-port timers (hello, gc, hold, ...) run down from the moment of creation.
            for key in ("info_data", "info_slave_data"):
                if isinstance(info.get(key), dict):
                    info[key] = {k: bridge_ids.get(_unpadded(v), v) if isinstance(v, str) else v
                                 for k, v in info[key].items() if "timer" not in k}
        links[link["ifname"]] = kept
    addrs = {}
    for item in net["addr"] if isinstance(net["addr"], list) else []:
        # Lifetimes count down; IPv6 link-local addresses are the kernel's (EUI-64 of a random MAC).
        addrs[item["ifname"]] = _sorted([
            {k: v for k, v in a.items() if k not in ("valid_life_time", "preferred_life_time")}
            for a in item.get("addr_info", []) if not (a.get("family") == "inet6" and _is_link_local6(a.get("local")))
        ])
    # IPv6 routes of link-local and multicast prefixes (and the local routes of link-local addresses) come
    # with every device; "expires" counts down.
    routes = _sorted([{k: v for k, v in r.items() if k != "expires"} for r in _list(net["route"])
                      if not _is_link_local6(r.get("dst"))])
    neigh = _sorted([{**n, "lladdr": mac(n.get("lladdr"))} for n in _list(net["neigh"])
                     # Only permanent entries (podnet's): the others are ARP/ND of traffic, with timers.
                     if "PERMANENT" in (n.get("state") or [])])
    fdb = _sorted([{**f, "mac": _bridge_mac(f, bridges) or mac(f.get("mac"))} for f in _list(net["fdb"])
                   # Learned (dynamic) entries come and go with traffic; podnet writes permanent/static ones.
                   if f.get("state") in ("permanent", "static")])
    return {"link": links, "addr": addrs, "route": routes, "rule": _sorted(_list(net["rule"])), "neigh": neigh,
            "neigh_proxy": _sorted(_list(net["neigh_proxy"])), "fdb": fdb,
            "iptables": normalize_iptables(net["iptables"]), "ip6tables": normalize_iptables(net["ip6tables"]),
            "sysctl": dict(sorted(line.split(":", 1) for line in net["sysctl"].splitlines() if ":" in line))}


def _unpadded(text: str) -> str:
    return re.sub(r"(?<=[.:])0(?=[0-9a-f]\b)", "", text)


def _bridge_mac(entry: dict[str, Any], bridges: dict[str, str]) -> str | None:
    """The name of a bridge's own MAC in its own fdb entries; any device's 33:33:ff:xx:xx:xx entry is the
    kernel's (solicited-node multicast of its IPv6 link-local address, made from the MAC the device had
    when it came up: a bridge's first, random one)."""
    if str(entry.get("mac", "")).startswith("33:33:ff:"):
        return f"<33:33:ff of {entry.get('ifname')}>"
    for own, name in bridges.items():
        if entry.get("ifname") == name and entry.get("mac") in (own, "33:33:ff:" + own[-8:]):
            return f"<{'mac' if entry['mac'] == own else '33:33:ff'} of {name}>"
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]  # an {"error": ...} stays visible


_COUNTERS = re.compile(r" \[\d+:\d+\]$")


def normalize_iptables(text: str) -> dict[str, list[str]]:
    """iptables-save as table -> lines: no comment lines (they carry the date), no packet/byte counters
    on the chain lines; a table with built-in ACCEPT chains only and no rule is left out (listing a table
    can create it, empty, on the nf_tables backend: it filters nothing)."""
    tables: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line != "COMMIT":
            current.append(_COUNTERS.sub("", line))
    builtin = re.compile(r"^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT$")
    return {t: lines for t, lines in sorted(tables.items()) if not all(builtin.match(line) for line in lines)}


def _normalize_files(files: dict[str, Any], procs: dict[str, str]) -> dict[str, Any]:
    out = {}
    for path, entry in sorted(files.items()):
        entry = dict(entry)
        if path.endswith("/bird.pid") and "content" in entry:
            # BIRD's pid differs from one start to the next: what counts is that it names a running BIRD.
            pid = entry.pop("content").strip()
            entry["names"] = "running bird" if procs.get(pid, "").split(" ", 1)[0].endswith("bird") else pid
        elif path.endswith("/bird.log") and "content" in entry:
            entry.pop("content")  # BIRD's own log: timestamped lines
        elif "/__pycache__/" in path + "/":
            continue  # compiled by whichever Python ran podnet's engine on the node, when it did
        out[path] = entry
    return out


def snapshot_diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two snapshots differ, one line per difference (dotted path: left != right)."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                diffs.append(f"{path}.{key}: {'<absent>' if key not in a else _short(a[key])} != "
                             f"{'<absent>' if key not in b else _short(b[key])}")
            else:
                diffs += snapshot_diff(a[key], b[key], f"{path}.{key}")
        return diffs
    if isinstance(a, list) and isinstance(b, list) and a != b:
        only_a = [x for x in a if x not in b]
        only_b = [x for x in b if x not in a]
        return [f"{path}: only left {_short(only_a)}; only right {_short(only_b)}"]
    return [] if a == b else [f"{path}: {_short(a)} != {_short(b)}"]


def _short(value: Any, limit: int = 400) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def digest(snap: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(snap, sort_keys=True).encode()).hexdigest()[:12]
