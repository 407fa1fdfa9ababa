# Copyright: podnet contributors
# Apache License 2.0
"""Device offload features: read and changed with the ethtool ioctl; and the rule
that decides TX checksum offload on a VXLAN device from the node's kernel.

flannel turns TX checksum offload off on its VXLAN device: on kernels before 5.7, VXLAN packets whose
inner headers were SNATed (kube-proxy's masquerade) leave with a wrong inner checksum, the receiver drops
them and connections stall for about 63 seconds (kubernetes #88986, calico #3145).  The kernel fixed it
in 5.7, and calico applies the workaround only below that version (felix #2815).  Turning the offload
off costs a software checksum per packet and the loss of GSO on the device: flannel-vxlan ran at about
a sixth of its speed with it.  So podnet decides per node: "auto" keeps the kernel's default (on) from
5.7 and turns it off before; "on"/"off" force it (some virtual NICs, e.g. vmxnet3, have had
tunnel checksum bugs of their own whatever the kernel).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import re
import socket
import struct
from typing import NamedTuple

from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import (
    comment_line,
    display_word,
    shell_line,
)

TX_CHECKSUM = "tx-checksum-ip-generic"
TX_CHECKSUM_MODES = ("auto", "on", "off")
# First kernel without the SNAT + VXLAN checksum bug.
FIXED_KERNEL = (5, 7)
FIXED_KERNEL_TEXT = ".".join(map(str, FIXED_KERNEL))
# "5.4.0-150-generic", "4.18.0-553.el8_10.x86_64", "6.1.0-28-amd64", "5.7.0-rc1", "6.18.44-fc-v669":
# major.minor, then (optionally) a separator and the characters kernel releases are made of.
_RELEASE_RE = re.compile(r"(\d+)\.(\d+)(?:[.\-+_~][A-Za-z0-9.\-+_~]*)?")
# <linux/sockios.h>, <linux/ethtool.h>
SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GFEATURES = 0x3A
ETHTOOL_SFEATURES = 0x3B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
IFREQ_SIZE = 40


class OffloadDecision(NamedTuple):
    """What TX checksum offload a VXLAN device gets, and why (shown in results, diffs and renders)."""

    mode: str
    kernel: str
    enabled: bool
    reason: str


def kernel_version(release: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string (`uname -r`), None when it is not one."""
    match = _RELEASE_RE.fullmatch(release) if isinstance(release, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def decide_tx_checksum(mode: str, release: str) -> OffloadDecision:
    """The offload a VXLAN device gets on a kernel `release` for a mode of TX_CHECKSUM_MODES."""
    if mode not in TX_CHECKSUM_MODES:
        raise ValueError(f"tx checksum offload mode {mode!r} is not one of {', '.join(TX_CHECKSUM_MODES)}")
    if mode != "auto":
        return OffloadDecision(mode, release, mode == "on", f"forced {mode}")
    fixed = FIXED_KERNEL_TEXT
    version = kernel_version(release)
    if version is None:
        return OffloadDecision(mode, release, False, f"auto: kernel release {release!r} not understood; off, "
                                                     f"the safe side (the checksum bug is fixed from {fixed})")
    if version < FIXED_KERNEL:
        return OffloadDecision(mode, release, False, f"auto: kernel {release} is older than {fixed} "
                                                     "(VXLAN + SNAT checksum bug): off")
    return OffloadDecision(mode, release, True, f"auto: kernel {release} is {fixed} or newer: "
                                                "the kernel's default, on")


def feature_argv(device: str, feature: str, enabled: bool) -> list[str]:
    return ["ethtool", "-K", device, feature, "on" if enabled else "off"]


def feature_command(device: str, feature: str, enabled: bool) -> str:
    return shell_line(feature_argv(device, feature, enabled))


def tx_checksum_comments(device: str, decision: OffloadDecision) -> list[str]:
    """Why the device gets the offload it gets, as script comments (one line each, whatever the name)."""
    shown = display_word(device)
    lines = [comment_line(f"{shown} {TX_CHECKSUM}: {decision.reason}")]
    if decision.mode == "auto":
        lines.insert(0, comment_line(f"{shown} {TX_CHECKSUM} is decided per node (auto): off on kernels before "
                                     f"{FIXED_KERNEL_TEXT}, the kernel's default (on) from {FIXED_KERNEL_TEXT}"))
    return lines


def tx_checksum_lines(device: str, decision: OffloadDecision) -> list[str]:
    """The decision as a script prints it: why (a comment), then the command."""
    return tx_checksum_comments(device, decision) + [feature_command(device, TX_CHECKSUM, decision.enabled)]


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
    """Turn one feature on or off with the ethtool ioctl (ETHTOOL_SFEATURES: only that feature's bit is
    valid in the request); OSError when the device lacks it or the kernel did not change it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        names = _feature_names(sock, device)
        if feature not in names:
            raise OSError(errno.EOPNOTSUPP, f"{device} has no feature {feature}")
        index = names.index(feature)
        blocks = [(0, 0)] * ((len(names) + 31) // 32)
        bit = 1 << (index % 32)
        blocks[index // 32] = (bit, bit if enabled else 0)  # (valid, requested)
        _ethtool(sock, device, struct.pack("II", ETHTOOL_SFEATURES, len(blocks))
                 + b"".join(struct.pack("II", valid, requested) for valid, requested in blocks))
    if get_feature(device, feature) is not enabled:  # a fixed feature is refused silently
        raise OSError(errno.EOPNOTSUPP, f"{device}: {feature} could not be turned {'on' if enabled else 'off'}")
