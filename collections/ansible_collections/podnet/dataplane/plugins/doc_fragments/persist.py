# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations


class ModuleDocFragment:
    # The persist_dir option every kernel-state module shares.
    DOCUMENTATION = r"""
options:
  persist_dir:
    description:
      - Directory on the node where the applied configuration is recorded, so that the podnet-apply
        unit (C(boot_apply)) restores it at boot without an Ansible run.
    type: path
"""
