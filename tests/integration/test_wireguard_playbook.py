"""WireGuard end to end through ansible-playbook: site.yml makes every node's key on the node and hands the public
keys round; no private key is in anything the run printed.

Runs inside the QEMU guest that test_ipip_vm.py boots (``pytest -m ipip``), on the guest's one lab (conftest
``guest_lab``); a site.yml run costs minutes under the guest's software emulation, so this is the only one.
test_wireguard_transport.py covers the rest through node_apply run in the nodes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .modulekit import lab_state_dir, shared_lab
from .test_calico_ipip import GUEST_ONLY, NODES, assert_pods_reach_each_other
from .test_wireguard_transport import assert_no_private_key_in, assert_wireguard_state, public_keys

pytestmark = GUEST_ONLY

SITE = "playbooks/site.yml"


@pytest.fixture(scope="module")
def lab(guest_lab):
    with shared_lab(guest_lab) as shared:
        yield shared


def test_site_yml_makes_the_keys_on_the_nodes_and_hands_the_public_keys_round(lab):
    # every task's whole result printed (-v), with --diff: what the search below goes through
    result = lab.run(SITE, extra_vars={"podnet_backend": "calico-wireguard"}, diff=True,
                     env={"ANSIBLE_VERBOSITY": "1"})
    assert result.rc == 0, result.stdout[-6000:] + result.stderr[-3000:]
    keys = public_keys(lab, "wireguard.cali")
    assert len(set(keys.values())) == len(NODES)
    # the controller recorded exactly the nodes' public keys (for runs limited to some nodes, and render.yml)
    assert json.loads((Path(lab_state_dir(lab)) / "wireguard_keys.json").read_text()) == keys
    assert_wireguard_state(lab, "wireguard.cali", keys)
    assert_pods_reach_each_other(lab, through="wireguard.cali")
    # each node's key task returned its public key, and the run handed every key to every other node
    assert all(result.stdout.count(key) >= len(NODES) for key in keys.values()), result.stdout[-3000:]
    assert_no_private_key_in(lab, result.stdout, result.stderr)
