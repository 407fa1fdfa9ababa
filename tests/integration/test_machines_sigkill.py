"""Crash safety on real machines: site.yml runs that switch backends are SIGKILLed at random points of their
write window, on the controller or on a node, and the next plain run converges to exactly the state an
uninterrupted run leaves.

Each trial:
1. starts `site.yml` switching the lab to the next backend of CYCLE, with a netlink monitor per node (`ip -n
   <prefix>-<host> -ts monitor`, read from this host);
2. kills it a random moment after a node's node_apply is seen writing (live netlink monitors; up to
   KILL_DELAY later): the write window of the whole run, first to last kernel write, is measured on the
   uninterrupted calibration runs and shown beside each kill:
   - "controller" trials: what a dying controller machine leaves: ansible-playbook's process group, every
     process below it and the lab's ssh ControlPersist masters (in sessions of their own), SIGKILLed;
   - "node" trials: that node_apply module's Python process inside its machine, SIGKILLed; the controller
     sees the module die and goes on with the other nodes;
3. at once runs a plain `site.yml` with the target backend: rc 0 within RERUN_LIMIT seconds;
4. snapshots every node (machinekit.snapshot): equal to the snapshot after the uninterrupted run to the
   same backend.

A kill is inside the write window when a kernel write of the killed run precedes it and another follows
it (the node side of a killed controller may go on; the other nodes of a node kill do) or the next run's
monitor shows writes (the killed run left work).

CYCLE alternates flannel-vxlan and calico-vxlan: between them every kind of object podnet writes on these
nodes changes (the VXLAN devices with their fdb entries and neighbours, a bridge with veth ports or routed
veths, proto-152 routes, proxy-ARP and forwarding sysctls, iptables chains, subnet.env, the persist records).
calico-bgp with BIRD (CYCLE_WITH_BIRD) adds BIRD's config, process and routes, and up to SETTLE seconds per
trial for BGP to settle: the machines lab's reboot tests and the namespace lab's BIRD tests cover it; the
cycle stays without it to keep the trials within the suite's time.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration import machinekit
from tests.integration.machinekit import HOSTS, NetlinkMonitor

pytestmark = pytest.mark.integration

TRIALS = 10
MIN_INSIDE = 8
RERUN_LIMIT = 120.0  # seconds for the run after a kill to converge
SEED = 16016
CYCLE = ("flannel-vxlan", "calico-vxlan")
CYCLE_WITH_BIRD = ("flannel-vxlan", "calico-bgp-bird", "calico-vxlan")
BACKEND_ARGS = {
    "flannel-vxlan": ("-e", "podnet_backend=flannel-vxlan"),
    "calico-bgp-bird": ("-e", "podnet_backend=calico-bgp", "-e", "podnet_calico_bgp=bird"),
    "calico-vxlan": ("-e", "podnet_backend=calico-vxlan"),
}
SETTLE = 30.0  # BIRD's sessions and learned routes settle this long after a run at most

machines = machinekit.lab_fixture()


@dataclass
class Trial:
    number: int
    kind: str
    source: str
    target: str
    window: tuple[float, float]
    kill_at: float = 0.0  # seconds after the killed run started
    killed: str = ""
    running: str = ""  # module processes on the nodes at the kill
    before: int = 0  # write events of the killed run before the kill
    after: int = 0  # ... after it
    next_writes: int = 0  # write events of the next run
    first_write: float | None = None
    last_write: float | None = None
    killed_rc: int | None = None
    rerun_rc: int | None = None
    rerun_seconds: float = 0.0
    equal: bool = False
    diff: list[str] = field(default_factory=list)
    writes_before: list[tuple[float, str]] = field(default_factory=list)  # the first writes before the kill

    @property
    def inside(self) -> bool:
        killed = bool(self.killed) and not self.killed.startswith("none")
        return killed and self.before > 0 and (self.after > 0 or self.next_writes > 0)


def run_monitored(prefix: str, backend: str, log: Path) -> tuple[int, float, list[float]]:
    """An uninterrupted site.yml run: its rc, its wall-clock start and its write events' times."""
    with NetlinkMonitor(prefix) as monitor:
        start = time.time()
        proc = machinekit.start_playbook(prefix, "site.yml", *BACKEND_ARGS[backend], log=log)
        rc = proc.wait(timeout=900)
        events = monitor.stop()
    return rc, start, sorted(t for host in HOSTS for t, _ in events[host])


def settled_snapshot(prefix: str) -> dict:
    """A snapshot that a second one a few seconds later confirms (BIRD may still be learning routes)."""
    snap = machinekit.snapshot(prefix)
    deadline = time.monotonic() + SETTLE
    while True:
        time.sleep(3)
        again = machinekit.snapshot(prefix)
        if again == snap or time.monotonic() > deadline:
            return again
        snap = again


def snapshot_like(prefix: str, reference: dict) -> tuple[bool, list[str]]:
    """Snapshot until it equals the reference, for at most SETTLE seconds; (equal, differences)."""
    deadline = time.monotonic() + SETTLE
    while True:
        snap = machinekit.snapshot(prefix)
        diff = machinekit.snapshot_diff(reference, snap)
        if not diff or time.monotonic() > deadline:
            return not diff, diff
        time.sleep(3)


class LiveWrites:
    """Each node's kernel writes from now on, seen live (a monitor per node, read by a thread): what a kill
    waits for, so that it lands inside the writes of a run."""

    def __init__(self, prefix: str) -> None:
        self.times: dict[str, list[float]] = {host: [] for host in HOSTS}
        self.procs = {host: subprocess.Popen(
            ["ip", "-n", f"{prefix}-{host}", "-ts", "monitor", "label", "link", "route", "neigh", "address"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for host in HOSTS}
        self.threads = [threading.Thread(target=self._read, args=(host, proc), daemon=True)
                        for host, proc in self.procs.items()]
        for thread in self.threads:
            thread.start()

    def _read(self, host: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = machinekit.parse_event(line.rstrip("\n"))
            if event is not None:
                self.times[host].append(event[0])

    def since(self, host: str, moment: float) -> bool:
        return any(t >= moment for t in list(self.times[host]))

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()
        for thread in self.threads:
            thread.join(timeout=5)


APPLY = "podnet.dataplane.node_apply"
# How long after a node's node_apply began writing the kill comes, at most: the three nodes write at
# about the same time, each for about a second (measured: a 1 s delay missed every write twice in five).
KILL_DELAY = {"controller": 0.3, "node": 0.1}


def kill_trial(prefix: str, trial: Trial, rng: random.Random, log: Path) -> None:
    """Start the switch to trial.target and kill it a random moment after a node's node_apply began to
    write (seen live); record what the monitors saw."""
    with NetlinkMonitor(prefix) as monitor:
        start = time.time()
        proc = machinekit.start_playbook(prefix, "site.yml", *BACKEND_ARGS[trial.target], log=log)
        kill_time = None
        running: dict[str, dict[int, str]] = {}
        watch = LiveWrites(prefix)
        try:
            # host -> when its node_apply was first seen, its pid; a node runs one node_apply per play of site.yml
            # that it takes part in (prepare, switch, the rest)
            seen: dict[str, tuple[float, int]] = {}
            deadline = time.monotonic() + 120
            while kill_time is None and time.monotonic() < deadline and proc.poll() is None:
                for host in HOSTS:
                    if host not in seen:
                        pids = [p for p, name in machinekit.module_processes(prefix, host).items() if name == APPLY]
                        if pids:
                            seen[host] = (time.time(), pids[0])
                # writes from half a second before node_apply was seen: it may have begun just before
                writing = [h for h in seen if watch.since(h, seen[h][0] - 0.5)]
                if not writing:
                    time.sleep(0.02)
                    continue
                host = rng.choice(writing)
                time.sleep(rng.uniform(0.0, KILL_DELAY[trial.kind]))
                # what runs where is read after the kill: a scan of three machines takes longer than a
                # node's writes
                kill_time = time.time()
                if trial.kind == "controller":
                    machinekit.kill_controller(proc, prefix)
                    trial.killed = f"playbook+masters ({host} writing)"
                elif machinekit.kill_pid(seen[host][1]):
                    trial.killed = f"node_apply@{host}"
                else:
                    # that node_apply ended before the kill reached it (a short phase): wait for the node's next
                    kill_time = None
                    del seen[host]
                running = {h: machinekit.module_processes(prefix, h) for h in HOSTS}
            if kill_time is None:
                trial.killed = "none (no node_apply seen writing)"
                kill_time = time.time()
            # module processes left in the machines right after the kill
            trial.running = " ".join(f"{h}:{n.rsplit('.', 1)[-1]}" for h, ps in running.items() for n in ps.values())
            trial.kill_at = kill_time - start
            trial.killed_rc = proc.wait(timeout=900)  # a node kill: the controller finishes the other nodes
        finally:
            watch.stop()
            if proc.poll() is None:
                machinekit.kill_controller(proc, prefix)
                proc.wait()
        seen_events = monitor.stop()
        events = sorted(t for host in HOSTS for t, _ in seen_events[host])
        trial.writes_before = sorted((t, f"{host} {line}") for host in HOSTS for t, line in seen_events[host]
                                     if t < kill_time)[:4]
    trial.before = sum(1 for t in events if t < kill_time)
    trial.after = sum(1 for t in events if t > kill_time)
    if events:
        trial.first_write, trial.last_write = events[0] - start, events[-1] - start


def test_sigkilled_runs_converge_to_the_uninterrupted_state(machines: str, tmp_path: Path) -> None:
    prefix = machines
    rng = random.Random(SEED)
    references: dict[str, dict] = {}
    windows: dict[tuple[str, str], tuple[float, float]] = {}
    timings: list[str] = []

    # Calibration: the first converge, then one uninterrupted switch of each kind of the cycle. Each gives
    # its target's reference snapshot and the write window of that switch.
    rc, _, _ = run_monitored(prefix, CYCLE[0], tmp_path / "converge.log")
    assert rc == 0, (tmp_path / "converge.log").read_text()
    fresh = settled_snapshot(prefix)
    for i, target in enumerate((*CYCLE[1:], CYCLE[0])):
        source = CYCLE[i]
        log = tmp_path / f"calibrate-{target}.log"
        t0 = time.monotonic()
        rc, start, events = run_monitored(prefix, target, log)
        timings.append(f"{source} -> {target}: {time.monotonic() - t0:.1f}s")
        assert rc == 0, log.read_text()
        assert events, f"no kernel write seen switching {source} -> {target}"
        windows[(source, target)] = (events[0] - start, events[-1] - start)
        references[target] = settled_snapshot(prefix)
    # A switch back leaves what a converge from scratch leaves, but for the folder calico's proxy-ARP
    # record was in (/var/lib/podnet, empty once the record goes): podnet removes no folder it cannot tell
    # it made.
    fresh_vs_switched = machinekit.snapshot_diff(fresh, references[CYCLE[0]])
    print(f"\ncalibration: {'; '.join(timings)}\nwindows: "
          + "; ".join(f"{s}->{t} {a:.1f}-{b:.1f}s" for (s, t), (a, b) in windows.items()))
    assert all(line.split(":", 1)[0].endswith(".files./var/lib/podnet") for line in fresh_vs_switched), \
        "\n".join(fresh_vs_switched)

    trials: list[Trial] = []
    for n in range(TRIALS):
        source, target = CYCLE[n % len(CYCLE)], CYCLE[(n + 1) % len(CYCLE)]
        low, high = windows[(source, target)]
        trial = Trial(n + 1, "controller" if n % 2 == 0 else "node", source, target, (low, high))
        trials.append(trial)
        kill_trial(prefix, trial, rng, tmp_path / f"trial{n + 1}-killed.log")

        with NetlinkMonitor(prefix) as monitor:
            rerun = machinekit.playbook(prefix, "site.yml", *BACKEND_ARGS[target], timeout=900)
            trial.next_writes = sum(len(e) for e in monitor.stop().values())
        trial.rerun_rc, trial.rerun_seconds = rerun.rc, rerun.seconds
        (tmp_path / f"trial{n + 1}-rerun.log").write_text(rerun.output)
        if rerun.rc == 0:
            trial.equal, trial.diff = snapshot_like(prefix, references[target])
        print(_row(trial), flush=True)
        if rerun.rc != 0:
            break  # the lab's state is unknown now: the next trials would measure nothing

    print("\n" + "\n".join([_header(), *(_row(t) for t in trials)]))
    for t in trials:
        print(f"trial {t.number}, first writes before the kill: "
              + "; ".join(line[:120] for _, line in t.writes_before))
    for t in trials:
        if t.diff:
            print(f"trial {t.number} differences:\n  " + "\n  ".join(t.diff[:40]))
    failed_reruns = [t for t in trials if t.rerun_rc != 0 or t.rerun_seconds >= RERUN_LIMIT]
    assert not failed_reruns, "reruns that did not converge in time: " + ", ".join(
        f"trial {t.number} rc={t.rerun_rc} {t.rerun_seconds:.0f}s (log {tmp_path}/trial{t.number}-rerun.log)"
        for t in failed_reruns)
    # the differences in the message itself: a CI log shows the tail of a failure
    assert all(t.equal for t in trials), "\n".join(
        f"trial {t.number} differs from the uninterrupted run: " + "\n  ".join(t.diff[:12])
        for t in trials if not t.equal)
    assert sum(t.inside for t in trials) >= MIN_INSIDE, [t.number for t in trials if not t.inside]


def _header() -> str:
    return (f"{'#':>2} {'kill':10} {'switch':32} {'killed':22} {'kill at':>7} {'window':>11} {'writes':>8} "
            f"{'in?':4} {'rerun':>10} {'equal':5} running at kill")


def _row(t: Trial) -> str:
    window = f"{t.window[0]:.1f}-{t.window[1]:.1f}"
    writes = f"{t.before}/{t.after}/{t.next_writes}"
    rerun = f"{t.rerun_rc} {t.rerun_seconds:.1f}s"
    return (f"{t.number:>2} {t.kind:10} {t.source + '->' + t.target:32} {t.killed:22} {t.kill_at:7.1f} {window:>11} "
            f"{writes:>8} {'yes' if t.inside else 'NO':4} {rerun:>10} "
            f"{'yes' if t.equal else 'NO':5} {t.running}")
