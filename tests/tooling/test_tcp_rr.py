"""bench/tcp_rr.py, the request/response latency tool of the dataplane benchmark, between two namespaces
this test creates (joined by a veth pair, removed afterwards): it counts only answered transactions, its
mean round trip is the elapsed time over that count, and the server ends with the client's connection."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.labkit import list_netns, remove_netns, unique_prefix

TCP_RR = Path(__file__).resolve().parents[2] / "bench" / "tcp_rr.py"
SERVER, CLIENT = "10.98.0.2", "10.98.0.1"  # inside this test's namespaces only


@pytest.fixture
def pair():
    prefix = unique_prefix()
    a, b = f"{prefix}-rr-a", f"{prefix}-rr-b"
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b],
                       check=True)
        for ns, address in ((a, CLIENT), (b, SERVER)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        yield a, b
    finally:
        remove_netns(prefix)
        assert list_netns(prefix) == []


def start_server(ns: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(TCP_RR), "server", "--port",
                               str(port), "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while f":{port} " not in subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn"], capture_output=True,
                                            text=True).stdout:
        assert server.poll() is None and time.monotonic() < deadline, "the server did not start listening"
        time.sleep(0.05)
    return server


def test_round_trips_are_counted_and_timed(pair):
    client_ns, server_ns = pair
    server = start_server(server_ns, 5302)
    try:
        out = subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, str(TCP_RR), "client", SERVER,
                              "--port", "5302", "--seconds", "0.5"], capture_output=True, text=True, timeout=60,
                             check=True)
        assert server.wait(timeout=10) == 0  # the server ends with the client's connection
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    result = json.loads(out.stdout)
    assert result["transactions"] >= 256 and result["transactions"] % 256 == 0
    assert result["seconds"] >= 0.5
    assert result["rtt_us"] == pytest.approx(result["seconds"] / result["transactions"] * 1e6)
    assert result["per_second"] == pytest.approx(result["transactions"] / result["seconds"])


def test_a_client_without_a_server_fails(pair):
    client_ns, _server_ns = pair
    out = subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, str(TCP_RR), "client", SERVER,
                          "--port", "5303", "--seconds", "0.2"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "ConnectionRefusedError" in out.stderr
