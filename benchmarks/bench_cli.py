"""How long the command line takes to answer ``--help``, beside what it used to import, in one run.

    python benchmarks/bench_cli.py [--repeats 5]

Each row is a fresh Python process (``python -m cinevox ... --help``), the median wall time of ``--repeats`` runs.
The reference rows time the imports the CLI made before the config dataclasses moved to ``cinevox.configs``
(torch, scipy.stats, pandas, through ``cinevox.analysis.concepts`` and the other step modules), and a bare Python.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def _time(argv: list[str], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, *argv], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    from cinevox import cli

    commands = list(cli.build_parser()._subparsers._group_actions[0].choices)
    rows = [("python -c pass (bare interpreter)", _time(["-c", "pass"], a.repeats)),
            ("reference: import the old CLI's step modules",
             _time(["-c", "import cinevox.analysis.concepts, cinevox.training.ridge, cinevox.data.prepare, "
                    "cinevox.demo"], a.repeats)),
            ("cinevox --help", _time(["-m", "cinevox", "--help"], a.repeats))]
    rows += [(f"cinevox {c} --help", _time(["-m", "cinevox", c, "--help"], a.repeats)) for c in commands]
    width = max(len(r[0]) for r in rows)
    print(f"{'command':<{width}}  median s ({a.repeats} runs)")
    for name, sec in rows:
        print(f"{name:<{width}}  {sec:7.3f}")


if __name__ == "__main__":
    main()
