"""flannel's udp wire format, seen on the lab's underlay and spoken by hand (run inside a namespace).

flanneld's udp backend moves every pod packet through a TUN device and sends the IPv4 packet it read, as it
is, as the payload of a UDP datagram from its socket on port 8285 to the peer node's port 8285 - and writes
every datagram it receives on that port to the TUN device. So on the wire: outer IPv4, UDP 8285 -> 8285, and
the inner IPv4 packet as the whole payload.

    python udp_wire.py capture <seconds>                JSON lines, one per UDP datagram that enters any device
                                                        of the namespace (each frame once: as it comes in), until
                                                        its stdin closes (then what is queued is still read) or
                                                        <seconds> pass
    python udp_wire.py send <dst> <port> <inner src> <inner dst>
                                                        one ICMP echo request (id 0x5044) from <inner src> to
                                                        <inner dst>, sent as flanneld sends it (a UDP socket
                                                        bound to <port>), to <dst>:<port>

Raw frames are parsed here with struct because that is the test's point: the bytes on the wire.
"""
from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ICMP_ECHO_ID = 0x5044


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0x1234) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def echo_request(src: str, dst: str, seq: int = 1) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ICMP_ECHO_ID, seq) + b"podnet-flanneld-udp"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ipv4(src, dst, socket.IPPROTO_ICMP, body)


def parse(frame: bytes) -> dict | None:
    """One Ethernet frame: the UDP datagram it carries, described (None for anything else)."""
    if len(frame) < 14 + 20 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total, flags_fragment, proto = struct.unpack_from("!H", ip, 2)[0], struct.unpack_from("!H", ip, 6)[0], ip[9]
    if proto != socket.IPPROTO_UDP:
        return None
    # by the UDP header's length, not the outer IPv4 total length: in frames taken off the lab's veths the latter
    # was seen 8 bytes short (1448 for a 1456-byte packet) while every byte is in the frame and the peer takes it
    udp = ip[ihl:]
    sport, dport, length, udp_sum = struct.unpack_from("!HHHH", udp)
    payload = udp[8:length]
    inner = {}
    if payload and payload[0] >> 4 == 4:
        inner_ihl = (payload[0] & 0x0F) * 4
        inner = {"version": 4, "total_length": struct.unpack_from("!H", payload, 2)[0], "proto": payload[9],
                 "src": socket.inet_ntoa(payload[12:16]), "dst": socket.inet_ntoa(payload[16:20]),
                 "icmp_type": payload[inner_ihl] if payload[9] == socket.IPPROTO_ICMP else None,
                 "header_checksum_ok": checksum(payload[:inner_ihl]) == 0}
    return {"frame_length": len(frame), "ip_total_length": total,
            "src": socket.inet_ntoa(ip[12:16]), "dst": socket.inet_ntoa(ip[16:20]), "sport": sport,
            "dport": dport, "more_fragments": bool(flags_fragment & 0x2000), "fragment_offset": flags_fragment & 0x1FFF,
            "udp_length": length, "payload_length": len(payload), "udp_checksum": udp_sum, "inner": inner}


def report(sock: socket.socket) -> None:
    frame, address = sock.recvfrom(65535)
    if address[2] == socket.PACKET_OUTGOING:
        return  # the copy leaving by another port is the same frame
    described = parse(frame)
    if described is not None:
        print(json.dumps(described), flush=True)


def capture(seconds: float) -> None:
    # unbound: every device (a bridge's own device does not see what it forwards between its ports)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    print(json.dumps({"ready": True}), flush=True)
    # The caller ends the capture by closing stdin once it has what it waits for: a fixed window either wastes
    # time or, on a loaded machine (a QEMU guest beside other tests), ends before the traffic it should see.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready = select.select([sock, sys.stdin], [], [], left)[0]
        if sys.stdin in ready and not sys.stdin.buffer.raw.read(4096):
            break
        if sock in ready:
            report(sock)
    # A frame is queued on the socket as it crosses a device: what crossed before the caller stopped is here.
    sock.setblocking(False)
    while True:
        try:
            report(sock)
        except BlockingIOError:
            break


def send(dst: str, port: int, inner_src: str, inner_dst: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        sock.sendto(echo_request(inner_src, inner_dst), (dst, port))


if __name__ == "__main__":
    if sys.argv[1] == "capture":
        capture(float(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
