"""Every command podnet prints is shell-safe on its own: whatever a name holds (space, quote, `;`, `$`,
backtick, newline, non-ASCII), it comes out as one shell word, so `sh` runs exactly the argument vector
podnet meant.  The planner refuses such names long before; these tests bypass it on purpose.

Checked with shlex (every line, every object type, the whole render) and with the real /bin/sh (syntax of
a rendered script, and the words sh actually reads back from each line)."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from typing import Any

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel import objects as o
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    iptables_argv,
    iptables_command,
    normalize_mac,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.iptables_chains import ChainPlan, Op
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.offload import (
    TX_CHECKSUM,
    decide_tx_checksum,
    feature_argv,
    tx_checksum_lines,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import (
    comment_line,
    display_word,
    shell_line,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.render import (
    RenderError,
    node_argvs,
    node_commands,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.plan import HOSTNAME_RE, POD_NAME_RE
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    _IFNAME_RE,
    _MAC_RE,
    _NETNS_RE,
    check_mac,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
SHELL_SETTINGS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])

# Characters that mean something to sh, plus the line breaks and blanks that split words or lines.
SPECIALS = " \t\n\r\v\f'\"`;|&$\\!*?[]{}()<>~#=%^,:@+-./"
# Any character but NUL (no argv can carry one) and lone surrogates (not text; cannot be encoded).
ANY_CHAR = st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))
HOSTILE = st.text(st.one_of(st.sampled_from(SPECIALS), ANY_CHAR), max_size=16)
HOSTILE_NAME = HOSTILE.filter(bool)  # code paths treat "" as "not given"
IPV4 = st.ip_addresses(v=4).map(str)
NETWORKS = st.builds(lambda ip, plen: f"{ip}/{plen}", IPV4, st.integers(0, 32))
ROUTE_DST = st.sampled_from(["0.0.0.0/0", "10.244.2.0/24", "10.244.0.3/32", "192.168.0.0/16"])
OPTIONAL = st.one_of(st.none(), HOSTILE_NAME)
NETNS = st.one_of(st.none(), HOSTILE_NAME)
LINK_FIELDS = ["mac", "mtu", "master", "alias", "up", "vxlan", "kind"]


def round_trips(argv: list[str]) -> None:
    line = shell_line(argv)
    assert shlex.split(line) == argv, (line, argv)


# ---------------------------------------------------------------------------------------------- objects

VXLAN = st.builds(o.VxlanInfo, vni=st.integers(1, 2**24 - 1), port=st.integers(1, 65535), local=OPTIONAL,
                  underlay=OPTIONAL, learning=st.booleans())
OBJECTS = st.one_of(
    st.builds(o.Link, name=HOSTILE_NAME, kind=st.sampled_from(["vxlan", "bridge", "veth", "ipip", "device"]),
              mtu=st.one_of(st.none(), st.integers(68, 65535)), mac=OPTIONAL, up=st.one_of(st.none(), st.booleans()),
              master=OPTIONAL, alias=OPTIONAL, vxlan=st.one_of(st.none(), VXLAN), peer=OPTIONAL, peer_netns=OPTIONAL,
              netns=NETNS),
    st.builds(o.Address, dev=HOSTILE_NAME, cidr=HOSTILE_NAME, netns=NETNS),
    st.builds(o.Neighbour, dev=HOSTILE_NAME, dst=HOSTILE_NAME, mac=HOSTILE_NAME, netns=NETNS),
    st.builds(o.FdbEntry, dev=HOSTILE_NAME, mac=HOSTILE_NAME, dst=OPTIONAL, netns=NETNS),
    st.builds(o.Route, dst=ROUTE_DST, via=OPTIONAL, dev=OPTIONAL, onlink=st.one_of(st.none(), st.booleans()),
              netns=NETNS),
    st.builds(o.Sysctl, name=HOSTILE_NAME, value=HOSTILE, netns=NETNS),
)


@SETTINGS
@given(obj=OBJECTS, changed=st.lists(st.sampled_from(LINK_FIELDS), unique=True))
def test_every_object_line_is_its_own_argv(obj: o.KObject, changed: list[str]) -> None:
    for argvs, lines in [(obj.add_argvs(), obj.add_commands()), (obj.delete_argvs(), obj.delete_commands()),
                         (obj.update_argvs(changed), obj.update_commands(changed))]:
        assert lines == [shell_line(argv) for argv in argvs]
        for argv, line in zip(argvs, lines, strict=True):
            assert shlex.split(line) == argv, (line, argv)
            if obj.netns:  # `ip netns exec` wraps by concatenation: the namespace is one word
                assert argv[:4] == ["ip", "netns", "exec", obj.netns]


@SETTINGS
@given(obj=OBJECTS)
def test_hostile_fields_are_whole_words_where_they_belong(obj: o.KObject) -> None:
    argv = obj.add_argvs()[0] if obj.add_argvs() else []
    body = argv[4:] if obj.netns else argv
    if isinstance(obj, o.Link):
        assert body[3] == obj.name
        if obj.kind == "veth" and obj.peer:
            assert body[body.index("peer") + 2] == obj.peer
    elif isinstance(obj, o.Address):
        assert body == ["ip", "addr", "add", obj.cidr, "dev", obj.dev]
    elif isinstance(obj, o.Neighbour):
        assert body == ["ip", "neigh", "add", obj.dst, "dev", obj.dev, "lladdr", obj.mac]
    elif isinstance(obj, o.FdbEntry):
        assert body == ["bridge", "fdb", "add", obj.mac, "dst", str(obj.dst), "dev", obj.dev]
    elif isinstance(obj, o.Route):
        assert body[:3] == ["ip", "route", "add"] and (not obj.dev or body[body.index("dev", 4) + 1] == obj.dev)
    elif isinstance(obj, o.Sysctl):
        assert body == ["sysctl", "-w", f"{obj.name}={obj.value}"]


@SETTINGS
@given(argv=st.lists(HOSTILE, min_size=1, max_size=8))
def test_shell_line_round_trips_any_argv(argv: list[str]) -> None:
    round_trips(argv)
    round_trips(["ip", *argv])


@pytest.mark.parametrize("first", ["!", "if", "{", "A=b", "case"])
def test_a_first_word_that_sh_would_read_as_syntax_is_quoted(first: str) -> None:
    line = shell_line([first, "x"])
    assert shlex.split(line) == [first, "x"] and not line.startswith(f"{first} ")


def test_plain_words_stay_bare_and_nul_is_refused() -> None:
    assert shell_line(["iptables", "-t", "nat", "-A", "POSTROUTING", "!", "-s", "10.0.0.0/8"]) == \
        "iptables -t nat -A POSTROUTING ! -s 10.0.0.0/8"
    assert shell_line(["ip", "link", "set", "x", "alias", "podnet:pod:web", "mtu", "1450"]) == \
        "ip link set x alias podnet:pod:web mtu 1450"
    assert shell_line(["ip", ""]) == "ip ''"
    with pytest.raises(ValueError, match="NUL"):
        shell_line(["ip", "a\0b"])


# ------------------------------------------------------------------------------------ --diff (describe)

BASH = shutil.which("bash")


# Where the real shells run: a quoting bug would turn a word into a redirection, and its file must land
# here, not in the working tree.
SCRATCH = tempfile.TemporaryDirectory(prefix="podnet-shell-safe-")


def bash_words(text: str) -> list[str]:
    """The words bash reads from `text` ($'...' included), printed by bash itself: no command runs."""
    if BASH is None:
        pytest.skip("bash is not installed")
    out = subprocess.run([BASH, "--norc", "--noprofile", "-c", f"printf '%s\\0' {text}"],
                         env={"PATH": "/nonexistent", "LC_ALL": "C.UTF-8"}, cwd=SCRATCH.name,
                         capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


@SHELL_SETTINGS
@given(name=HOSTILE_NAME, alias=HOSTILE, netns=NETNS, mtu=st.one_of(st.none(), st.integers(68, 9000)))
def test_describe_cannot_forge_a_field_or_a_line(name: str, alias: str, netns: str | None, mtu: int | None) -> None:
    link = o.Link(name=name, kind="veth", alias=alias, mtu=mtu, netns=netns)
    line = link.describe()
    assert len(line.splitlines()) == 1 and "\n" not in line
    expected = ["link", f"name={name}", "kind=veth"] + ([f"mtu={mtu}"] if mtu else []) + ["up=True", f"alias={alias}"]
    expected += [f"netns={netns}"] if netns else []
    assert bash_words(line) == expected


def test_describe_keeps_ordinary_values_as_they_were() -> None:
    link = o.Link(name="flannel.1", kind="vxlan", mtu=1450, alias="podnet:vtep",
                  vxlan=o.VxlanInfo(local="192.168.0.4", underlay="eth0"))
    assert link.describe() == ("link name=flannel.1 kind=vxlan mtu=1450 up=True alias=podnet:vtep vxlan=(vxlaninfo "
                               "vni=1 port=8472 local=192.168.0.4 underlay=eth0 learning=False)")
    assert o.Link(name="a b", kind="veth", alias="x up=False").describe() == \
        "link name='a b' kind=veth up=True alias='x up=False'"
    assert display_word("a\nb") == "$'a\\nb'" and display_word("it's\t") == "$'it\\'s\\t'"


@pytest.mark.parametrize("value", ["a\nb", "tab\there", "it's", "back\\slash", "\x1b[31m", "nel\x85", "ls\u2028",
                                   "soft\u00adhyphen", "\U000e0001tag", "ünï", "", " "])
def test_a_displayed_value_is_one_word_that_bash_reads_back(value: str) -> None:
    shown = display_word(value)
    assert len(shown.splitlines()) == 1 and "\n" not in shown
    assert bash_words(f"x {shown}") == ["x", value]


# ----------------------------------------------------------------------------- iptables, chains, offload

@SETTINGS
@given(table=HOSTILE_NAME, chain=HOSTILE_NAME, args=st.lists(st.one_of(st.just("!"), HOSTILE), max_size=6))
def test_iptables_and_chain_commands_round_trip(table: str, chain: str, args: list[str]) -> None:
    assert shlex.split(iptables_command(table, "-A", chain, args)) == iptables_argv(table, "-A", chain, args)
    plan = ChainPlan(ops=[Op("append", chain, "ignored", ["-A", chain, *args]), Op("declare", chain, "", ["-N", chain])],
                     problems=[])
    assert [shlex.split(line) for line in plan.commands(table)] == \
        [["iptables", "-t", table, "-A", chain, *args], ["iptables", "-t", table, "-N", chain]]


@SETTINGS
@given(device=HOSTILE_NAME, mode=st.sampled_from(["auto", "on", "off"]),
       kernel=st.sampled_from(["6.1", "5.4.0-150-generic"]))
def test_offload_lines_are_one_comment_line_each_then_the_command(device: str, mode: str, kernel: str) -> None:
    decision = decide_tx_checksum(mode, kernel)
    *comments, command = tx_checksum_lines(device, decision)
    assert comments and all(c.startswith("# ") and len(c.splitlines()) == 1 for c in comments)
    assert shlex.split(command) == feature_argv(device, TX_CHECKSUM, decision.enabled)


# ------------------------------------------------------------------------------------------------ render

def from_regex(regex: re.Pattern[str], max_size: int) -> st.SearchStrategy[str]:
    return st.from_regex(regex, fullmatch=True).filter(lambda s: len(s) <= max_size)


PLANNER = {
    "node": from_regex(HOSTNAME_RE, 40),
    "pod": from_regex(POD_NAME_RE, 30),
    "netns": from_regex(_NETNS_RE, 40),
    "dev": from_regex(_IFNAME_RE, 15).filter(lambda s: s not in (".", "..")),
    "mac": from_regex(_MAC_RE, 17).filter(lambda mac: not check_mac("mac", mac)),
}
# What reaches the script as text podnet does not check against a pattern of its own: the node's name (a
# comment), pod names (the veth's alias) and namespaces. Device names and MACs are checked by the steps
# themselves (HOSTILE_DEVICES: the render refuses them).
HOSTILE_NAMES = dict(PLANNER, node=HOSTILE_NAME, pod=HOSTILE_NAME,
                     netns=HOSTILE_NAME.filter(lambda name: "/" not in name and name not in (".", "..")))
# normalize_mac strips blanks: a MAC of only blanks would be "no MAC", another shape of node.
HOSTILE_DEVICES = dict(PLANNER, dev=HOSTILE_NAME.filter(lambda name: not _IFNAME_RE.fullmatch(name)),
                       mac=HOSTILE_NAME.filter(lambda mac: mac.strip() and check_mac("mac", mac.strip())))
BACKENDS = {  # backend: (pod mode, has a vtep, has a tunnel, has a bridge)
    "flannel-vxlan": ("bridge", True, False, True),
    "flannel-host-gw": ("bridge", False, False, True),
    "calico-bgp": ("routed", False, False, False),
    "calico-ipip": ("routed", False, True, False),
    "canal": ("routed", True, False, False),
}


@st.composite
def nodes(draw: st.DrawFn, names: dict[str, st.SearchStrategy[str]]) -> dict[str, Any]:
    """A node shaped like the planner's output (see plan.plan_cluster), with generated names."""
    backend = draw(st.sampled_from(sorted(BACKENDS)))
    mode, has_vtep, has_tunnel, has_bridge = BACKENDS[backend]
    pods = []
    for index in range(draw(st.integers(1, 2))):
        netns = draw(names["netns"])
        pods.append({"name": draw(names["pod"]), "netns": netns, "address": f"10.244.0.{index + 2}/24",
                     "interface": draw(names["dev"]), "host_interface": draw(names["dev"]), "labels": {},
                     "gateway": "169.254.1.1" if mode == "routed" else "10.244.0.1"})
    device = draw(names["dev"])
    underlay = draw(st.one_of(st.none(), names["dev"]))
    peer = {"vtep_ip": "10.244.1.0", "mac": draw(names["mac"]), "node_ip": "192.168.0.16"}
    return {
        "name": draw(names["node"]), "backend": backend, "pod_mode": mode, "node_ip": "192.168.0.4",
        "subnet": "10.244.0.0/24", "cluster_cidr": "10.244.0.0/16", "underlay_interface": underlay,
        "render_mtu": 1450, "mtu": None,
        "bridge": {"name": draw(names["dev"]), "address": "10.244.0.1/24"} if has_bridge else None,
        "pods": pods,
        "sysctls": {"net.ipv4.ip_forward": 1},
        "vtep": {"name": device, "vni": 1, "port": 8472, "local": "192.168.0.4", "underlay_interface": None,
                 "mac": draw(names["mac"]), "mtu": None, "address": "10.244.0.0/32", "learning": False,
                 "tx_checksum_offload": draw(st.sampled_from(["auto", "on", "off"])), "peers": [peer]}
        if has_vtep else None,
        "tunnel": {"name": device, "mtu": None, "address": "10.244.0.0/32"} if has_tunnel else None,
        "routes": [{"dst": "10.244.1.0/24", "via": "10.244.1.0" if has_vtep else "192.168.0.16",
                    "dev": device if (has_vtep or has_tunnel) else None, "onlink": has_vtep or has_tunnel}],
        "iptables": [{"table": "nat", "chain": "POSTROUTING", "rule": ["!", "-s", "10.244.0.0/16", "-j", "MASQUERADE"]}],
        "subnet_env": {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.0.1/24", "FLANNEL_MTU": 1450,
                       "FLANNEL_IPMASQ": "true"} if backend in ("flannel-vxlan", "flannel-host-gw", "canal") else None,
        "policy": {"chains": {}, "jump": {"table": "filter", "chain": "FORWARD", "target": "PODNET-FORWARD",
                                          "position": 1}},
    }


def is_comment(line: str) -> bool:
    return line.startswith("#")


def check_render(node: dict[str, Any], kernel: str = "") -> list[str]:
    lines = node_commands(node, kernel)
    argvs = node_argvs(node, kernel)
    commands = [line for line in lines if not is_comment(line)]
    assert len(commands) == len(argvs)
    for line, argv in zip(commands, argvs, strict=True):
        assert shlex.split(line) == argv, (line, argv)
    for line in filter(is_comment, lines):  # a comment stays one line whatever the names hold
        assert len(line.splitlines()) == 1 and "\n" not in line and "\r" not in line, line
    assert lines[0] == comment_line(f"podnet: {display_word(node['name'])} (192.168.0.4), backend "
                                    f"{node['backend']}, pod subnet 10.244.0.0/24")

    # Each generated name is one whole word where podnet meant it.
    for pod in node["pods"]:
        assert ["ip", "netns", "add", pod["netns"]] in argvs
        veth = ["ip", "link", "add", pod["host_interface"], "type", "veth", "peer", "name", pod["interface"],
                "netns", pod["netns"]]
        assert veth in argvs
        assert ["ip", "netns", "exec", pod["netns"], "ip", "addr", "add", pod["address"], "dev",
                pod["interface"]] in argvs
        if node["bridge"]:
            assert any(a[:4] == ["ip", "link", "set", pod["host_interface"]]
                       and a[a.index("master", 4) + 1] == node["bridge"]["name"] for a in argvs if "master" in a[4:])
        else:
            assert ["ip", "route", "add", pod["address"].split("/")[0], "dev", pod["host_interface"], "proto",
                    "152"] in argvs
    underlay = node["underlay_interface"] or "eth0"
    if node["vtep"]:
        vtep = node["vtep"]
        add = next(a for a in argvs if a[:3] == ["ip", "link", "add"] and a[4:6] == ["type", "vxlan"])
        assert add[3] == vtep["name"] and add[add.index("dev", 4) + 1] == underlay
        assert ["ip", "link", "set", vtep["name"], "address", normalize_mac(vtep["mac"]), "alias", "podnet:vtep",
                "up"] in argvs
        mac = normalize_mac(vtep["peers"][0]["mac"])
        assert ["bridge", "fdb", "add", mac, "dst", "192.168.0.16", "dev", vtep["name"]] in argvs
        assert any(a[:3] == ["ethtool", "-K", vtep["name"]] for a in argvs)
    if node["tunnel"]:
        assert ["ip", "tunnel", "add", node["tunnel"]["name"], "mode", "ipip"] in argvs
    if node["bridge"]:
        assert ["ip", "link", "add", node["bridge"]["name"], "type", "bridge"] in argvs
    if node["backend"] == "flannel-host-gw":
        # the planner's route names no device when the inventory names none: the kernel picks it, as on a run
        assert ["ip", "route", "add", "10.244.1.0/24", "via", "192.168.0.16", "proto", "152"] in argvs
    return lines


@SETTINGS
@given(node=nodes(PLANNER), kernel=st.sampled_from(["", "5.4.0-150-generic"]))
def test_render_of_names_the_planner_accepts(node: dict[str, Any], kernel: str) -> None:
    lines = check_render(node, kernel)
    # The planner's names need no quoting at all: the script reads as a person types it.
    # (files are written with `sh -c 'printf ...'`, whose script and content are quoted by nature)
    assert not any("'" in line for line in lines if not is_comment(line) and not line.startswith("sh -c "))


@SETTINGS
@given(node=nodes(HOSTILE_NAMES))
def test_render_of_hostile_names_is_still_one_word_each(node: dict[str, Any]) -> None:
    check_render(node)


@SETTINGS
@given(node=nodes(HOSTILE_DEVICES))
def test_render_refuses_device_names_and_macs_linux_or_a_vtep_cannot_take(node: dict[str, Any]) -> None:
    try:
        lines = node_commands(node)
    except RenderError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1, message  # names are shown quoted, never as raw text
        assert "interface name" in message or "MAC" in message, message
    else:  # every drawn node has pods, whose devices take the drawn names
        raise AssertionError("\n".join(lines))


# -------------------------------------------------------------------------------------- the real shell

def script_of(lines: list[str]) -> str:
    return "#!/bin/sh\nset -eu\n" + "\n".join(lines) + "\n"  # as playbooks/render.yml writes it


def sh_words(lines: list[str]) -> list[list[str]]:
    """The argv /bin/sh reads from each line, printed by sh's builtins only (PATH leads nowhere)."""
    probe = "".join(f"set -- {line}\nprintf '%s\\0' \"$#\" \"$@\"\n" for line in lines)
    out = subprocess.run(["/bin/sh", "-c", probe], env={"PATH": "/nonexistent"}, cwd=SCRATCH.name,
                         capture_output=True, check=True).stdout.decode().split("\0")[:-1]
    words: list[list[str]] = []
    while out:
        count, out = int(out[0]), out[1:]
        words.append(out[:count])
        out = out[count:]
    return words


@SHELL_SETTINGS
@given(node=nodes(HOSTILE_NAMES))
def test_sh_reads_every_rendered_line_as_podnets_argv(node: dict[str, Any]) -> None:
    lines = node_commands(node)
    syntax = subprocess.run(["/bin/sh", "-n"], input=script_of(lines).encode(), capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    assert sh_words([line for line in lines if not is_comment(line)]) == node_argvs(node)


@pytest.mark.parametrize("name", ["a b", "x;reboot", "$(id)", "`id`", "it's", 'say "hi"', "a\nip link del eth0",
                                  "ünï\u2028cödé", "-rf", "#not-a-comment", "!", "\\", "*", "~root", "a=b"])
def test_sh_echoes_a_hostile_name_back_exactly(name: str) -> None:
    objs: list[o.KObject] = [o.Link(name=name, kind="veth", peer=name, peer_netns=name, master=name, alias=name,
                                    netns=name),
                             o.Sysctl(name=name, value=name, netns=name), o.Route(dst="0.0.0.0/0", via=name, dev=name)]
    argvs = [argv for obj in objs for argv in obj.add_argvs()] + [feature_argv(name, TX_CHECKSUM, True)]
    lines = [shell_line(argv) for argv in argvs]
    assert sh_words(lines) == argvs
    # One line per command unless a value holds a line break; the comment of the same name never spans two.
    assert len(comment_line(f"{display_word(name)} {name}").splitlines()) == 1
    syntax = subprocess.run(["/bin/sh", "-n"], input=script_of([comment_line(name), *lines]).encode(),
                            capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
