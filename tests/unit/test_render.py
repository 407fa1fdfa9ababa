"""render.yml on the seed inventory: the five flannel-vxlan lines of DESIGN §2, verbatim and in order
(routes with podnet's marker `proto 152` added, as a run installs them), written without contacting any host."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.shell import shell_line

REPO = Path(__file__).resolve().parents[2]
SEED_LINES_04 = [
    "ip link add flannel.1 type vxlan id 1 local 192.168.0.4 dev eth0 dstport 8472 nolearning",
    "ip addr add 10.244.0.0/32 dev flannel.1",
    "ip neigh add 10.244.2.0 dev flannel.1 lladdr 22:3d:4d:c5:65:ff",
    "bridge fdb add 22:3d:4d:c5:65:ff dst 192.168.0.16 dev flannel.1",
    "ip route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto 152",
]
SEED_LINES_16 = [
    "ip link add flannel.1 type vxlan id 1 local 192.168.0.16 dev eth0 dstport 8472 nolearning",
    "ip addr add 10.244.2.0/32 dev flannel.1",
    "ip neigh add 10.244.0.0 dev flannel.1 lladdr 56:ad:b6:5f:16:d7",
    "bridge fdb add 56:ad:b6:5f:16:d7 dst 192.168.0.4 dev flannel.1",
    "ip route add 10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink proto 152",
]


def run_render(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    playbook = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run([str(playbook), "-i", "inventories/seed", "playbooks/render.yml",
                           "-e", f"podnet_render_dir={out}", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def in_order(lines: list[str], expected: list[str]) -> bool:
    positions = [lines.index(e) if e in lines else -1 for e in expected]
    return -1 not in positions and positions == sorted(positions)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("render")
    result = run_render(out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_seed_flannel_vxlan_lines_for_192_168_0_4(rendered):
    lines = (rendered / "192.168.0.4.sh").read_text().splitlines()
    assert in_order(lines, SEED_LINES_04), "\n".join(lines)


def test_seed_flannel_vxlan_lines_for_192_168_0_16(rendered):
    lines = (rendered / "192.168.0.16.sh").read_text().splitlines()
    assert in_order(lines, SEED_LINES_16), "\n".join(lines)


def test_seed_pod_wiring_and_masquerade(rendered):
    text = (rendered / "192.168.0.4.sh").read_text()
    assert "ip addr add 10.244.0.1/24 dev cni0" in text
    assert "ip link add flannel_vxlan_h type veth peer name flannel_vxlan_c netns flannel_vxlan" in text
    assert "ip netns exec flannel_vxlan ip addr add 10.244.0.3/24 dev flannel_vxlan_c" in text
    assert "ip netns exec flannel_vxlan ip route add default via 10.244.0.1 proto 152" in text
    assert "iptables -t nat -A POSTROUTING ! -s 10.244.0.0/16 -d 10.244.0.0/24 -m comment" in text


def test_rendered_files_are_scripts_that_stop_at_the_first_failure(rendered):
    for script in rendered.glob("*.sh"):
        lines = script.read_text().splitlines()
        assert lines[:2] == ["#!/bin/sh", "set -eu"], script
        assert script.stat().st_mode & 0o777 == 0o755
        syntax = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr


def script_commands(text: str) -> list[str]:
    """A script's commands and comments; a command whose quoted word holds newlines (a file's content) is
    one command over several lines."""
    items: list[str] = []
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.startswith("#"):
            items.append(pending)
            pending = ""
            continue
        try:
            shlex.split(pending)
        except ValueError:  # an open quote: the command goes on
            continue
        items.append(pending)
        pending = ""
    assert not pending, pending
    return items


def test_every_rendered_command_is_the_one_shell_line_of_its_words(rendered):
    # Commands are joined by shell.shell_line only: splitting a line and joining it again changes nothing.
    for script in rendered.glob("*.sh"):
        for line in script_commands(script.read_text())[2:]:
            assert line.startswith("# ") or shell_line(shlex.split(line)) == line, (script.name, line)


def test_files_are_written_as_a_run_writes_them(rendered):
    commands = script_commands((rendered / "192.168.0.4.sh").read_text())
    writes = {shlex.split(c)[4]: shlex.split(c)[5] for c in commands if c.startswith("sh -c ")}
    assert writes["/run/flannel/subnet.env"] == ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.0.1/24\n"
                                                  "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert writes["/etc/iproute2/rt_protos.d/podnet.conf"].splitlines() == ["# podnet:rt_protos", "152\tpodnet"]


def test_seed_vxlan_offload_rendered_for_a_modern_kernel_by_default(rendered):
    lines = (rendered / "192.168.0.4.sh").read_text().splitlines()
    assert in_order(lines, [SEED_LINES_04[0], "ethtool -K flannel.1 tx-checksum-ip-generic on"]), "\n".join(lines)


def test_render_kernel_decides_the_vxlan_offload_and_is_checked(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old").chmod(0o711)  # an existing output directory keeps its mode
    old = run_render(tmp_path / "old", "-e", "podnet_render_kernel=5.4.0-150-generic")
    assert old.returncode == 0, old.stdout + old.stderr
    assert (tmp_path / "old").stat().st_mode & 0o7777 == 0o711
    lines = (tmp_path / "old" / "192.168.0.4.sh").read_text().splitlines()
    assert "ethtool -K flannel.1 tx-checksum-ip-generic off" in lines
    assert ("# flannel.1 tx-checksum-ip-generic: auto: kernel 5.4.0-150-generic is older than 5.7 "
            "(VXLAN + SNAT checksum bug): off") in lines
    bad = run_render(tmp_path / "bad", "-e", "podnet_render_kernel='6.1; reboot'")
    assert bad.returncode != 0 and "is not a kernel release" in bad.stdout, bad.stdout
    assert not list((tmp_path / "bad").glob("*.sh"))


def test_host_gw_lines(tmp_path):
    result = run_render(tmp_path, "-e", "podnet_backend=flannel-host-gw")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (tmp_path / "192.168.0.4.sh").read_text().splitlines()
    # no underlay device in the inventory: the kernel picks the one that reaches the peer, as on a run
    assert "ip route add 10.244.2.0/24 via 192.168.0.16 proto 152" in lines
    assert not any("flannel.1" in line for line in lines)


def test_udp_lines_load_fou_before_the_device_and_add_the_port_after_it(tmp_path):
    """render.yml needs no node, so flannel-udp renders on any machine (the preflight is a run's)."""
    result = run_render(tmp_path, "-e", "podnet_backend=flannel-udp")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (tmp_path / "192.168.0.4.sh").read_text().splitlines()
    assert in_order(lines, [
        "modprobe fou",
        # no podnet_underlay_interface in the inventory: the kernel picks the device towards each peer, on a
        # run as in the script
        "ip link add flannel0 type ipip remote any local 192.168.0.4 encap fou encap-sport 8285 encap-dport 8285 "
        "encap-csum",
        "ip link set flannel0 mtu 1472 alias podnet:tunnel up",
        "ip fou add port 8285 ipproto 4",
        "ip addr add 10.244.0.0/32 dev flannel0",
        "ip route add 10.244.2.0/24 via 192.168.0.16 dev flannel0 onlink proto 152",
    ]), lines
    assert "FLANNEL_MTU=1472" in (tmp_path / "192.168.0.4.sh").read_text()
    assert not any("flannel.1" in line or "tunl0" in line for line in lines)


# RFC 7748's two public keys: any valid keys do for a render
WG_KEYS = {"192.168.0.4": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
           "192.168.0.16": "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08="}


def test_wireguard_lines_name_the_key_file_and_the_peers_public_keys(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(WG_KEYS))
    result = run_render(tmp_path / "out", "-e", "podnet_backend=calico-wireguard",
                        "-e", f"podnet_wireguard_keys_file={keys}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (tmp_path / "out" / "192.168.0.4.sh").read_text().splitlines()
    assert in_order(lines, [
        "ip link add wireguard.cali type wireguard",
        "ip link set wireguard.cali mtu 1440 alias podnet:wireguard up",
        "wg set wireguard.cali listen-port 51820 private-key /etc/podnet/wireguard/wireguard.cali.key",
        "ip addr add 10.244.0.0/32 dev wireguard.cali",
        f"wg set wireguard.cali peer {WG_KEYS['192.168.0.16']} endpoint 192.168.0.16:51820 allowed-ips 10.244.2.0/24",
        "ip route add 10.244.2.0/24 dev wireguard.cali proto 152",
    ]), lines
    assert not any(WG_KEYS["192.168.0.4"] in line for line in lines)  # a node is not its own peer


def test_wireguard_needs_the_nodes_public_keys_to_render(tmp_path):
    result = run_render(tmp_path / "out", "-e", "podnet_backend=flannel-wireguard",
                        "-e", f"podnet_wireguard_keys_file={tmp_path / 'none.json'}")
    assert result.returncode != 0
    assert "no WireGuard public key for 192.168.0.16" in result.stdout, result.stdout
    assert not list((tmp_path / "out").glob("*.sh"))


def test_render_touches_no_host_and_rejects_bad_input(tmp_path):
    # The seed hosts are documentation addresses no one can reach; a bad VNI must fail in planning,
    # and nothing may be written.
    result = run_render(tmp_path / "out", "-e", "podnet_vxlan_vni=0")
    assert result.returncode != 0
    assert "host 192.168.0.4: podnet_vxlan_vni" in result.stdout
    assert not (tmp_path / "out").exists()


# The seed sets proxy ARP last; podnet sets it with the veth, before the pod's end is configured (as calico's CNI
# plugin does), so the pod's first ARP for 169.254.1.1 is answered - and only once in the script.
CALICO_POD_LINES = [
    "ip link add calico-h type veth peer name calico-c netns calico",
    "sysctl -w net.ipv4.conf.calico-h.proxy_arp=1",
    "sysctl -w net.ipv4.neigh.calico-h.proxy_delay=0",
    "ip netns exec calico ip addr add 10.244.0.3/24 dev calico-c",
    "ip netns exec calico ip route add 169.254.1.1 dev calico-c proto 152",
    "ip netns exec calico ip route add default via 169.254.1.1 proto 152",
    "ip route add 10.244.0.3 dev calico-h proto 152",
]
CALICO_BACKEND_LINES = {
    "calico-bgp": ["ip route add 10.244.2.0/24 via 192.168.0.16 proto 152"],
    # seed 003 types `ip tunnel add tunl0 mode ipip`, which a kernel with ipip answers "File exists": the
    # module's own tunl0 is configured
    "calico-ipip": ["modprobe ipip", "ip link set tunl0 mtu 1480 alias podnet:tunnel up",
                    "ip route add 10.244.2.0/24 via 192.168.0.16 dev tunl0 onlink proto 152"],
    "calico-vxlan": ["ip link add vxlan.calico type vxlan id 4096 local 192.168.0.4 dev eth0 dstport 4789 nolearning",
                     "ip neigh add 10.244.2.0 dev vxlan.calico lladdr 22:3d:4d:c5:65:ff",
                     "bridge fdb add 22:3d:4d:c5:65:ff dst 192.168.0.16 dev vxlan.calico",
                     "ip route add 10.244.2.0/24 via 10.244.2.0 dev vxlan.calico onlink proto 152"],
}


@pytest.mark.parametrize("backend", sorted(CALICO_BACKEND_LINES))
def test_seed_calico_lines_for_192_168_0_4(tmp_path, backend):
    result = run_render(tmp_path, "-e", f"podnet_backend={backend}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (tmp_path / "192.168.0.4.sh").read_text().splitlines()
    assert in_order(lines, CALICO_POD_LINES), "\n".join(lines)
    assert len([line for line in lines if line.startswith("sysctl -w ")]) == len(set(lines) & {
        line for line in lines if line.startswith("sysctl -w ")}), "\n".join(lines)
    assert in_order(lines, CALICO_BACKEND_LINES[backend]), "\n".join(lines)
    assert not any("cni0" in line or "flannel" in line for line in lines)
    if backend == "calico-ipip":
        assert "ip link set tunl0 mtu 1480 alias podnet:tunnel up" in lines


CANAL_LINES = {
    "192.168.0.4": [
        "ip netns exec canal ip addr add 10.244.0.3/24 dev canal-c",
        "ip netns exec canal ip route add default via 169.254.1.1 proto 152",
        "ip route add 10.244.0.3 dev canal-h proto 152",
        "sysctl -w net.ipv4.conf.canal-h.proxy_arp=1",
        "ip neigh add 10.244.1.0 dev flannel.1 lladdr 22:3d:4d:c5:65:ff",  # seed typo 10.5.47.0 corrected
        "bridge fdb add 22:3d:4d:c5:65:ff dst 192.168.0.16 dev flannel.1",
        "ip route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink proto 152",
    ],
    "192.168.0.16": [
        "ip netns exec canal ip addr add 10.244.1.3/24 dev canal-c",
        "ip netns exec canal ip route add default via 169.254.1.1 proto 152",  # seed typo (netns calico) corrected
        "ip route add 10.244.1.3 dev canal-h proto 152",
        "sysctl -w net.ipv4.conf.canal-h.proxy_arp=1",
        "ip neigh add 10.244.0.0 dev flannel.1 lladdr 56:ad:b6:5f:16:d7",
        "bridge fdb add 56:ad:b6:5f:16:d7 dst 192.168.0.4 dev flannel.1",
        "ip route add 10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink proto 152",  # seed typo via 10.244.1.0 corrected
    ],
}


def test_seed_canal_lines_for_both_hosts(tmp_path):
    result = run_render(tmp_path, "-e", "podnet_backend=canal")
    assert result.returncode == 0, result.stdout + result.stderr
    for host, expected in CANAL_LINES.items():
        lines = (tmp_path / f"{host}.sh").read_text().splitlines()
        assert all(line in lines for line in expected), (host, "\n".join(lines))
        assert not any("cni0" in line for line in lines)


def test_diagram_draws_nodes_pods_and_tunnels(tmp_path):
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("graphviz (dot) is not installed; make setup installs it")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    playbook = Path(sys.executable).parent / "ansible-playbook"
    result = subprocess.run([str(playbook), "-i", "inventories/seed", "playbooks/diagram.yml",
                             "-e", f"podnet_diagram_dir={tmp_path}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    dot = (tmp_path / "podnet.dot").read_text()
    assert '"192.168.0.4" -- "192.168.0.16" [label="VXLAN 1 udp/8472"' in dot
    assert "10.244.0.3/24" in dot and "flannel.1 56:ad:b6:5f:16:d7" in dot
    svg = (tmp_path / "podnet.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "192.168.0.16" in svg


def test_bgp_on_bird_renders_its_configuration_and_its_start(tmp_path):
    result = run_render(tmp_path, "-e", "podnet_backend=calico-bgp", "-e", "podnet_calico_bgp=bird")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = script_commands((tmp_path / "192.168.0.4.sh").read_text())
    conf = "/etc/podnet/bird/bird.conf"
    assert "mkdir -p -m 0750 /etc/podnet/bird" in lines
    (write,) = [shlex.split(line) for line in lines if line.startswith("sh -c") and conf in line]
    assert write[:3] == ["sh", "-c", 'printf %s "$2" > "$1" && chmod 0640 "$1"'] and write[4] == conf
    assert "# podnet:bird" in write[5] and "protocol bgp" in write[5]  # the role's template, rendered
    assert lines[-1] == "bird -c /etc/podnet/bird/bird.conf -s /etc/podnet/bird/bird.ctl -P /etc/podnet/bird/bird.pid"
    assert not any("ip route add 10.244.2.0/24" in line for line in lines)  # BIRD learns those

