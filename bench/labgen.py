"""Shared helpers of the lab benchmarks: generated N-node lab inventories and timed playbook runs.

The inventory is the lab's (``inventories/lab``: same group vars, netns connection, per-prefix state)
with N nodes on a larger underlay; the ansible config is the repo's with absolute paths, so a variant
(``overrides``) can be tried without touching ``ansible.cfg``. Labs come from ``tests/integration/labkit``
(unique prefix, always torn down).
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.integration import labkit  # noqa: E402,F401  (re-exported; needs the repo root on sys.path)

LAB_GROUP_VARS = REPO_ROOT / "inventories" / "lab" / "group_vars" / "podnet_nodes.yml"
CALLBACK_DIR = Path(__file__).resolve().parent / "callback_plugins"
DEFAULT_UNDERLAY = "172.30.0.0/22"  # room for 1,000 nodes; never the root namespace's 192.0.2.0/24


def node_name(i: int) -> str:
    return f"n{i:03d}"


def node_ips(n: int, underlay: str = DEFAULT_UNDERLAY) -> list[str]:
    """N node addresses: the underlay's hosts after the gateway (.1) and a small gap."""
    net = ipaddress.IPv4Network(underlay)
    hosts = list(net.hosts())[10 : 10 + n]
    if len(hosts) < n:
        raise ValueError(f"{underlay} has no room for {n} nodes")
    return [str(h) for h in hosts]


def write_inventory(
    directory: Path,
    n: int,
    pods_per_node: int = 1,
    underlay: str = DEFAULT_UNDERLAY,
    group_vars: Mapping[str, Any] | None = None,
) -> Path:
    """An N-node lab inventory in `directory` (hosts.yml + group_vars); returns its folder."""
    inv = directory / "inventory"
    (inv / "group_vars").mkdir(parents=True, exist_ok=True)
    gv = yaml.safe_load(LAB_GROUP_VARS.read_text())
    net = ipaddress.IPv4Network(underlay)
    gv["podnet_lab_underlay_cidr"] = str(net)
    gv["podnet_lab_gateway"] = str(next(net.hosts()))
    gv.update(group_vars or {})
    (inv / "group_vars" / "podnet_nodes.yml").write_text(yaml.safe_dump(gv, sort_keys=False))
    hosts = {
        node_name(i): {
            "podnet_node_ip": ip,
            "podnet_pods": [{"name": f"pod{p + 1}"} for p in range(pods_per_node)],
        }
        for i, ip in enumerate(node_ips(n, underlay), start=1)
    }
    (inv / "hosts.yml").write_text(yaml.safe_dump({"podnet_nodes": {"hosts": hosts}}, sort_keys=False))
    return inv


def write_ansible_cfg(directory: Path, overrides: Mapping[str, Mapping[str, str]] | None = None) -> Path:
    """The repo's ansible.cfg with absolute paths, plus `overrides` ({section: {key: value}})."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO_ROOT / "ansible.cfg")
    for key in ("collections_path", "roles_path"):
        if cfg.has_option("defaults", key):
            cfg.set("defaults", key, str((REPO_ROOT / cfg.get("defaults", key)).resolve()))
    cfg.set("defaults", "inventory", str(REPO_ROOT / "inventories" / "lab"))
    for section, values in (overrides or {}).items():
        if not cfg.has_section(section):
            cfg.add_section(section)
        for key, value in values.items():
            cfg.set(section, key, str(value))
    path = directory / "ansible.cfg"
    with path.open("w") as fh:
        cfg.write(fh)
    return path


def timing_env(cfg: Path, timings: Path) -> dict[str, str]:
    """Environment for a run with the given config and the per-task timer callback."""
    return {
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": "bench_timer",
        "PODNET_BENCH_TIMINGS": str(timings),
    }


def read_timings(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"total": None, "tasks": []}


def top_tasks(timings: Mapping[str, Any], k: int = 5) -> list[tuple[str, float]]:
    """The k slowest tasks (same-named tasks, e.g. of included roles, summed)."""
    sums: dict[str, float] = {}
    for t in timings.get("tasks", []):
        sums[t["task"]] = sums.get(t["task"], 0.0) + t["seconds"]
    return sorted(sums.items(), key=lambda kv: -kv[1])[:k]


def tempdir(tag: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"podnet-bench-{tag}-")


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
