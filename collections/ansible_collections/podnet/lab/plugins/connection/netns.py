# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
name: netns
short_description: Run tasks inside a named Linux network namespace on the controller
version_added: "0.1.0"
description:
  - Runs every command of a task, the C(raw) module included, as
    C(ip netns exec <netns_name> /bin/sh -c <command>), so modules see the network of the named
    namespace (its links, addresses, routes, sysctls) while sharing the controller's filesystem.
  - This is how podnet reaches the nodes of its namespace lab, where each node is a network namespace
    created by M(podnet.lab.netns_lab).
  - File transfer is the C(local) connection's (plain copies on the shared filesystem);
    pipelining works as it does for C(local).
  - The controller user must be allowed to enter network namespaces (in practice, root).
author:
  - podnet maintainers (@podnet)
requirements:
  - the C(ip) command (iproute2) on the controller
options:
  netns_name:
    description:
      - Name of the network namespace to run in, as listed by C(ip netns list)
        (a file under C(/run/netns)).
    type: str
    required: true
    vars:
      - name: ansible_netns_name
  become_success_timeout:
    description:
      - Number of seconds to wait for become to succeed when enabled (as for the C(local) connection).
    type: int
    default: 10
    vars:
      - name: ansible_local_become_success_timeout
  become_strip_preamble:
    description:
      - Strip internal become output preceding command execution (as for the C(local) connection).
    type: bool
    default: true
    vars:
      - name: ansible_local_become_strip_preamble
extends_documentation_fragment:
  - connection_pipelining
notes:
  - The remote user is ignored, as for the C(local) connection.
  - Processes that must outlive a task (daemons) keep running inside the namespace; remove them before
    deleting the namespace.
"""

import os
import shlex
import shutil

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.connection.local import Connection as LocalConnection
from ansible.utils.display import Display

display = Display()

NETNS_RUN_DIR = "/run/netns"


class Connection(LocalConnection):
    """``local`` connection whose commands run under ``ip netns exec``."""

    transport = "podnet.lab.netns"
    has_pipelining = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ip_cmd: str | None = None

    def _netns(self) -> str:
        name = self.get_option("netns_name")
        # A slash or a dot-name would let the path below escape /run/netns.
        if not name or "/" in name or name in (".", ".."):
            raise AnsibleConnectionFailure(f"invalid network namespace name {name!r}")
        return name

    def _connect(self) -> LocalConnection:
        name = self._netns()
        if not os.path.exists(os.path.join(NETNS_RUN_DIR, name)):
            raise AnsibleConnectionFailure(
                f"network namespace {name!r} does not exist ({NETNS_RUN_DIR}/{name} is missing); "
                "build the lab first (playbooks/lab_up.yml)"
            )
        self._ip_cmd = shutil.which("ip")
        if self._ip_cmd is None:
            raise AnsibleConnectionFailure("the 'ip' command (iproute2) was not found on the controller")
        if not self._connected:
            display.vvv(f"ENTER NETWORK NAMESPACE {name}", host=self._play_context.remote_addr)
        return super()._connect()

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        # The local connection hands a string to /bin/sh; quoting every word keeps the task's
        # command intact as the single argument of the inner `sh -c`.
        self._connect()
        wrapped = shlex.join([self._ip_cmd, "netns", "exec", self._netns(), "/bin/sh", "-c", to_text(cmd)])
        return super().exec_command(wrapped, in_data=in_data, sudoable=sudoable)
