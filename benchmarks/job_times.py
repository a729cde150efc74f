"""Job time per rule of a study run, from Snakemake's per-job benchmark files.

    python benchmarks/job_times.py results/benchmarks [OTHER/results/benchmarks]

For each rule: jobs, job-seconds (wall time of the jobs, summed), CPU-seconds and the largest
peak RSS. Given two folders (before and after a change, the same study), prints both side by
side with their ratio. Snakemake writes one ``.tsv`` per job under ``results/benchmarks/<rule>/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def job_table(folder: Path) -> pd.DataFrame:
    """One row per rule: jobs, job_s, cpu_s, max_rss_mb."""
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        rel = path.relative_to(folder)
        rule = rel.parts[0] if len(rel.parts) > 1 else path.stem
        t = pd.read_csv(path, sep="\t")
        rows.append(
            {
                "rule": rule,
                "job_s": float(t["s"].iloc[-1]),
                "cpu_s": float(t["cpu_time"].iloc[-1]),
                "max_rss_mb": float(pd.to_numeric(t["max_rss"], errors="coerce").iloc[-1]),
            }
        )
    if not rows:
        raise SystemExit(f"no benchmark files under {folder}")
    df = pd.DataFrame(rows)
    out = df.groupby("rule").agg(
        jobs=("job_s", "size"), job_s=("job_s", "sum"), cpu_s=("cpu_s", "sum"),
        max_rss_mb=("max_rss_mb", "max"),
    )  # fmt: skip
    out.loc["total"] = [
        out["jobs"].sum(),
        out["job_s"].sum(),
        out["cpu_s"].sum(),
        out["max_rss_mb"].max(),
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args()
    tables = [job_table(f) for f in args.folders]
    if len(tables) == 1:
        print(tables[0].round(1).to_string())
        return
    a, b = tables[:2]
    both = a[["jobs", "job_s", "cpu_s"]].join(
        b[["jobs", "job_s", "cpu_s"]], lsuffix="_before", rsuffix="_after", how="outer"
    )
    both["job_s_ratio"] = both["job_s_before"] / both["job_s_after"]
    print(both.round(2).to_string())


if __name__ == "__main__":
    main()
