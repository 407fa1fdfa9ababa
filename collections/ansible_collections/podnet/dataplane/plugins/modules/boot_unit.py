#!/usr/bin/python
# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: boot_unit
short_description: Install the podnet-apply unit that restores a node's recorded state at boot, in one module run
version_added: "0.4.0"
description:
  - C(state=present) installs or updates the boot restore on the node, from the code of this module run
    itself - no file is copied from the controller. That is the podnet engine the unit runs (C(boot_apply)
    and exactly the module_utils it imports) under C(<lib>/ansible_collections/podnet/dataplane/plugins/module_utils/),
    the unit C(podnet-apply.service) in I(unit_dir), and its link in
    C(<unit_dir>/multi-user.target.wants/) (what C(systemctl enable) makes).
  - The unit runs C(I(python) -m ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_apply
    I(persist_dir)) with C(PYTHONPATH=)I(lib) once at boot (C(Type=oneshot), after C(network-online.target)) -
    it re-applies what podnet's modules recorded in I(persist_dir), with the node's own Python and no
    Ansible run.
  - Every file is written atomically and only when its content or mode differs (C(0644), new folders
    C(0755)); a re-run that changes nothing touches nothing. C(systemctl daemon-reload) runs when the unit
    or its link changed, and only where systemd is PID 1 and C(systemctl) exists; elsewhere the result's
    C(notes) say that it was not run.
  - C(state=absent) removes the link, the unit (then C(systemctl daemon-reload)), the engine files this
    module installs (and the module_utils files the C(podnet.dataplane.boot) role copied before this module
    existed, when their first line is podnet's), their compiled C(__pycache__) files, and then the package
    folders under I(lib) and I(lib) itself when that left them empty. Any other file, and its folders, stays.
  - "The paths are written into the unit quoted for systemd: C(%) doubled, C($) doubled in the argument
    (I(persist_dir)), and a value with a space, quote, backslash or C(;) in double quotes with C(\\) and
    C(\") escaped. A path with a control character (a line break) is refused, and so is a C($) in I(python)."
author:
  - podnet maintainers (@podnet)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - The unit's text and its link in full; the engine files as one line each (C(sha256) and mode) -
        their text is this collection's module_utils.
options:
  state:
    description: Install (or update) the boot restore, or remove it.
    type: str
    choices: [present, absent]
    default: present
  lib:
    description:
      - Folder on the node that holds the engine's copy (the C(podnet.dataplane.boot) role's C(podnet_boot_lib));
        the unit's C(PYTHONPATH).
    type: path
    default: /usr/local/lib/podnet
  python:
    description:
      - The node's Python 3 that runs the engine at boot (absolute path); the engine needs only its
        standard library. Not used with C(state=absent).
    type: path
    default: /usr/bin/python3
  persist_dir:
    description:
      - Where podnet's modules record what they applied (their I(persist_dir)); the unit restores from it.
        Required with C(state=present).
    type: path
  unit_dir:
    description: Folder of the node's systemd unit files.
    type: path
    default: /etc/systemd/system
notes:
  - The engine is taken from the module's own payload, so the node always gets the engine of the collection
    that runs the play; it needs no C(copy) per file (a module run each) and no template.
seealso:
  - module: podnet.dataplane.node_apply
"""

EXAMPLES = r"""
- name: Restore the recorded state at boot (what the podnet.dataplane.boot role does)
  podnet.dataplane.boot_unit:
    persist_dir: /var/lib/podnet/state

- name: A node whose boot Python is elsewhere
  podnet.dataplane.boot_unit:
    persist_dir: /var/lib/podnet/state
    lib: /opt/podnet/lib
    python: /usr/local/bin/python3.11

- name: Remove the unit and the engine's copy (the recorded state stays)
  podnet.dataplane.boot_unit:
    state: absent
"""

RETURN = r"""
files:
  description: The files written (in check mode, that would be written), in order - engine files, then the unit.
  returned: always
  type: list
  elements: str
  sample: [/etc/systemd/system/podnet-apply.service]
links:
  description: The links made (would be made) - the unit's link in C(multi-user.target.wants).
  returned: always
  type: list
  elements: str
removed:
  description: The files, links and folders removed (would be removed), in order.
  returned: always
  type: list
  elements: str
commands:
  description:
    - Every change (or, in check mode, every change needed) as the shell command that does the same, in order,
      C(systemctl daemon-reload) included even where it was not run (see C(notes)).
  returned: always
  type: list
  elements: str
  sample: ["write /etc/systemd/system/podnet-apply.service (mode 0644)", "systemctl daemon-reload"]
ran:
  description: The commands this run actually ran (C(systemctl daemon-reload), where systemd is PID 1).
  returned: always
  type: list
  elements: str
notes:
  description: Why a command in C(commands) was not run (systemd is not PID 1 here, or no C(systemctl)).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.podnet.dataplane.plugins.module_utils.node.boot_install import (
    UNIT_DIR,
    BootInstallError,
    install,
    removal,
)

ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "lib": {"type": "path", "default": "/usr/local/lib/podnet"},
    "python": {"type": "path", "default": "/usr/bin/python3"},
    "persist_dir": {"type": "path"},
    "unit_dir": {"type": "path", "default": UNIT_DIR},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "present", ["persist_dir"])])
    p = module.params
    try:
        if p["state"] == "present":
            result = install(p["lib"], p["python"], p["persist_dir"], p["unit_dir"], module.check_mode)
        else:
            result = removal(p["lib"], p["unit_dir"], module.check_mode)
    except BootInstallError as exc:
        failed = {k: v for k, v in exc.result.items() if k != "diff"}
        module.fail_json(msg=exc.msg, **failed)
    diff = result.pop("diff")
    if module._diff and diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
