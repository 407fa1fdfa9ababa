"""podnet over real SSH: every lab node runs its own sshd inside its namespace on its node IP, and
ansible-playbook runs inside the lab's management namespace, reaching the nodes across the underlay
(inventories/lab-ssh, tests/integration/sshlab.py). Host key checking is on, with the known_hosts the
lab generates: a flannel-vxlan converge and verify pass over paramiko and over OpenSSH, a second
converge changes nothing, and a wrong known_hosts entry makes the run fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .labkit import Lab, list_netns
from .sshlab import LAB_SSH_INVENTORY, SSHLab

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")

for tool in ("/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"):
    if not Path(tool).exists():
        pytest.skip(f"{tool} is missing (Debian openssh-server/openssh-client)", allow_module_level=True)


@pytest.fixture(scope="module", params=["paramiko", "ssh"])
def ssh_lab(request):
    lab = Lab(LAB_SSH_INVENTORY)
    with lab:
        ssh = SSHLab(lab)
        with ssh:
            ssh.connection = request.param
            pids = [ssh.sshd_pid(h) for h in NODES]
            yield ssh
        assert all(not Path(f"/proc/{pid}").exists() for pid in pids), "an sshd survived stop()"
        assert ssh.ssh_masters() == []
    assert list_netns(lab.prefix) == []  # mgmt namespace included


def accepted_logins(ssh: SSHLab, host: str) -> int:
    return ssh._log(host).count("Accepted publickey for root")


def test_converge_and_verify_over_ssh(ssh_lab: SSHLab):
    ssh = ssh_lab
    first = ssh.run("playbooks/site.yml", connection=ssh.connection)
    assert first.rc == 0 and first.failed() == 0, first.output
    assert set(first.recap) >= set(NODES), first.output
    assert first.changed() > 0, first.output
    # the nodes really were reached through their own sshd, with the lab's client key
    assert all(accepted_logins(ssh, h) > 0 for h in NODES), {h: ssh._log(h)[-500:] for h in NODES}

    second = ssh.run("playbooks/site.yml", connection=ssh.connection)
    assert second.rc == 0 and second.changed() == 0, second.output

    verify = ssh.run("playbooks/verify.yml", connection=ssh.connection)
    assert verify.rc == 0 and verify.failed() == 0, verify.output
    assert "Connectivity matrix" in verify.stdout


PING_PLAYBOOK = """\
- name: Reach every node
  hosts: podnet_nodes
  gather_facts: false
  tasks:
    - name: Ping over the lab's SSH
      ansible.builtin.ping:
"""


def test_wrong_known_hosts_entry_fails(ssh_lab: SSHLab):
    ssh = ssh_lab
    ping = ssh.dir / "ping.yml"
    ping.write_text(PING_PLAYBOOK)
    ssh.stop_masters()  # an OpenSSH master kept from an earlier run would skip the host key check
    # node1's entry holds node2's host key: a man in the middle, as far as the client can tell
    ssh.write_known_hosts({"node1": ssh.host_key("node2")})
    try:
        # Without pipelining the first command sends nothing on ssh's stdin, so the client's refusal is read,
        # never a broken pipe from writing the module to a client that has already quit.
        bad = ssh.run(ping, connection=ssh.connection, env={"ANSIBLE_PIPELINING": "False"})
    finally:
        ssh.write_known_hosts()
    assert bad.rc != 0, bad.output
    assert bad.recap.get("node1", {}).get("unreachable", 0) >= 1, bad.output
    text = bad.stdout + bad.stderr
    expected = "host key mismatch" if ssh.connection == "paramiko" else "Host key verification failed"
    assert expected in text, bad.output
    # only node1 is refused; with the right known_hosts it is reachable again
    assert all(bad.recap[h]["unreachable"] == 0 and bad.recap[h]["ok"] == 1 for h in ("node2", "node3")), bad.output
    good = ssh.run(ping, connection=ssh.connection)
    assert good.rc == 0 and good.failed() == 0, good.output
