# Copyright: podnet contributors
# Apache License 2.0
"""Re-apply the state podnet recorded on this node (see persist.py) — at boot, with no Ansible run.

    python3 -m ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply /etc/podnet/state

Additive ("merged"): creates what is missing and corrects what differs; removes nothing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import iptables_command
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.iptables_chains import apply_record
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    ALL_KINDS,
    Change,
    Engine,
    EngineError,
    netns_path,
    plan,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    KObject,
    Link,
    Sysctl,
    from_dict,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.offload import (
    TX_CHECKSUM,
    TX_CHECKSUM_MODES,
    decide_tx_checksum,
    feature_command,
    get_feature,
    set_feature,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import shell_line
from ansible_collections.podnet.dataplane.plugins.module_utils.node.files import converge
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import load_all


def apply_objects(objects: list[KObject], check: bool = False) -> list[str]:
    """Node namespace first (it creates the veths whose ends live in pod namespaces), then pods.
    With check, only report what would be done (the same commands), changing nothing."""
    done: list[str] = []
    by_netns: dict[str | None, list[KObject]] = {}
    for obj in objects:
        by_netns.setdefault(getattr(obj, "netns", None), []).append(obj)
    missing = [ns for ns in by_netns if ns and not os.path.exists(netns_path(ns))]
    if missing and not check:
        for name in missing:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True, timeout=60)
    done += [shell_line(["ip", "netns", "add", name]) for name in missing]
    for netns in sorted(by_netns, key=lambda n: (n is not None, n or "")):
        want = by_netns[netns]
        if check and netns in missing:  # nothing to read there yet: everything would be configured
            done += [cmd for obj in want for cmd in obj.add_commands()]
            continue
        sysctls = [o.name for o in want if isinstance(o, Sysctl)]
        with Engine(netns) as engine:
            have = engine.gather(ALL_KINDS, sysctls)
            # A setting for an interface that neither exists nor is restored here (a pod removed since it
            # was recorded) has nowhere to go; everything else is still restored.
            devices = {o.name for o in want if isinstance(o, Link)} | set(have.link_index)
            for obj in [o for o in want if isinstance(o, Sysctl) and o.interface not in (None, *devices)]:
                want.remove(obj)
                done.append(f"# skipped {obj.name}: no interface {obj.interface}")
            changes = plan(want, have)
            if netns is not None:  # a pod's end of a veth comes from the node side: configure, never create
                changes = [Change("update", c.want, None, ["mtu", "up"])
                           if c.op == "add" and isinstance(c.want, Link) else c for c in changes]
            if not check:
                engine.apply(changes, have)
        done += [cmd for change in changes for cmd in change.commands]
    return done


def apply_rules(rules: list[dict], check: bool = False) -> list[str]:
    done = []
    for rule in rules:
        base = ["iptables", "-w", "-t", rule["table"]]
        present = subprocess.run(base + ["-C", rule["chain"], *rule["args"]], capture_output=True, check=False)
        if present.returncode != 0:
            if not check:
                subprocess.run(base + ["-A", rule["chain"], *rule["args"]], check=True, capture_output=True)
            done.append(iptables_command(rule["table"], "-A", rule["chain"], rule["args"]))
    return done


def apply_offloads(offloads: list[dict], check: bool = False) -> list[str]:
    """Recorded offload settings. A TX checksum record made in mode auto is decided again for the kernel
    that booted, by the rule the run used: a node that booted into a newer or older kernel since gets what
    a run would give it there."""
    release = os.uname().release
    done = []
    for item in offloads:
        enabled, why = item["enabled"], ""
        if item["feature"] == TX_CHECKSUM and item.get("mode") in TX_CHECKSUM_MODES:
            decision = decide_tx_checksum(item["mode"], release)
            enabled, why = decision.enabled, f"  # {decision.reason}"
        current = get_feature(item["device"], item["feature"])
        if current is not None and current != enabled:
            if not check:
                set_feature(item["device"], item["feature"], enabled)
            done.append(feature_command(item["device"], item["feature"], enabled) + why)
    return done


def apply_files(files: list[dict], check: bool = False) -> list[str]:
    """Files podnet wrote (flannel's subnet.env lives on tmpfs): written again where missing or different,
    atomically, with their recorded mode; a missing folder is made 0755, as the run made it."""
    done = []
    for item in files:
        path, content, mode = item["path"], item["content"], int(item["mode"], 8)
        if converge(path, content, mode, folder_mode=0o755, check=check):
            done.append(f"write {shell_line([path])} (mode {mode:04o})")
    return done


def service_running(pidfile: str, binary: str) -> bool:
    """Whether the process a pid file names is alive, is `binary`, and runs in this network namespace: a
    pid file left from before a reboot names nothing or some other process, and in the namespace lab a
    pid may be another node's."""
    try:
        with open(pidfile, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
            if handle.read().strip() != os.path.basename(binary)[:15]:
                return False
        return os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except (OSError, ValueError):
        return False


SERVICE_START_TIMEOUT = 10.0


def wait_for_service(pidfile: str, binary: str, timeout: float = SERVICE_START_TIMEOUT) -> bool:
    """Whether a daemon just started comes up within timeout seconds. BIRD forks and its parent returns
    before the child has written its pid file (the file exists, empty, in between): a run that returned
    then, and a re-run right after it, would take the running BIRD for none and start a second one."""
    deadline = time.monotonic() + timeout
    while not service_running(pidfile, binary):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def apply_services(services: list[dict], check: bool = False, timeout: float = SERVICE_START_TIMEOUT) -> list[str]:
    """Daemons podnet started (BIRD for calico-bgp with BIRD), started again when not running: after the
    kernel state, so BIRD finds its devices and routes in place."""
    done = []
    for service in services:
        argv = [str(word) for word in service["argv"]]
        if not service_running(service["pidfile"], argv[0]):
            if not check:
                subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
                if not wait_for_service(service["pidfile"], argv[0], timeout):
                    raise RuntimeError(f"{shell_line(argv)} returned, but no {os.path.basename(argv[0])} runs "
                                       f"after {timeout:g} s (pid file {service['pidfile']})")
            done.append(shell_line(argv))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-apply podnet's recorded node state (additive).")
    parser.add_argument("state_dir", nargs="?", default="/etc/podnet/state")
    parser.add_argument("--check", action="store_true", help="print what would be restored; change nothing")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.state_dir):
        print(f"podnet-apply: {args.state_dir} does not exist: nothing to restore")
        return 0
    problems: list[str] = []
    records = []
    objects: list[KObject] = []
    for record in load_all(args.state_dir, problems):
        try:  # a record that does not decode is skipped whole: the rest of the node is still restored
            objects += [from_dict(o) for o in record.get("objects", [])]
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{record['_file']}: {type(exc).__name__}: {exc}")
            continue
        records.append(record)
    try:
        done = apply_objects(objects, args.check)
        done += apply_rules([rule for r in records for rule in r.get("iptables", [])], args.check)
        done += apply_offloads([item for r in records for item in r.get("offload", [])], args.check)
        for record in records:  # network policy chains, after the pods' veths they name exist again
            if record.get("iptables_chains") and not args.check:
                done += apply_record(record["iptables_chains"])
        done += apply_files([item for r in records for item in r.get("files", [])], args.check)
        done += apply_services([item for r in records for item in r.get("services", [])], args.check)
    except (EngineError, OSError, RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired, KeyError,
            TypeError, ValueError) as exc:
        print(f"podnet-apply: failed: {exc}", file=sys.stderr)
        return 1
    for line in done:
        print(line)
    changes = [line for line in done if not line.startswith("#")]
    print(f"podnet-apply: {len(changes)} change(s){' needed (check: nothing changed)' if args.check else ''} from {len(records)} record(s) in {args.state_dir}")
    for problem in problems:
        print(f"podnet-apply: skipped a record that cannot be read: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
