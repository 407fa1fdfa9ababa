#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: controller_file
short_description: Keep a file on the controller with exactly the given content and mode
version_added: "0.1.0"
description:
  - Writes I(content) to I(path) on the controller, the way podnet writes every file on a node - a new temporary
    file beside it, flushed to disk, renamed over the old one - so a killed run leaves the old file or the new one,
    never a torn one. A file that already holds exactly this content and mode is not touched.
  - A missing folder is made with I(folder_mode); an existing one keeps its mode.
  - It runs in the controller's Ansible process (an action plugin), and no module is sent anywhere, whatever the
    task's host or C(delegate_to). C(site.yml) keeps the pod subnet leases and the WireGuard public keys with it.
  - A symbolic link or anything but a plain file at I(path) is refused and left alone.
author:
  - podnet maintainers (@podnet)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
    details: Runs entirely on the controller.
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
    details: The controller.
options:
  path:
    description: Absolute path of the file on the controller.
    type: str
    required: true
  content:
    description: What the file holds.
    type: str
    required: true
  mode:
    description: The file's mode, in octal, as a quoted string such as C("0600").
    type: str
    required: true
  folder_mode:
    description: The mode of the file's folder when it has to be made, in octal.
    type: str
    default: "0700"
"""

EXAMPLES = r"""
- name: Remember newly allocated pod subnets
  podnet.dataplane.controller_file:
    path: "{{ podnet_lease_file }}"
    content: "{{ podnet_cluster.leases | to_nice_json }}\n"
    mode: "0600"
  run_once: true
"""

RETURN = r"""
path:
  description: The file written (or that would be, in check mode).
  returned: success
  type: str
  sample: /srv/cluster/inventory/podnet_leases.json
mode:
  description: The file's mode, in octal.
  returned: success
  type: str
  sample: "0600"
"""
