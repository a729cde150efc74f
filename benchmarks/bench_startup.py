"""What every workflow command and every job pays before it computes anything.

Prints the median wall time (interleaved rounds, fresh processes) of:
- importing the crosstrace modules the Snakefile imports (Snakemake parses the workflow for
  every command, and again twice inside every SLURM job),
- a dry run of the CI study (`snakemake -n`, parse + DAG),
- importing torch, and importing crosstrace.models (torch + the transformers model classes:
  what every job that loads a model pays).

    python benchmarks/bench_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakefile_imports() -> list[str]:
    sources = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    pattern = re.compile(r"^\s*from (crosstrace\.\w+) import", re.M)
    return sorted({m for p in sources for m in pattern.findall(p.read_text())})


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    py = sys.executable
    cases = {
        "import the Snakefile's crosstrace modules": [
            py, "-c", f"import {', '.join(snakefile_imports())}"
        ],
        "snakemake -n (CI study: parse + DAG)": [
            py, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile", "config/ci.yaml"
        ],
        "import torch": [py, "-c", "import torch"],
        "import crosstrace.models (torch + transformers)": [py, "-c", "import crosstrace.models"],
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, cmd in cases.items():
            times[name].append(timed(cmd, REPO))  # a dry run writes only .snakemake/
    print(f"{'what':50s} {'median s':>9s} {'min s':>7s}  ({args.rounds} rounds)")
    for name, values in times.items():
        print(f"{name:50s} {statistics.median(values):9.2f} {min(values):7.2f}")


if __name__ == "__main__":
    main()
