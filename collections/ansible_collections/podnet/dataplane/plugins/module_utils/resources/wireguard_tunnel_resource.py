# Copyright: podnet contributors
# Apache License 2.0
"""The wireguard_tunnel resource: what podnet.dataplane.wireguard_tunnel does, as run(module), so that
podnet.dataplane.node_apply can run it in the same process as the node's other resources."""
from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.builders import (
    WIREGUARD_OVERHEAD,
    WIREGUARD_PORT,
    wireguard_objects,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.netlink import (
    Change,
    KernelState,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.objects import (
    Address,
    WireguardDevice,
    WireguardPeer,
    is_owned_alias,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.wireguard_keys import (
    decode_key,
    key_file_public_key,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.node.persist import (
    PERSIST_OPTION,
    persist_result,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.plan.validate import (
    check_interface_name,
    check_ipv4,
)
from ansible_collections.podnet.dataplane.plugins.module_utils.resources.resource import (
    STATES,
    TAKE_OVER_OPTION,
    NetlinkResource,
    plan_owned,
)

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "mtu": {"type": "int"},
    "local": {"type": "str"},
    "listen_port": {"type": "int", "default": WIREGUARD_PORT},
    "private_key_file": {"type": "path"},
    "address": {"type": "str"},
    "peers": {"type": "list", "elements": "dict", "default": [], "options": {
        "public_key": {"type": "str", "required": True},
        "endpoint": {"type": "str"},
        "allowed_ips": {"type": "list", "elements": "str", "default": []},
    }},
    "persist_dir": PERSIST_OPTION,
    "take_over": TAKE_OVER_OPTION,
    "state": {"type": "str", "choices": STATES, "default": "merged"},
}

_ENDPOINT = re.compile(r"([0-9.]+):([0-9]{1,5})")
# a file path that is one word on a rendered `wg set` line and in a record: no control characters
_PATH = re.compile(r"/[^\x00-\x1f\x7f]*")


def check_key(field: str, value: Any) -> list[str]:
    try:
        decode_key(value)
    except ValueError:
        return [f"{field}: {str(value)[:60]!r} is not a WireGuard public key (44 characters of base64, as "
                f"`wg pubkey` prints it)"]
    return []


def check_endpoint(field: str, value: Any) -> list[str]:
    found = _ENDPOINT.fullmatch(str(value))
    if not found or check_ipv4(field, found[1]) or not 1 <= int(found[2]) <= 65535:
        return [f"{field}: {value!r} is not an IPv4 address and UDP port (address:port)"]
    return []


class WireguardTunnel(NetlinkResource):
    name = "wireguard_tunnel"
    kinds = frozenset({Address, WireguardDevice, WireguardPeer})

    def problems(self) -> list[str]:
        p = self.p
        found = check_interface_name("name", p["name"])
        if p["local"]:
            found += check_ipv4("local", p["local"])
        if p["mtu"] is not None and not 68 <= p["mtu"] <= 65535:
            found.append(f"mtu: {p['mtu']} is out of range 68..65535")
        if not 1 <= p["listen_port"] <= 65535:
            found.append(f"listen_port: {p['listen_port']} is out of range 1..65535")
        if p["private_key_file"] is not None and not _PATH.fullmatch(p["private_key_file"]):
            found.append(f"private_key_file: {p['private_key_file']!r} must be an absolute path without control "
                         "characters")
        if p["address"]:
            try:
                ipaddress.IPv4Interface(p["address"])
            except ValueError:
                found.append(f"address: {p['address']!r} is not an IPv4 address with a prefix length")
        seen: set[str] = set()
        for at, peer in enumerate(p["peers"]):
            where = f"peers[{at}]"
            found += check_key(f"{where}.public_key", peer["public_key"])
            if peer["public_key"] in seen:
                found.append(f"{where}.public_key: listed twice")
            seen.add(peer["public_key"])
            if peer["endpoint"]:
                found += check_endpoint(f"{where}.endpoint", peer["endpoint"])
            for network in peer["allowed_ips"]:
                try:
                    ipaddress.IPv4Network(network)
                except ValueError:
                    found.append(f"{where}.allowed_ips: {network!r} is not an IPv4 network (host bits unset)")
        self.tunnel = {"name": p["name"], "mtu": p["mtu"], "listen_port": p["listen_port"],
                       "private_key_file": p["private_key_file"], "address": p["address"], "public_key": None,
                       "peers": [dict(peer) for peer in p["peers"]]}
        return found

    def rendered(self) -> dict[str, Any]:
        return {"rendered": [c for o in wireguard_objects(self.tunnel) for c in o.add_commands()]}

    def gathered(self, have: KernelState) -> dict[str, Any]:
        """The options that give this device again ({}: no such device). The kernel does not say which file a
        private key came from: private_key_file is not among them (given back without it, the key is kept)."""
        name = self.p["name"]
        existing = have.objects.get(("link", None, name))
        if existing is None:
            return {}
        settings = have.objects.get(("wgdev", None, name))
        addresses = [a.cidr for a in have.of_type(Address) if a.dev == name]
        peers = sorted(({"public_key": o.public_key, "endpoint": o.endpoint, "allowed_ips": list(o.allowed_ips or ())}
                        for o in have.of_type(WireguardPeer) if o.dev == name), key=lambda peer: peer["public_key"])
        return {"name": name, "mtu": existing.mtu, "listen_port": settings.listen_port if settings else None,
                "address": addresses[0] if addresses else None, "peers": peers}

    def gathered_facts(self, have: KernelState) -> dict[str, Any]:
        existing = have.objects.get(("link", None, self.p["name"]))
        settings = have.objects.get(("wgdev", None, self.p["name"]))
        return {} if existing is None else {"kind": existing.kind, "up": existing.up,
                                            "owned": is_owned_alias(existing.alias),
                                            "public_key": settings.public_key if settings else None}

    def plan(self, have: KernelState) -> list[Change]:
        name = self.p["name"]
        existing = have.objects.get(("link", None, name))
        if existing is not None and existing.kind != "wireguard":
            self.fail(f"device {name} exists but is a {existing.kind} device")
        self.extra: dict[str, Any] = {}
        if self.state == "deleted":
            # only podnet's device goes (its settings and peers with it); anyone else's stays
            return [Change("delete", None, existing)] if existing is not None and is_owned_alias(existing.alias) else []
        key_file = self.tunnel["private_key_file"]
        if key_file and self.module.check_mode and not os.path.lexists(key_file):
            # a check-mode run before the key's first run: the key that run makes is not there to read
            self.extra["msg"] = f"{key_file} does not exist yet: the device is shown without its key"
        elif key_file:
            try:
                public = key_file_public_key(key_file)
            except (OSError, ValueError) as exc:
                self.fail(f"{key_file} holds no WireGuard private key podnet can read ({type(exc).__name__}): make it "
                          "with podnet.dataplane.wireguard_key first")
            if any(peer["public_key"] == public for peer in self.tunnel["peers"]):
                self.fail(f"a peer has this node's own public key {public}: each node needs its own key")
            self.tunnel["public_key"] = self.extra["public_key"] = public
        if not self.tunnel["mtu"]:
            self.tunnel["mtu"] = self.underlay_mtu(have) - WIREGUARD_OVERHEAD
        self.extra["mtu"] = self.tunnel["mtu"]
        purge = None if self.state == "merged" else (
            lambda o: isinstance(o, (Address, WireguardPeer)) and o.dev == name)
        return plan_owned(self.module, wireguard_objects(self.tunnel), have, purge)

    def record(self) -> None:
        persist_result(self.module, f"wireguard_tunnel-{self.p['name']}", wireguard_objects(self.tunnel))


def run(module: AnsibleModule) -> None:
    """The module's work: ends in module.exit_json or module.fail_json."""
    WireguardTunnel(module).run()
