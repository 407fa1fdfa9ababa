"""Real SSH for the namespace lab: one sshd per node namespace, a management namespace for the controller.

Builds on a lab that lab_up.yml already made (``labkit.Lab``) from ``inventories/lab-ssh``:

- ``/run/podnet-lab/<prefix>/ssh/`` holds everything: a client key (``id_ed25519``), ``authorized_keys``,
  per node a host key, an ``sshd_config`` and the sshd's pid file and log, and the generated
  ``home/.ssh/known_hosts`` (paramiko reads only ``~/.ssh/known_hosts``, so playbooks run with
  ``HOME=<ssh dir>/home``). The machine's own sshd, its config and ``/etc/ssh`` are never touched.
- Each node's sshd runs inside the node namespace (``ip netns exec <prefix>-<node> /usr/sbin/sshd -f
  <config>``), listens on the node IP only, allows root by key only, ``UsePAM no``; it is stopped by the
  pid in its own pid file.
- ``<prefix>-mgmt`` is a namespace with ``eth0`` (a veth to the underlay bridge ``br0``) carrying
  ``MGMT_ADDRESS``; ansible-playbook runs in there (``ip netns exec <prefix>-mgmt ansible-playbook``),
  so no route is ever added to the root namespace. lab_down.yml removes it with the other
  ``<prefix>-...`` namespaces.

Use::

    with Lab(LAB_SSH_INVENTORY) as lab, SSHLab(lab) as ssh:
        result = ssh.run("playbooks/site.yml", connection="paramiko")
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.integration.labkit import (
    ANSIBLE_PLAYBOOK,
    PLAYBOOK_TIMEOUT,
    REPO_ROOT,
    Lab,
    PlaybookResult,
    parse_recap,
    playbook_env,
)

LAB_SSH_INVENTORY = REPO_ROOT / "inventories" / "lab-ssh"
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
MGMT_ADDRESS = "172.30.0.250/24"
MGMT_PORT = "m250"  # underlay-side end of the management veth (a port of br0)
UNDERLAY_BRIDGE = "br0"
START_TIMEOUT = 20.0


def inventory_nodes(inventory: Path = LAB_SSH_INVENTORY) -> dict[str, str]:
    """host -> node IP from the inventory's hosts.yml."""
    data = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts = data["podnet_nodes"]["hosts"]
    return {name: str(hv["podnet_node_ip"]).split("/")[0] for name, hv in hosts.items()}


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return proc


def sshd_config(node_ip: str, node_dir: Path, authorized_keys: Path) -> str:
    return "\n".join([
        "# podnet lab sshd (one per node namespace); nothing here comes from /etc/ssh",
        f"ListenAddress {node_ip}",
        "Port 22",
        f"HostKey {node_dir / 'ssh_host_ed25519_key'}",
        f"PidFile {node_dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized_keys}",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "",
    ])


class SSHLab:
    """sshd in every node namespace plus the management namespace; a context manager that stops them."""

    def __init__(self, lab: Lab, nodes: Mapping[str, str] | None = None,
                 mgmt_address: str = MGMT_ADDRESS) -> None:
        self.lab = lab
        self.nodes = dict(nodes or inventory_nodes(lab.inventory))
        self.mgmt_address = mgmt_address
        self.dir = Path(f"/run/podnet-lab/{lab.prefix}/ssh")
        self.home = self.dir / "home"
        self.known_hosts = self.home / ".ssh" / "known_hosts"
        self.client_key = self.dir / "id_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"

    @property
    def mgmt_ns(self) -> str:
        return f"{self.lab.prefix}-mgmt"

    def node_dir(self, host: str) -> Path:
        return self.dir / host

    # --- setup ------------------------------------------------------------------------------------

    def make_keys(self) -> None:
        """Client key, authorized_keys, one host key per node and the matching known_hosts."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o755)  # sshd's StrictModes checks the path to authorized_keys
        (self.dir / "cp").mkdir(exist_ok=True, mode=0o700)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.client_key.exists():
            _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"podnet-lab-{self.lab.prefix}",
                  "-f", str(self.client_key)])
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        os.chmod(self.authorized_keys, 0o644)
        for host in self.nodes:
            node_dir = self.node_dir(host)
            node_dir.mkdir(exist_ok=True, mode=0o700)
            key = node_dir / "ssh_host_ed25519_key"
            if not key.exists():
                _run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"{host}@{self.lab.prefix}",
                      "-f", str(key)])
        self.write_known_hosts()

    def host_key(self, host: str) -> str:
        """The node's public host key as "<type> <base64>"."""
        return " ".join((self.node_dir(host) / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def write_known_hosts(self, overrides: Mapping[str, str] | None = None) -> None:
        """known_hosts with every node's key; `overrides` maps host -> a different "<type> <key>"."""
        overrides = overrides or {}
        lines = [f"{ip} {overrides.get(host, self.host_key(host))}\n" for host, ip in self.nodes.items()]
        self.known_hosts.write_text("".join(lines))
        os.chmod(self.known_hosts, 0o600)

    def make_mgmt(self) -> None:
        """<prefix>-mgmt with eth0 on the underlay bridge; all inside the lab's namespaces."""
        ns, under = self.mgmt_ns, self.lab.underlay_ns
        if ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
            _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if subprocess.run(["ip", "-n", ns, "link", "show", "eth0"], capture_output=True).returncode != 0:
            _run(["ip", "-n", under, "link", "add", MGMT_PORT, "type", "veth", "peer", "name", "eth0",
                  "netns", ns])
        _run(["ip", "-n", under, "link", "set", MGMT_PORT, "master", UNDERLAY_BRIDGE, "up"])
        _run(["ip", "-n", ns, "addr", "replace", self.mgmt_address, "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def start_sshd(self, host: str) -> int:
        node_dir = self.node_dir(host)
        config = node_dir / "sshd_config"
        config.write_text(sshd_config(self.nodes[host], node_dir, self.authorized_keys))
        pid = self.sshd_pid(host)
        if pid is not None:
            return pid
        # sshd wants its privilege separation directory; the Debian service creates it the same way.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        _run(["ip", "netns", "exec", self.lab.node_ns(host), SSHD, "-t", "-f", str(config)])
        # sshd daemonizes and writes the pid file once it listens.
        _run(["ip", "netns", "exec", self.lab.node_ns(host), SSHD, "-f", str(config),
              "-E", str(node_dir / "sshd.log")])
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            pid = self.sshd_pid(host)
            if pid is not None:
                return pid
            time.sleep(0.1)
        raise RuntimeError(f"sshd of {host} did not start; log:\n{self._log(host)}")

    def _log(self, host: str) -> str:
        try:
            return (self.node_dir(host) / "sshd.log").read_text()
        except OSError:
            return ""

    def sshd_pid(self, host: str) -> int | None:
        """Pid from the node's pid file, only if that process is the sshd started with our config."""
        node_dir = self.node_dir(host)
        try:
            pid = int((node_dir / "sshd.pid").read_text().split()[0])
            # sshd rewrites its title ("sshd: /usr/sbin/sshd -f <config> ... [listener]"): a substring test
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(node_dir / "sshd_config").encode() in cmdline else None

    def wait_reachable(self) -> None:
        """Every node's sshd answers from the management namespace (ssh-keyscan over the underlay)."""
        deadline = time.monotonic() + START_TIMEOUT
        pending = dict(self.nodes)
        while pending and time.monotonic() < deadline:
            for host, ip in list(pending.items()):
                proc = subprocess.run(["ip", "netns", "exec", self.mgmt_ns, "ssh-keyscan", "-T", "2",
                                       "-t", "ed25519", ip], capture_output=True, text=True, timeout=30)
                if self.host_key(host) in proc.stdout:
                    del pending[host]
            if pending:
                time.sleep(0.2)
        if pending:
            raise RuntimeError(f"sshd not reachable from {self.mgmt_ns}: {sorted(pending)}")

    def start(self) -> SSHLab:
        self.make_keys()
        self.make_mgmt()
        for host in self.nodes:
            self.start_sshd(host)
        self.wait_reachable()
        return self

    # --- teardown ---------------------------------------------------------------------------------

    def ssh_masters(self) -> list[int]:
        """OpenSSH connection masters that our playbook runs left behind (their ControlPath is ours)."""
        marker = str(self.dir / "cp").encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            # a master renames itself "ssh: <control path> [mux]"
            if cmdline.startswith((b"ssh", b"/usr/bin/ssh")) and marker in cmdline:
                pids.append(int(entry.name))
        return pids

    def stop_masters(self) -> list[int]:
        """End the OpenSSH connection masters of our runs (the next run then does a fresh handshake)."""
        return self._terminate(self.ssh_masters())

    def stop(self) -> list[int]:
        """Stop our OpenSSH masters and the nodes' sshds (by the pids in their pid files; nothing else)
        and return those pids."""
        stopped = self.stop_masters()
        return stopped + self._terminate([p for p in map(self.sshd_pid, self.nodes) if p is not None])

    @staticmethod
    def _terminate(pids: list[int]) -> list[int]:
        stopped = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        for pid in stopped:
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return stopped

    def __enter__(self) -> SSHLab:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- running Ansible from the management namespace -------------------------------------------

    def env(self, connection: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
        out = playbook_env(self.lab.prefix, {
            "HOME": str(self.home),  # paramiko's known_hosts; OpenSSH's control sockets stay in the lab too
            "PODNET_LAB_SSH_CONNECTION": connection,
            "ANSIBLE_HOST_KEY_CHECKING": "True",
        })
        out.update(env or {})
        return out

    def run(self, playbook: str | os.PathLike[str], connection: str = "paramiko",
            extra_vars: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
            limit: str | None = None, timeout: float = PLAYBOOK_TIMEOUT) -> PlaybookResult:
        """ansible-playbook inside the management namespace against inventories/lab-ssh."""
        argv = ["ip", "netns", "exec", self.mgmt_ns, str(ANSIBLE_PLAYBOOK), "-i", str(self.lab.inventory),
                str(REPO_ROOT / playbook)]
        merged = {**self.lab.extra_vars, **(extra_vars or {})}
        if merged:
            argv += ["-e", json.dumps(merged)]
        if limit:
            argv += ["--limit", limit]
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=self.env(connection, env), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)
        return PlaybookResult(argv=argv, rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                              seconds=time.monotonic() - start, recap=parse_recap(proc.stdout))


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.integration.sshlab start|stop [--prefix P]` for a lab made by lab_up.yml with
    inventories/lab-ssh (prefix: PODNET_LAB_PREFIX, default "podnet"); run from the repo root as root."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.integration.sshlab")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--prefix", default=os.environ.get("PODNET_LAB_PREFIX") or "podnet")
    args = parser.parse_args(argv)
    ssh = SSHLab(Lab(LAB_SSH_INVENTORY, prefix=args.prefix))
    if args.action == "start":
        ssh.start()
        print(f"sshd running in {', '.join(ssh.lab.node_ns(h) for h in ssh.nodes)}; run playbooks with\n"
              f"  HOME={ssh.home} ip netns exec {ssh.mgmt_ns} ansible-playbook -i {LAB_SSH_INVENTORY} ...")
    else:
        print(f"stopped pids {ssh.stop()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
