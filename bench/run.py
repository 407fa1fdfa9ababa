"""Run every benchmark (bench/bench_*.py) in turn, forwarding the command-line arguments to each.

    python bench/run.py [--only engine,scale] [ARGS...]     # `make bench BENCH_ARGS="--quick"`

Each benchmark prints its own table of ratios against baselines measured in the same run and exits
non-zero when a correctness check fails; this exits non-zero when any of them did.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    only: set[str] | None = None
    args: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--only":
            only = set(next(it, "").split(","))
        elif arg.startswith("--only="):
            only = set(arg.split("=", 1)[1].split(","))
        else:
            args.append(arg)
    scripts = sorted(HERE.glob("bench_*.py"))
    if only is not None:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only or s.stem in only]
    if not scripts:
        print("bench/run.py: no benchmark selected", file=sys.stderr)
        return 2
    results = []
    for script in scripts:
        print(f"=== {script.name} {' '.join(args)}".rstrip(), flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *args])
        results.append((script.name, rc, time.perf_counter() - start))
        print(flush=True)
    print("=== summary")
    for name, rc, elapsed in results:
        print(f"{name:<24} {'ok' if rc == 0 else f'FAILED (exit {rc})':<18} {elapsed:7.1f} s")
    return 1 if any(rc for _, rc, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
