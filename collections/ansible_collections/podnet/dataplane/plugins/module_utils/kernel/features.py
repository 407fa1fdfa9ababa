# Copyright: podnet contributors
# Apache License 2.0
"""Which of the kernel pieces a transport needs a node's kernel has: read before any node changes.

A VXLAN, IPIP, FOU or WireGuard device is made over netlink, and a kernel without the piece answers only
"Operation not supported" (or "Unknown device type") in the middle of a run - after other nodes changed.
The preflight asks every node first. One fixed shell script (FEATURE_PROBE_COMMAND, no inventory value in
it) prints what the node knows: the modules loaded (/sys/module), the kernel's build configuration
(/proc/config.gz, else /boot/config-<release>), and what /lib/modules/<release> holds (modules.builtin,
modules.dep). `judge` weighs it: a piece is there when loaded, built in or installed as a module; it is
missing only when the node says so for certain (its configuration has it unset, or its module directory lacks
it). A node that can tell neither (a container without /lib/modules and without a kernel configuration,
where the host may still load the module on demand) is reported as not known and not refused.

The preflight action plugin sends the script beside its address dump (no Python on the node); the
preflight module runs the same script.
"""
from __future__ import annotations

from dataclasses import dataclass

# feature -> (kernel module, configuration symbols: the module's own first, then bool options it needs).
# fou: an IPIP device with `encap fou` also needs NET_FOU_IP_TUNNELS (a bool, never a module).
FEATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "vxlan": ("vxlan", ("VXLAN",)),
    "ipip": ("ipip", ("NET_IPIP",)),
    "fou": ("fou", ("NET_FOU", "NET_FOU_IP_TUNNELS")),
    "wireguard": ("wireguard", ("WIREGUARD",)),
}
# What each transport makes on the node: UDP is an IPIP device with foo-over-UDP encapsulation.
TRANSPORT_FEATURES = {"vxlan": ("vxlan",), "ipip": ("ipip",), "udp": ("ipip", "fou"), "wireguard": ("wireguard",)}

_MODULE_NAMES = [module for module, _symbols in FEATURES.values()]
_MODULES = "|".join(_MODULE_NAMES)
_SYMBOLS = "|".join(sorted({symbol for _module, symbols in FEATURES.values() for symbol in symbols}))
# Fixed text: a shell line of its own, sent as it is (nothing from the inventory goes into it).
FEATURE_PROBE_COMMAND = (
    'r=$(uname -r); echo "release $r"; '
    f'for m in {" ".join(_MODULE_NAMES)}; do '
    '[ -e "/sys/module/$m" ] && echo "loaded $m"; done; '
    '{ zcat /proc/config.gz 2>/dev/null || cat "/boot/config-$r" 2>/dev/null; } '
    f"| grep -E '^(# )?CONFIG_({_SYMBOLS})[= ]' | sed 's/^/config /'; "
    'if [ -d "/lib/modules/$r" ]; then echo modules-dir; '
    f"sed -n -E 's#^(.*/)?({_MODULES})\\.ko$#builtin \\2#p' \"/lib/modules/$r/modules.builtin\" 2>/dev/null; "
    f"sed -n -E 's#^([^:]*/)?({_MODULES})\\.ko(\\.[a-z]+)?:.*#module \\2#p' \"/lib/modules/$r/modules.dep\" "
    "2>/dev/null; fi; true"
)


@dataclass(frozen=True)
class Verdict:
    feature: str
    available: bool | None  # None: the node cannot tell (not refused)
    how: str  # loaded, built in, loadable module, or why it is missing / not known

    def as_dict(self) -> dict:
        return {"available": self.available, "how": self.how}


def parse_probe(text: str) -> dict:
    """The probe's output as facts: release, loaded, builtin, module (sets of module names), config
    (symbol -> 'y', 'm' or 'n') and whether /lib/modules/<release> exists."""
    facts: dict = {"release": "", "loaded": set(), "builtin": set(), "module": set(), "config": {},
                   "modules_dir": False}
    for line in text.splitlines():
        key, _sep, value = line.strip().partition(" ")
        if key == "release":
            facts["release"] = value
        elif key in ("loaded", "builtin", "module"):
            facts[key].add(value)
        elif key == "modules-dir":
            facts["modules_dir"] = True
        elif key == "config":
            if value.startswith("# CONFIG_") and value.endswith(" is not set"):
                facts["config"][value[len("# CONFIG_"):-len(" is not set")]] = "n"
            elif value.startswith("CONFIG_") and "=" in value:
                symbol, _sep, setting = value[len("CONFIG_"):].partition("=")
                facts["config"][symbol] = setting
    return facts


def judge(feature: str, facts: dict) -> Verdict:
    """Whether the node's kernel has `feature`, from parse_probe's facts."""
    module, symbols = FEATURES[feature]
    release = facts["release"] or "?"
    config = facts["config"]
    for symbol in symbols[1:]:  # the bool options: only the configuration can say
        if config.get(symbol) == "n":
            return Verdict(feature, False, f"CONFIG_{symbol} is not set")
    if module in facts["loaded"]:
        return Verdict(feature, True, "loaded")
    if module in facts["builtin"] or config.get(symbols[0]) == "y":
        return Verdict(feature, True, "built in")
    if module in facts["module"]:
        return Verdict(feature, True, "loadable module")
    if config.get(symbols[0]) == "n":
        return Verdict(feature, False, f"CONFIG_{symbols[0]} is not set")
    if facts["modules_dir"]:
        return Verdict(feature, False, f"module {module} is neither loaded, built in nor installed under "
                                       f"/lib/modules/{release}")
    if config.get(symbols[0]) == "m":
        return Verdict(feature, None, f"kernel {release} builds {module} as a module, but this node has no "
                                      f"/lib/modules/{release} (a container?): the host may load it on demand")
    return Verdict(feature, None, f"module {module} is not loaded and this node shows neither its kernel's "
                                  "configuration nor /lib/modules: not known")


def kernel_report(probe_output: str, wanted: list[str]) -> tuple[dict, list[Verdict]]:
    """(the `kernel` return value of the preflight, the verdicts of missing pieces)."""
    facts = parse_probe(probe_output)
    verdicts = [judge(feature, facts) for feature in wanted]
    report = {"release": facts["release"], "features": {v.feature: v.as_dict() for v in verdicts}}
    return report, [v for v in verdicts if v.available is False]


def missing_message(missing: list[Verdict], release: str) -> str:
    pieces = "; ".join(f"{v.feature} ({v.how})" for v in missing)
    return (f"podnet preflight: this node's kernel {release} lacks what the chosen transport needs: {pieces}; "
            "nothing was changed on any node")
