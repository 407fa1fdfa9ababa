"""TCP request/response latency, netperf TCP_RR style: one connection, a 1-byte request, a 1-byte answer,
the next request only after the answer; transactions per second and the mean round trip.

    python bench/tcp_rr.py server --port 5202            # answers one connection, then exits
    python bench/tcp_rr.py client ADDRESS --port 5202 --seconds 2   # prints JSON

netperf is not packaged here; this is the same measurement in Python. The interpreter adds a roughly
constant few microseconds per transaction on both ends, so compare paths by their ratio to a baseline
measured with this same tool in the same run, never with netperf figures.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def serve(port: int, timeout: float) -> int:
    with socket.create_server(("0.0.0.0", port), backlog=1) as listener:
        listener.settimeout(timeout)
        conn, _peer = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, send = conn.recv, conn.sendall
        while True:
            data = recv(1)
            if not data:
                return 0
            send(data)


def measure(address: str, port: int, seconds: float) -> dict[str, float]:
    with socket.create_connection((address, port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, send = conn.recv, conn.sendall
        for _ in range(100):  # warm up: caches, neighbour entries, the first RTT estimates
            send(b"x")
            recv(1)
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(256):  # the clock is read once per 256 transactions
                send(b"x")
                if not recv(1):
                    raise RuntimeError("the server closed the connection")
            count += 256
            now = time.perf_counter()
            if now >= deadline:
                break
    elapsed = now - start
    return {"transactions": count, "seconds": elapsed, "per_second": count / elapsed,
            "rtt_us": elapsed / count * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server")
    server.add_argument("--port", type=int, default=5202)
    server.add_argument("--timeout", type=float, default=30, help="seconds to wait for the client")
    client = sub.add_parser("client")
    client.add_argument("address")
    client.add_argument("--port", type=int, default=5202)
    client.add_argument("--seconds", type=float, default=2)
    args = ap.parse_args(argv)
    if args.role == "server":
        return serve(args.port, args.timeout)
    print(json.dumps(measure(args.address, args.port, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
