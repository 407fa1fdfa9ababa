# Copyright: podnet contributors
# Apache License 2.0
"""Loss probes between pods: what podnet.dataplane.pod_probe starts in each pod and reads back.

One prober runs in a pod's network namespace, bound to one UDP port on every address of the pod. It starts
listening only; on SIGUSR2 it starts sending (every node's probers listen before any sends, so a probe sent to a
prober that is not there yet is not counted lost). Every ``interval`` it then sends one datagram to each target,
``"<source name> <tick>"``, with the tick counting from 0; it counts what it sent to each target and records which
ticks arrived from each source. It stops sending on SIGUSR1 (the quiet phase: every node stops sending before any
stops listening, so a probe still in flight is not counted lost), and on SIGTERM, or when its time bound runs out,
it listens for a short grace period more, writes its report (atomically) and ends. The report lists received
ticks as ranges, so a report stays small while nothing is lost.

``merge(reports)`` turns every pod's report into one row per (source, target) pair: sent, received, lost, and the
longest run of consecutive lost ticks (times the interval: the longest outage that pair saw).

This file is also the prober's program: pod_probe writes it into its state folder and runs it with the node's
Python (``python3 loss_probe.py --name ... --report ... <target>=<address> ...``); it needs only the standard
library.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time

GRACE = 0.5  # seconds of listening after SIGTERM, for datagrams still in flight
REPORT_MARK = "loss_probe"


def ranges(ticks: set[int]) -> list[list[int]]:
    """Sorted ticks as inclusive [first, last] runs: {0, 1, 2, 5} -> [[0, 2], [5, 5]]."""
    out: list[list[int]] = []
    for tick in sorted(ticks):
        if out and tick == out[-1][1] + 1:
            out[-1][1] = tick
        else:
            out.append([tick, tick])
    return out


def lost_runs(sent: int, received: list[list[int]]) -> tuple[int, int]:
    """Of ticks 0..sent-1, how many are not in `received` (ranges), and the longest run of them in a row."""
    got = 0
    longest = 0
    expected = 0  # the next tick not yet accounted for
    for first, last in received:
        first, last = max(first, 0), min(last, sent - 1)
        if first > last:
            continue
        longest = max(longest, first - expected)
        got += last - first + 1
        expected = last + 1
    longest = max(longest, sent - expected)
    return sent - got, longest


def merge(reports: list[dict]) -> list[dict]:
    """One row per (source, target) pair of the pods' reports: sent, received, lost, longest_gap_ms."""
    by_name = {report["name"]: report for report in reports}
    rows = []
    for source in sorted(by_name):
        report = by_name[source]
        for target, sent in sorted(report["sent"].items()):
            other = by_name.get(target)
            received = (other or {}).get("received", {}).get(source, [])
            lost, longest = lost_runs(sent, received)
            rows.append({"source": source, "target": target, "sent": sent, "received": sent - lost, "lost": lost,
                         "longest_gap_ms": longest * report["interval_ms"], "target_reported": other is not None})
    return rows


class Prober:
    def __init__(self, name: str, port: int, interval_ms: int, targets: dict[str, str]):
        self.name = name
        self.interval = interval_ms / 1000
        self.interval_ms = interval_ms
        self.targets = targets
        self.sent = dict.fromkeys(targets, 0)
        self.received: dict[str, set[int]] = {}
        self.tick = 0
        self.sending = False
        self.sent_once = False  # a quiet prober never sends again
        self.stopping = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind(("0.0.0.0", port))
        self.sock.setblocking(False)
        self.port = port

    def send_tick(self) -> None:
        payload = f"{self.name} {self.tick}".encode()
        for target, address in self.targets.items():
            # a send the kernel refuses (no route) is a lost probe too: it counts as sent
            self.sent[target] += 1
            try:
                self.sock.sendto(payload, (address, self.port))
            except OSError:
                pass
        self.tick += 1

    def drain(self) -> None:
        while True:
            try:
                data, _peer = self.sock.recvfrom(512)
            except (BlockingIOError, InterruptedError):
                return
            source, _space, tick = data.decode("utf-8", "replace").rpartition(" ")
            if source and tick.isdigit():
                self.received.setdefault(source, set()).add(int(tick))

    def run(self, bound: float) -> None:
        end = time.monotonic() + bound
        next_send = time.monotonic()
        stop_at = None
        while True:
            now = time.monotonic()
            if self.stopping and stop_at is None:
                stop_at = now + GRACE
            if now >= end and stop_at is None:
                self.sending, stop_at = False, now + GRACE
            if stop_at is not None and now >= stop_at:
                self.drain()
                return
            if self.sending and not self.sent_once:
                self.sent_once, next_send = True, now
            if self.sending and not self.stopping and now >= next_send:
                self.send_tick()
                # one tick per interval, counted from the start: a late wake-up does not shift the ticks after it
                next_send += self.interval
                if next_send < now:
                    next_send = now + self.interval
            wait = (stop_at if stop_at is not None else next_send if self.sending else now + 0.1) - time.monotonic()
            try:
                select.select([self.sock], [], [], max(wait, 0))
            except InterruptedError:
                pass
            self.drain()

    def report(self) -> dict:
        return {"podnet": REPORT_MARK, "name": self.name, "interval_ms": self.interval_ms, "port": self.port,
                "ticks": self.tick, "sent": self.sent,
                "received": {source: ranges(ticks) for source, ticks in sorted(self.received.items())}}


def write_report(path: str, report: dict) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(report, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval-ms", type=int, required=True)
    parser.add_argument("--bound", type=float, required=True, help="seconds at most")
    parser.add_argument("--report", required=True)
    parser.add_argument("targets", nargs="*", help="<name>=<IPv4 address>")
    args = parser.parse_args(argv)
    targets = dict(target.rsplit("=", 1) for target in args.targets)
    prober = Prober(args.name, args.port, args.interval_ms, targets)

    def send(_signum, _frame):
        if not prober.sent_once:
            prober.sending = True

    def quiet(_signum, _frame):
        prober.sending = False

    def stop(_signum, _frame):
        prober.stopping = True

    signal.signal(signal.SIGUSR2, send)
    signal.signal(signal.SIGUSR1, quiet)
    signal.signal(signal.SIGTERM, stop)
    prober.run(args.bound)
    write_report(args.report, prober.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
