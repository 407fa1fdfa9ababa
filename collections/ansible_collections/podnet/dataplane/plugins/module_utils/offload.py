# Copyright: podnet contributors
# Apache License 2.0
"""Device offload features: read with the ethtool ioctl, changed through pyroute2.ethtool.

flannel turns TX checksum offload off on its VXLAN device: with it on, some kernels/NICs send
VXLAN packets whose inner checksum is wrong once kube-proxy SNATs them, and connections stall for
about 63 seconds (flannel issue #1279).  podnet does the same by default.
"""
from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

TX_CHECKSUM = "tx-checksum-ip-generic"
# <linux/sockios.h>, <linux/ethtool.h>
SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GFEATURES = 0x3A
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
IFREQ_SIZE = 40


def feature_command(device: str, feature: str, enabled: bool) -> str:
    return f"ethtool -K {device} {feature} {'on' if enabled else 'off'}"


def get_feature(device: str, feature: str) -> bool | None:
    """Current state of a feature; None when the device does not offer it (or does not exist).

    Read with the ethtool ioctl (feature names, then the active bits) rather than pyroute2.ethtool:
    importing pyroute2 costs more than the rest of a no-op node_apply run."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            names = _feature_names(sock, device)
            if feature not in names:
                return None
            index = names.index(feature)
            blocks = (len(names) + 31) // 32
            reply = _ethtool(sock, device, struct.pack("II", ETHTOOL_GFEATURES, blocks) + bytes(16 * blocks))
    except OSError:
        return None
    _available, _requested, active, _never = struct.unpack_from("IIII", reply, 8 + 16 * (index // 32))
    return bool(active & (1 << (index % 32)))


def _feature_names(sock: socket.socket, device: str) -> list[str]:
    info = _ethtool(sock, device, struct.pack("IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
    (mask,) = struct.unpack_from("Q", info, 8)
    if not mask & (1 << ETH_SS_FEATURES):
        return []
    (count,) = struct.unpack_from("I", info, 16)
    strings = _ethtool(sock, device, struct.pack("III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
                       + bytes(ETH_GSTRING_LEN * count))
    return [strings[12 + i * ETH_GSTRING_LEN:12 + (i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
            for i in range(count)]


def _ethtool(sock: socket.socket, device: str, request: bytes) -> bytes:
    """One SIOCETHTOOL call: `request` is the ethtool command struct; returns it as the kernel filled it."""
    buf = ctypes.create_string_buffer(request, len(request))
    ifreq = struct.pack("16sP", device.encode()[:15], ctypes.addressof(buf)).ljust(IFREQ_SIZE, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return buf.raw


def set_feature(device: str, feature: str, enabled: bool) -> None:
    from pyroute2.ethtool import Ethtool

    ethtool = Ethtool()
    try:
        features = ethtool.get_features(device)
        features.features[feature].enable = enabled
        ethtool.set_features(device, features)
    finally:
        ethtool.close()
