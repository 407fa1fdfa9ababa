# Copyright: podnet contributors
# Apache License 2.0
"""Device offload features over ethtool netlink (pyroute2.ethtool).

flannel turns TX checksum offload off on its VXLAN device: with it on, some kernels/NICs send
VXLAN packets whose inner checksum is wrong once kube-proxy SNATs them, and connections stall for
about 63 seconds (flannel issue #1279).  podnet does the same by default.
"""
from __future__ import annotations

TX_CHECKSUM = "tx-checksum-ip-generic"


def feature_command(device: str, feature: str, enabled: bool) -> str:
    return f"ethtool -K {device} {feature} {'on' if enabled else 'off'}"


def get_feature(device: str, feature: str) -> bool | None:
    """Current state of a feature; None when the device does not offer it (or does not exist)."""
    from pyroute2.ethtool import Ethtool

    ethtool = Ethtool()
    try:
        features = ethtool.get_features(device).features
    except Exception:  # pyroute2 raises assorted errors for a missing device: treat as "not offered"
        return None
    finally:
        ethtool.close()
    entry = features.get(feature)
    return None if entry is None else bool(entry.enable)


def set_feature(device: str, feature: str, enabled: bool) -> None:
    from pyroute2.ethtool import Ethtool

    ethtool = Ethtool()
    try:
        features = ethtool.get_features(device)
        features.features[feature].enable = enabled
        ethtool.set_features(device, features)
    finally:
        ethtool.close()
