"""The kernel probe's verdicts (kernel/features.py) on what nodes of each kind print: this machine (a
configuration in /proc, no /lib/modules), a Debian node (/lib/modules, no /proc/config.gz), a container with
neither, a kernel built without FOU's tunnel support. The probe itself runs on real kernels in
test_preflight.py (here) and in the QEMU guest (test_ipip_compositions.py)."""
from __future__ import annotations

import subprocess

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.features import (
    FEATURE_PROBE_COMMAND,
    judge,
    kernel_report,
    missing_message,
    parse_probe,
)

THIS_KIND = """release 6.18.44-fc
loaded vxlan
config # CONFIG_NET_IPIP is not set
config CONFIG_VXLAN=y
config # CONFIG_WIREGUARD is not set
"""
DEBIAN = """release 6.1.0-28-amd64
loaded ipip
modules-dir
module vxlan
module ipip
module fou
module wireguard
"""
CONTAINER = """release 6.1.0-28-amd64
config CONFIG_WIREGUARD=m
"""
NO_FOU_TUNNELS = """release 6.1.0-28-amd64
config CONFIG_NET_FOU=m
config # CONFIG_NET_FOU_IP_TUNNELS is not set
modules-dir
module fou
"""


@pytest.mark.parametrize(("probe", "feature", "available", "how"), [
    (THIS_KIND, "vxlan", True, "loaded"),
    (THIS_KIND, "ipip", False, "CONFIG_NET_IPIP is not set"),
    (THIS_KIND, "wireguard", False, "CONFIG_WIREGUARD is not set"),
    (THIS_KIND, "fou", None, "module fou is not loaded and this node shows neither"),
    (DEBIAN, "ipip", True, "loaded"),
    (DEBIAN, "wireguard", True, "loadable module"),
    ("release 6.1.0-28-amd64\nmodules-dir\nbuiltin vxlan\n", "vxlan", True, "built in"),
    ("release 6.1.0-28-amd64\nmodules-dir\nmodule vxlan\n", "fou", False,
     "module fou is neither loaded, built in nor installed under /lib/modules/6.1.0-28-amd64"),
    (CONTAINER, "wireguard", None, "kernel 6.1.0-28-amd64 builds wireguard as a module, but this node has no"),
    (NO_FOU_TUNNELS, "fou", False, "CONFIG_NET_FOU_IP_TUNNELS is not set"),
])
def test_verdicts(probe: str, feature: str, available: bool | None, how: str) -> None:
    verdict = judge(feature, parse_probe(probe))
    assert (verdict.available, verdict.how.startswith(how)) == (available, True), verdict


def test_the_report_names_only_what_is_surely_missing() -> None:
    report, missing = kernel_report(THIS_KIND, ["vxlan", "ipip", "fou"])
    assert report["release"] == "6.18.44-fc" and list(report["features"]) == ["vxlan", "ipip", "fou"]
    assert [v.feature for v in missing] == ["ipip"]  # fou: not known here, so not refused
    assert missing_message(missing, report["release"]) == (
        "podnet preflight: this node's kernel 6.18.44-fc lacks what the chosen transport needs: ipip "
        "(CONFIG_NET_IPIP is not set); nothing was changed on any node")


def test_the_probe_runs_in_a_plain_shell_and_reads_this_kernel() -> None:
    """dash, as /bin/sh is on Debian nodes: the probe is fixed POSIX shell, and it finds the VXLAN the lab uses."""
    out = subprocess.run(["sh", "-c", FEATURE_PROBE_COMMAND], capture_output=True, text=True, check=True).stdout
    facts = parse_probe(out)
    assert facts["release"] == subprocess.run(["uname", "-r"], capture_output=True, text=True,
                                              check=True).stdout.strip()
    assert judge("vxlan", facts).available is True
