"""The WireGuard objects and their generic netlink messages: what a run sends is what pyroute2 (the reference,
not used by the engine) reads in it; what a record keeps comes back equal; the private key is in the message and
nowhere else. The kernel's side is tested in the QEMU guest (tests/integration/test_wireguard_transport.py)."""
from __future__ import annotations

import base64
import struct

import pytest
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import wireguard_objects
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    KernelState,
    NetlinkError,
    _wg_messages,
    _wg_read,
    plan,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    WireguardDevice,
    WireguardPeer,
    from_dict,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.wireguard_keys import (
    encode_key,
    new_private_key,
)
from pyroute2.netlink.generic.wireguard import wgmsg

PEER_KEY = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08="


def decoded(flags: int, body: bytes) -> wgmsg:
    message = wgmsg(struct.pack("=IHHII", 16 + len(body), 0x20, flags, 1, 0) + body)
    message.decode()
    return message


def test_a_peer_is_sent_as_pyroute2_reads_it():
    peer = WireguardPeer(dev="flannel-wg", public_key=PEER_KEY, endpoint="172.30.0.12:51820",
                         allowed_ips=("10.244.2.0/24", "10.244.1.0/24"))
    [(flags, body)] = _wg_messages(Change("add", peer, None), 7)
    message = decoded(flags, body)
    assert message.get_attr("WGDEVICE_A_IFINDEX") == 7 and message.get_attr("WGDEVICE_A_PRIVATE_KEY") is None
    [sent] = message.get_attr("WGDEVICE_A_PEERS")
    assert sent.get_attr("WGPEER_A_PUBLIC_KEY") == PEER_KEY.encode()
    assert sent.get_attr("WGPEER_A_FLAGS") == 2  # replace the allowed IPs: the list is the whole list
    endpoint = sent.get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["addr"], endpoint["port"]) == ("172.30.0.12", 51820)
    assert [a["addr"] for a in sent.get_attr("WGPEER_A_ALLOWEDIPS")] == ["10.244.1.0/24", "10.244.2.0/24"]
    [(flags, body)] = _wg_messages(Change("delete", None, peer), 7)
    [removed] = decoded(flags, body).get_attr("WGDEVICE_A_PEERS")
    assert removed.get_attr("WGPEER_A_FLAGS") == 1 and removed.get_attr("WGPEER_A_ALLOWEDIPS") is None


def test_the_device_gets_its_key_from_the_file_and_only_the_message_holds_it(tmp_path):
    private = new_private_key()
    key_file = tmp_path / "flannel-wg.key"
    key_file.write_text(encode_key(private) + "\n")
    device = WireguardDevice(dev="flannel-wg", listen_port=51820, public_key="x", private_key_file=str(key_file))
    [(flags, body)] = _wg_messages(Change("add", device, None), 3)
    message = decoded(flags, body)
    assert message.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820
    assert base64.b64decode(message.get_attr("WGDEVICE_A_PRIVATE_KEY")) == private
    shown = " ".join(Change("add", device, None).commands + [device.describe()] + [str(device.as_dict())])
    assert str(key_file) in shown and encode_key(private) not in shown and private.hex() not in shown
    key_file.write_text("not a key\n")
    with pytest.raises(NetlinkError) as refused:
        _wg_messages(Change("update", device, None, ["public_key"]), 3)
    assert "not a key" not in str(refused.value) and str(key_file) in str(refused.value)


def test_records_come_back_equal_and_the_planner_compares_the_public_key_not_the_file():
    objects = wireguard_objects({"name": "wireguard.cali", "mtu": 1440, "listen_port": 51820, "public_key": PEER_KEY,
                                 "private_key_file": "/etc/podnet/wireguard/wireguard.cali.key",
                                 "address": "10.244.0.0/32",
                                 "peers": [{"public_key": PEER_KEY, "endpoint": "172.30.0.12:51820",
                                            "allowed_ips": ["10.244.1.0/24"]}]})
    assert [from_dict(o.as_dict()) for o in objects] == objects
    settings = next(o for o in objects if isinstance(o, WireguardDevice))
    # the kernel reports the port and the public key; it never says which file a key came from
    have = KernelState(objects={o.key(): o for o in objects if not isinstance(o, WireguardDevice)})
    have.objects[settings.key()] = WireguardDevice(dev="wireguard.cali", listen_port=51820, public_key=PEER_KEY)
    assert plan(objects, have) == []
    have.objects[settings.key()] = WireguardDevice(dev="wireguard.cali", listen_port=51820, public_key=None)
    [change] = plan(objects, have)
    assert change.op == "update" and change.fields == ["public_key"]
    assert change.commands == ["wg set wireguard.cali listen-port 51820 private-key "
                               "/etc/podnet/wireguard/wireguard.cali.key"]


def test_a_dump_split_over_messages_is_joined_by_public_key():
    """The kernel may spread one device over several messages, one peer's allowed IPs too."""

    class Dump:
        netns = None

        def __init__(self, messages):
            self.messages = messages

        def family(self, name, fresh=False):
            return 0x20

        @property
        def nl(self):
            return self

        def dump(self, family, request):
            for _flags, body in self.messages:
                yield body, 0, len(body)

    first = WireguardPeer(dev="wg", public_key=PEER_KEY, endpoint="172.30.0.12:51820", allowed_ips=("10.244.1.0/24",))
    rest = WireguardPeer(dev="wg", public_key=PEER_KEY, allowed_ips=("10.244.9.0/24",))
    messages = _wg_messages(Change("add", first, None), 5) + _wg_messages(Change("add", rest, None), 5)
    found = _wg_read(Dump(messages), "wg", 5)  # type: ignore[arg-type]
    peer = found[("wgpeer", None, "wg", PEER_KEY)]
    assert peer.allowed_ips == ("10.244.1.0/24", "10.244.9.0/24") and peer.endpoint == "172.30.0.12:51820"
