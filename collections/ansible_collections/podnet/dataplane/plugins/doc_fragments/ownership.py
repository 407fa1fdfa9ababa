# Copyright: podnet contributors
# Apache License 2.0
from __future__ import annotations


class ModuleDocFragment:
    # The take_over option of every module that creates devices or routes.
    DOCUMENTATION = r"""
options:
  take_over:
    description:
      - Devices (by name) and routes of the node's namespace (by destination, like C(10.244.1.0/24)) that
        podnet may change although it did not create them.
      - podnet changes or deletes a device only when its alias is podnet's (C(podnet:*)), and a route only
        when its protocol is podnet's (C(152)). A device or route with a wanted name or destination that
        lacks the marker makes the module fail before anything is changed, naming it. Listing it here hands
        it over once - the module then marks it as podnet's (alias or protocol), and later runs own it.
      - The kernel's own fallback tunnel C(tunl0) needs no listing.
    type: list
    elements: str
    default: []
"""
