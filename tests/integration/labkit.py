"""Helpers for integration tests that run podnet against the network-namespace lab.

Everything here runs on the controller as root. Lab namespaces are always named ``<prefix>-...`` with a
prefix unique to the test, so parallel runs never collide, and ``Lab`` removes them whatever happens.

Typical use (the ``lab`` fixtures in conftest.py wrap this)::

    with Lab("inventories/lab") as lab:
        result = lab.run("playbooks/site.yml")
        assert result.rc == 0, result.output
        addrs = netns_json(lab.node_ns("node1"), "addr", "show", "dev", "eth0")
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pyroute2 import netns as pyroute2_netns

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
LAB_INVENTORY = REPO_ROOT / "inventories" / "lab"
SITE_PLAYBOOK = "playbooks/site.yml"
PROBE_PLAYBOOK = "playbooks/probe.yml"
LAB_UP = REPO_ROOT / "playbooks" / "lab_up.yml"
LAB_DOWN = REPO_ROOT / "playbooks" / "lab_down.yml"
PLAYBOOK_TIMEOUT = 900

RECAP_KEYS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
# "node1    : ok=2    changed=1    unreachable=0 ..." after the "PLAY RECAP" banner.
_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:[a-z]+=\d+\s*)+)$")
_RECAP_COUNT = re.compile(r"([a-z]+)=(\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LabError(RuntimeError):
    """The lab could not be built or removed cleanly."""


@dataclass
class PlaybookResult:
    """Outcome of one ansible-playbook run."""

    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def output(self) -> str:
        """Everything the run printed, for assertion messages."""
        return f"$ {' '.join(self.argv)}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"

    def changed(self, host: str | None = None) -> int:
        """Changed-task count of one host, or of all hosts together."""
        return self._count("changed", host)

    def failed(self, host: str | None = None) -> int:
        """Failed plus unreachable count of one host, or of all hosts together."""
        return self._count("failed", host) + self._count("unreachable", host)

    def _count(self, key: str, host: str | None) -> int:
        hosts = [host] if host is not None else list(self.recap)
        return sum(self.recap.get(h, {}).get(key, 0) for h in hosts)


def parse_recap(stdout: str) -> dict[str, dict[str, int]]:
    """Parse the PLAY RECAP block of the default callback: host -> {ok, changed, ...}."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for raw in stdout.splitlines():
        line = _ANSI.sub("", raw).strip()
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if not in_recap or not line:
            continue
        match = _RECAP_LINE.match(line)
        if match is None:
            in_recap = False  # the block ends at the first line that is not a host line
            continue
        counts = {k: 0 for k in RECAP_KEYS}
        counts.update({k: int(v) for k, v in _RECAP_COUNT.findall(match["counts"])})
        recap[match["host"]] = counts
    return recap


def playbook_env(prefix: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of an ansible run: the repo's config, plain output and this lab's prefix."""
    out = dict(os.environ)
    out.update(
        {
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "default",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PODNET_LAB_PREFIX": prefix,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        }
    )
    # Extra callbacks could change what is printed; the recap parser wants the plain one. (An empty
    # value is not "none": ansible-core 2.19 then fails on an empty plugin name.)
    out.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    out.update(env or {})
    return out


def run_playbook(
    playbook: str | os.PathLike[str],
    inventory: str | os.PathLike[str],
    prefix: str,
    extra_vars: Mapping[str, Any] | None = None,
    check: bool = False,
    diff: bool = False,
    limit: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = PLAYBOOK_TIMEOUT,
) -> PlaybookResult:
    """Run ansible-playbook from the repo root; relative paths are taken from the repo root."""
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(REPO_ROOT / inventory), str(REPO_ROOT / playbook)]
    if extra_vars:
        argv += ["-e", json.dumps(dict(extra_vars))]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if limit:
        argv += ["--limit", limit]
    start = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=playbook_env(prefix, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return PlaybookResult(
        argv=argv,
        rc=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        seconds=time.monotonic() - start,
        recap=parse_recap(proc.stdout),
    )


# --- looking into namespaces -----------------------------------------------------------------------


def netns_exec(
    ns: str, argv: Sequence[str], check: bool = False, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run argv inside network namespace `ns` (text output captured)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        input=input,
    )


def netns_json(ns: str, *args: str, tool: str = "ip") -> Any:
    """`ip -n ns -j ARGS` (or `bridge -n ns -j ARGS` with tool="bridge") parsed; [] when it prints nothing."""
    if tool not in ("ip", "bridge"):
        raise ValueError(f"tool must be 'ip' or 'bridge', not {tool!r}")
    out = _checked_output([tool, "-n", ns, "-j", *args])
    return json.loads(out) if out.strip() else []


def _checked_output(argv: Sequence[str], input: str | None = None) -> str:
    """argv's stdout; CalledProcessError (with its stderr in a note) when it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, input=input)
    if proc.returncode != 0:
        exc = subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        exc.add_note(f"stderr: {proc.stderr.strip()}")  # the exception's own text omits it
        raise exc
    return proc.stdout


def netns_json_batch(ns: str, *commands: str) -> list[Any]:
    """`ip -n ns -j -d -batch -` over these commands (each as `ip` takes it, like "route show table all"): one
    `ip` for all of them, their JSON answers in order. Where a process start is dear (the QEMU guest's
    emulation: a quarter of a second each) this is what reading a namespace's state costs."""
    text = _checked_output(["ip", "-n", ns, "-j", "-d", "-batch", "-"], input="".join(f"{c}\n" for c in commands))
    decoder, at, answers = json.JSONDecoder(), 0, []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            break
        value, at = decoder.raw_decode(text, at)
        answers.append(value)
    if len(answers) != len(commands):
        raise ValueError(f"ip -batch in {ns} answered {len(answers)} of {len(commands)} commands: {text[:500]}")
    return answers


# The kernel's SNAT + VXLAN checksum bug is fixed from 5.7 (stated here independently of podnet's rule):
# on such a kernel podnet's default keeps TX checksum offload on VXLAN devices on.
VXLAN_CHECKSUM_FIXED = tuple(int(n) for n in re.match(r"(\d+)\.(\d+)", os.uname().release).groups()) >= (5, 7)
TX_CHECKSUM = "tx-checksum-ip-generic"


def tx_checksum(ns: str, device: str) -> bool:
    """A device's tx-checksum-ip-generic feature in namespace `ns`, read over ethtool netlink (pyroute2),
    not through podnet's own ioctl reader."""
    code = ("import sys; from pyroute2.ethtool import Ethtool; "
            f"print(Ethtool().get_features(sys.argv[1]).features[{TX_CHECKSUM!r}].enable)")
    out = netns_exec(ns, [sys.executable, "-c", code, device], check=True).stdout.strip()
    assert out in ("True", "False"), out
    return out == "True"


def set_tx_checksum_argv(device: str, enabled: bool) -> list[str]:
    """argv that turns a device's tx-checksum-ip-generic on or off (run inside a namespace)."""
    code = ("import sys; from pyroute2.ethtool import Ethtool; e = Ethtool(); f = e.get_features(sys.argv[1]); "
            f"f.features[{TX_CHECKSUM!r}].enable = sys.argv[2] == 'on'; e.set_features(sys.argv[1], f)")
    return [sys.executable, "-c", code, device, "on" if enabled else "off"]


def list_netns(prefix: str) -> list[str]:
    """Names of the network namespaces of lab `prefix`, i.e. those named "<prefix>-..."."""
    return sorted(n for n in pyroute2_netns.listnetns() if n.startswith(f"{prefix}-"))


def _own_lineage() -> set[int]:
    """This process and its ancestors, which the cleanup must never kill."""
    lineage, pid = set(), os.getpid()
    while pid > 1 and pid not in lineage:
        lineage.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text(errors="replace").rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return lineage


def remove_netns(prefix: str) -> list[str]:
    """Last-resort cleanup: kill what runs in the "<prefix>-..." namespaces and delete them."""
    names = list_netns(prefix)
    for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL only what ignored SIGTERM
        spare = _own_lineage()
        pids = [p for n, ps in pyroute2_netns.ns_pids().items() if n in names for p in ps if p not in spare]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if pids:
            time.sleep(0.5)
    for name in names:
        try:
            pyroute2_netns.remove(name)
        except OSError:
            pass  # already gone; anything else shows up in list_netns() below
    return names


def lock_is_free(path: Path) -> bool:
    """Nobody holds a node's lock (its flock could be taken now), and its last holder ended cleanly: the
    record it writes is emptied on a clean release."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return path.read_text() == ""


def unique_prefix() -> str:
    """A fresh lab prefix: "pt" and five random lowercase letters or digits, unused right now."""
    alphabet = string.ascii_lowercase + string.digits
    while True:
        prefix = "pt" + "".join(secrets.choice(alphabet) for _ in range(5))
        if not list_netns(prefix):
            return prefix


# The lab inventory's node IPs, and a fourth node's for the tests that add one.
LAB_NODE_IPS = {"node1": "172.30.0.11", "node2": "172.30.0.12", "node3": "172.30.0.13", "node4": "172.30.0.14"}


def lab_inventory(folder: Path, hosts: Sequence[str]) -> Path:
    """A copy of the lab inventory (in `folder`, which must not exist) whose nodes are these hosts, two pods each."""
    shutil.copytree(LAB_INVENTORY, folder)
    nodes = {host: {"podnet_node_ip": LAB_NODE_IPS[host], "podnet_pods": [{"name": "pod1"}, {"name": "pod2"}]}
             for host in hosts}
    (folder / "hosts.yml").write_text(yaml.safe_dump({"podnet_nodes": {"hosts": nodes}}))
    return folder


# --- the lab ---------------------------------------------------------------------------------------


class Lab:
    """A namespace lab built from an inventory; a context manager that always tears it down.

    Node and pod namespace names follow the lab inventory's convention ("<prefix>-<host>",
    "<prefix>-<host>-<pod>"); pods with an explicit `netns` key are not covered by pod_ns().
    """

    def __init__(
        self,
        inventory: str | os.PathLike[str] = LAB_INVENTORY,
        prefix: str | None = None,
        extra_vars: Mapping[str, Any] | None = None,
    ) -> None:
        self.inventory = Path(REPO_ROOT / inventory)
        self.prefix = prefix or unique_prefix()
        self.extra_vars = dict(extra_vars or {})
        self.up_result: PlaybookResult | None = None
        self.down_result: PlaybookResult | None = None

    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-underlay"

    def node_ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def pod_ns(self, host: str, pod: str) -> str:
        return f"{self.prefix}-{host}-{pod}"

    def namespaces(self) -> list[str]:
        return list_netns(self.prefix)

    def run(self, playbook: str | os.PathLike[str], **kw: Any) -> PlaybookResult:
        """run_playbook against this lab's inventory and prefix; extra_vars merge over the lab's."""
        kw["extra_vars"] = {**self.extra_vars, **(kw.get("extra_vars") or {})}
        kw.setdefault("inventory", self.inventory)
        return run_playbook(playbook, prefix=self.prefix, **kw)

    def exec(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return netns_exec(self.node_ns(host), argv, **kw)

    def json(self, host: str, *args: str, tool: str = "ip") -> Any:
        return netns_json(self.node_ns(host), *args, tool=tool)

    def up(self) -> PlaybookResult:
        """Run lab_up.yml; raises LabError (after nothing else) when it fails."""
        self.up_result = self.run(LAB_UP)
        if self.up_result.rc != 0:
            raise LabError(f"lab_up.yml failed for prefix {self.prefix}\n{self.up_result.output}")
        return self.up_result

    def down(self) -> PlaybookResult:
        """Run lab_down.yml, then delete whatever it left; raises LabError if it had to."""
        try:
            self.down_result = self.run(LAB_DOWN)
        finally:
            leftovers = remove_netns(self.prefix)
        if self.down_result.rc != 0 or leftovers:
            raise LabError(
                f"lab_down.yml did not clean up prefix {self.prefix} (rc={self.down_result.rc}, "
                f"removed by the safety net: {leftovers})\n{self.down_result.output}"
            )
        return self.down_result

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            # __exit__ does not run when __enter__ raises: tear down here.
            self._down_quietly()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.down()
        else:
            self._down_quietly()  # keep the original exception in front

    def _down_quietly(self) -> None:
        try:
            self.down()
        except Exception:
            pass  # the safety net in down() has already run


@contextlib.contextmanager
def converged_lab(backend: str, **extra_vars: Any) -> Iterator[Lab]:
    """A lab converged by site.yml to `backend` (a failed converge fails the test), always torn down."""
    with Lab(extra_vars={"podnet_backend": backend, **extra_vars}) as lab:
        result = lab.run("playbooks/site.yml")
        assert result.rc == 0, result.output
        yield lab


def probed_runs(lab: Lab, report: Path, changes: Sequence[Mapping[str, Any]], inventory: Path | None = None,
                probe_vars: Mapping[str, Any] | None = None) -> tuple[list[PlaybookResult], list[dict[str, Any]]]:
    """site.yml runs while every pod probes every pod on the other nodes (playbooks/probe.yml, started before the
    first run and stopped after the last, with `probe_vars`): one run per change (its extra vars; the key
    `_inventory` runs it with another inventory, `_playbook` another playbook than site.yml). The runs' results, and the probe's rows (one per pod pair,
    `report` keeps them). Raises LabError when the probe cannot start or stop, or a pair reported nothing."""
    where = {"inventory": inventory} if inventory is not None else {}
    started = lab.run(PROBE_PLAYBOOK, **where, extra_vars={**(probe_vars or {}), "podnet_probe": "start"})
    if started.rc != 0:
        raise LabError(f"the probes did not start\n{started.output}")
    results = []
    try:
        for change in changes:
            extra = dict(change)
            run_where = {"inventory": extra.pop("_inventory")} if "_inventory" in extra else where
            results.append(lab.run(extra.pop("_playbook", SITE_PLAYBOOK), **run_where, extra_vars=extra))
    finally:
        stopped = lab.run(PROBE_PLAYBOOK, **where, extra_vars={**(probe_vars or {}), "podnet_probe": "stop",
                                                               "podnet_probe_report": str(report)})
    if stopped.rc != 0:
        raise LabError(f"the probes did not stop\n{stopped.output}")
    rows = json.loads(report.read_text())
    silent = [(r["source"], r["target"]) for r in rows if not r["sent"] or not r["target_reported"]]
    if not rows or silent:
        raise LabError(f"pairs without a complete probe report: {silent or 'no pairs at all'}")
    return results, rows
