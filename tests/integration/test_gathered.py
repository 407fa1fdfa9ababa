"""`gathered` is valid input again, for every resource module: on a node site.yml converged, what a module
gathers is a set of its own options (its argument spec accepts them), and given back - merged, and
overridden too, which removes whatever of podnet's is not listed - it changes nothing.

Each module runs in the node as Ansible runs it (modulekit.run_module). ipip_tunnel's round trip runs in
the QEMU guest (test_ipip_compositions.py), the only kernel here with the ipip module.
"""
from __future__ import annotations

import importlib

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from .labkit import REPO_ROOT, Lab
from .modulekit import lab_state_dir, run_module

pytestmark = pytest.mark.integration

HOST = "node2"
# What identifies the resource instance for its `gathered` state, per module.
ROUND_TRIPS = {
    "flannel-vxlan": {"vxlan_fdb": {"name": "flannel.1"}, "pod_route": {"networks": ["10.244.0.0/16"]},
                      "pod_network": {}, "iptables_rules": {}},
    "calico-bgp": {"pod_route": {"networks": ["10.244.0.0/16"]}, "pod_network": {"mode": "routed"},
                   "proxy_arp": {"interfaces": ["cali*"]}, "network_policy": {}},
}
# the option that lists the resource's entries: not empty on a converged node
LISTED = {"vxlan_fdb": "peers", "pod_route": "routes", "pod_network": "pods", "iptables_rules": "rules",
          "proxy_arp": "interfaces", "network_policy": "chains"}
# network_policy needs chains of podnet's to gather: chains named as podnet names its own and the jump, as a
# policy has them
POLICY = {"chains": {"PODNET-FORWARD": ["-A PODNET-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                                        "-A PODNET-FORWARD -s 10.244.0.0/16 -j PODNET-P-0123456789ab"],
                     "PODNET-P-0123456789ab": ["-A PODNET-P-0123456789ab -j RETURN"]},
          "jump": {"table": "filter", "chain": "FORWARD", "target": "PODNET-FORWARD", "position": 1}}


def spec_of(module: str) -> dict:
    return importlib.import_module(
        f"ansible_collections.podnet.dataplane.plugins.module_utils.resources.{module}_resource").ARGUMENT_SPEC


@pytest.mark.parametrize("backend", sorted(ROUND_TRIPS))
def test_gathered_given_back_changes_nothing(backend):
    with Lab(extra_vars={"podnet_backend": backend}) as lab:
        converged = lab.run(REPO_ROOT / "playbooks" / "site.yml")
        assert converged.rc == 0, converged.output
        if "network_policy" in ROUND_TRIPS[backend]:
            run_module(lab, HOST, "network_policy", POLICY)
        for module, identity in ROUND_TRIPS[backend].items():
            if module == "proxy_arp":
                identity = dict(identity, state_file=f"{lab_state_dir(lab, HOST)}/proxy_arp.json")
            gathered = run_module(lab, HOST, module, dict(identity, state="gathered"))["gathered"]
            assert gathered.get(LISTED[module]), (module, gathered)  # what was compared is the real thing
            options = dict(gathered, **{k: v for k, v in identity.items() if k not in gathered})
            checked = ArgumentSpecValidator(spec_of(module)).validate(dict(options, state="merged"))
            assert not checked.error_messages, (module, checked.error_messages, gathered)
            for state in ("merged", "overridden"):
                again = run_module(lab, HOST, module, dict(options, state=state), check=True)
                assert not again["changed"], (module, state, gathered, again.get("commands"), again.get("diff"))
