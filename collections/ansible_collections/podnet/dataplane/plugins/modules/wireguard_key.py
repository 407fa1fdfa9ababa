#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: wireguard_key
short_description: Keep a node's WireGuard private key for one device, and return its public key
version_added: "0.1.0"
description:
  - Makes the private key of a WireGuard device on the node, as C(wg genkey) would, and keeps it in
    C(<key_dir>/<device>.key) (mode 0600, in a folder made with mode 0700), the form
    C(wg set <device> private-key <file>) reads. The private key never leaves the node - the module returns
    only its public key (what C(wg pubkey) prints), for the peers' configuration.
  - Beside it, podnet's record C(<device>.json) (mode 0600) holds the public key and the key's I(epoch). A key file
    is podnet's only when that record exists, carries podnet's marker and names the public key derived from
    the key file; anything else there (a key someone made with C(wg genkey), one a killed run did not record,
    a symbolic link, a key file another mode than 0600) is refused, naming the file, and left as it is.
  - A different I(epoch) than the record's rotates the key (a new one replaces it); the same epoch keeps it.
  - The public key is derived with the Python standard library (no C(cryptography) or C(wg) needed on the node).
  - Check mode and diff are exact; in check mode a key that would be made or rotated has no public key yet.
author:
  - podnet maintainers (@podnet)
requirements:
  - Python's standard library on the managed node
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows the record's public key and epoch, never the private key.
  platform:
    platforms: posix
options:
  device:
    description: The WireGuard device the key is for (a Linux interface name); it names the two files.
    type: str
    required: true
  key_dir:
    description: The folder of the key files. A missing one is made with mode 0700; it must not be a symbolic link.
    type: path
    default: /etc/podnet/wireguard
  epoch:
    description:
      - The key's generation. A key recorded with another epoch is replaced by a new one (key rotation), so
        raising it rotates the key.
    type: int
    default: 0
  state:
    description:
      - C(present) makes the key when there is none and rotates it when its epoch differs.
      - C(absent) removes podnet's key file and record, and then I(key_dir) when that leaves it empty. A key file
        or record that is not podnet's is refused, not removed.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: The node's key for wg0
  podnet.dataplane.wireguard_key:
    device: wg0
  register: wg0_key

- name: Rotate it (any epoch other than the recorded one makes a new key)
  podnet.dataplane.wireguard_key:
    device: wg0
    epoch: 1

- name: Peers get the public key, never the private one
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} is {{ wg0_key.public_key }}"

- name: Remove podnet's key of wg0
  podnet.dataplane.wireguard_key:
    device: wg0
    state: absent
"""

RETURN = r"""
public_key:
  description:
    - The device's public key after the run, as C(wg pubkey) prints it.
    - C(null) in check mode when the key would be made or rotated (it does not exist yet), and with I(state=absent).
  returned: always
  type: str
  sample: hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=
path:
  description: The private key's file (its content is never returned).
  returned: always
  type: str
  sample: /etc/podnet/wireguard/wg0.key
epoch:
  description: The key's epoch after the run (C(null) with I(state=absent)).
  returned: always
  type: int
  sample: 0
action:
  description:
    - C(kept) (the key was there with this epoch), C(created), C(rotated) (replaced by a new key), C(removed)
      (I(state=absent), podnet's key was there) or C(none) (I(state=absent), there was none).
    - In check mode, what the run would do.
  returned: always
  type: str
  sample: created
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.kernel.wireguard_keys import (
    DEFAULT_FOLDER,
    ForeignKeyError,
    KeyRecord,
    ensure_key,
    key_paths,
    recorded,
    remove_key,
)

NEW_KEY = "(a new key, made when the task runs without check mode)"


def describe(public: str | None, epoch: int | None) -> str:
    if public is None and epoch is None:
        return ""
    return f"public_key: {public}\nepoch: {epoch}\n"


def diff(record_path: str, before: KeyRecord | None, after: str) -> dict[str, str]:
    return {"before": describe(before.public_key, before.epoch) if before else "", "after": after,
            "before_header": record_path, "after_header": record_path}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "device": {"type": "str", "required": True},
            "key_dir": {"type": "path", "default": DEFAULT_FOLDER},
            "epoch": {"type": "int", "default": 0},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    p = module.params
    folder, device = p["key_dir"], p["device"]
    try:
        key_path, record_path = key_paths(folder, device)
        before = recorded(folder, device)
        if p["state"] == "absent":
            changed = remove_key(folder, device, check=module.check_mode)
            module.exit_json(changed=changed, public_key=None, path=key_path, epoch=None,
                             action="removed" if changed else "none", diff=diff(record_path, before, ""))
        result = ensure_key(folder, device, p["epoch"], check=module.check_mode)
    except (ForeignKeyError, ValueError, OSError) as exc:
        module.fail_json(msg=f"podnet.wireguard_key: {exc}")
    after = describe(result.public_key if result.public_key else NEW_KEY, result.epoch)
    module.exit_json(changed=result.changed, public_key=result.public_key, path=result.path, epoch=result.epoch,
                     action=result.action, diff=diff(record_path, before, after))


if __name__ == "__main__":
    main()
