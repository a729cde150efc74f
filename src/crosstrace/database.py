"""Build results/crosstrace.duckdb: a ``trace`` view over the Parquet dump plus analysis tables.

All SQL lives in ``crosstrace/sql/*.sql``; this module only binds parameters and loops over
runs. Tables: accuracy, thresholds, shared_counts, overlap, concentration, ablation (plus the
helpers trace_runs, trace_cells, topk_sizes, k_values, rank_modules, crosstrace_meta). Each
analysis table is also exported to ``<tables_dir>/<name>.parquet``.

The ``trace`` view reads ``read_parquet('<trace_root>/**/*.parquet', hive_partitioning=true)``.
When the trace root lies under the working folder (the repo root, where Snakemake runs), the
view stores the path relative to it, so ``duckdb results/crosstrace.duckdb`` run from the repo
root works after the repo is moved; otherwise the absolute path. ``connect`` also sets
``file_search_path`` to the build folder, so Python users can open it from anywhere.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from crosstrace.atomic import atomic_file
from crosstrace.dump import read_dump_metadata
from crosstrace.errors import CrosstraceError, InputDataError
from crosstrace.param_map import DEFAULT_RANK_MODULES, MODULES

TABLES = ("accuracy", "thresholds", "shared_counts", "overlap", "concentration", "ablation")


def sql(name: str) -> str:
    """The text of ``crosstrace/sql/<name>.sql``."""
    return resources.files("crosstrace").joinpath("sql", f"{name}.sql").read_text()


def _statements(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _run(con: duckdb.DuckDBPyConnection, name: str, params: dict | None = None) -> None:
    for stmt in _statements(sql(name)):
        used = {k: v for k, v in (params or {}).items() if f"${k}" in stmt}
        con.execute(stmt, used or None)


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def _view_path(trace_root: Path) -> str:
    root = trace_root.resolve()
    cwd = Path.cwd().resolve()
    if root.is_relative_to(cwd):
        return str(root.relative_to(cwd)) or "."
    return str(root)


def connect(
    db_path: str | os.PathLike[str], read_only: bool = True, **config
) -> duckdb.DuckDBPyConnection:
    """Open the database; relative paths in the ``trace`` view resolve against its build folder."""
    db_path = Path(db_path)
    if not db_path.exists():
        raise InputDataError(f"database not found: {db_path}")
    con = duckdb.connect(str(db_path), read_only=read_only, config=config)
    row = con.execute("SELECT value FROM crosstrace_meta WHERE key = 'base_dir'").fetchone()
    if row and Path(row[0]).is_dir():
        con.execute(f"SET file_search_path = {_quote(row[0])}")
    return con


def _load_dump_metadata(con: duckdb.DuckDBPyConnection, trace_root: Path) -> None:
    runs, cells = [], []
    seen: set[tuple] = set()
    for path in sorted(trace_root.glob("model=*/strategy=*/seed=*/task=*/*.parquet")):
        meta = read_dump_metadata(path)
        key = (meta["model"], meta["strategy"], int(meta["seed"]), meta["task"])
        part = dict(p.split("=", 1) for p in path.parent.relative_to(trace_root).parts)
        if (part["model"], part["strategy"], int(part["seed"]), part["task"]) != key:
            raise InputDataError(f"{path}: metadata says {key}, the folder says {part}")
        if key in seen:
            runs[-1]["n_files"] += 1
            continue
        seen.add(key)
        runs.append(
            {
                "model": key[0],
                "strategy": key[1],
                "seed": key[2],
                "task": key[3],
                "arch": meta["arch"],
                "top_percent": meta["top_percent"],
                "dump_threshold": meta["threshold"],
                "n_files": 1,
            }
        )
        for layer, module, head, n in meta["cells"]:
            cells.append((*key, layer, module, head, n))
    if not runs:
        raise InputDataError(f"no trace tables under {trace_root} (expected model=…/…/*.parquet)")
    cols = ["model", "strategy", "seed", "task", "layer", "module", "head", "n_params"]
    for name, df in [
        ("trace_runs", pd.DataFrame(runs)),
        ("trace_cells", pd.DataFrame(cells, columns=cols)),
    ]:
        con.register("_incoming", df)
        con.execute(f"INSERT INTO {name} SELECT * FROM _incoming")
        con.unregister("_incoming")


def _compute_thresholds(con: duckdb.DuckDBPyConnection) -> None:
    _run(con, "topk_sizes")
    runs = con.execute("SELECT DISTINCT model, strategy, seed, task FROM topk_sizes ORDER BY ALL")
    for model, strategy, seed, task in runs.fetchall():
        params = {"model": model, "strategy": strategy, "seed": seed, "task": task}
        _run(con, "thresholds_buckets", params)
    targets = con.execute(
        "SELECT model, strategy, seed, task, k_percent, n_ranked, k_rows, r, lo, hi "
        "FROM threshold_targets ORDER BY ALL"
    ).fetchall()
    for model, strategy, seed, task, k, n_ranked, k_rows, r, lo, hi in targets:
        params = {"model": model, "strategy": strategy, "seed": seed, "task": task}
        params |= {"k_percent": k, "n_ranked": n_ranked, "k_rows": k_rows}
        if lo is None:  # fewer than K rows: no threshold
            params |= {"r": 1, "lo": 1.0, "hi": -1.0}
        else:
            params |= {"r": r, "lo": lo, "hi": hi}
        _run(con, "thresholds_pick", params)
    bad = con.execute(
        """SELECT th.model, th.strategy, th.seed, th.task, th.k_percent, r.top_percent
           FROM thresholds th JOIN trace_runs r USING (model, strategy, seed, task)
           WHERE th.threshold IS NULL OR th.threshold < r.dump_threshold"""
    ).fetchall()
    if bad:
        raise CrosstraceError(
            "the trace dump holds too few rows for these top-k thresholds "
            f"(model, strategy, seed, task, k_percent, dump_top_percent): {bad}. "
            "Raise trace.dump_top_percent to at least the largest analysis.k_percent, "
            "with the same rank_modules, or dump every parameter (null)."
        )


def build_database(
    trace_root: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    tables_dir: str | os.PathLike[str],
    *,
    predictions: Sequence[tuple[str, str, int, str | os.PathLike[str]]] = (),
    ablations: Sequence[str | os.PathLike[str]] = (),
    k_percent: Sequence[float] = (0.1, 1.0, 5.0),
    rank_modules: Sequence[str] = DEFAULT_RANK_MODULES,
    memory_limit: str = "2GB",
    threads: int | None = None,
) -> Path:
    """Create ``db_path`` (atomically) and export its tables to ``tables_dir``.

    ``predictions``: (model, strategy, seed, predictions.parquet) per run.
    ``ablations``: ablation parquet files from ``crosstrace.ablate.ablate_run``.
    Returns ``db_path``.
    """
    trace_root, db_path, tables_dir = Path(trace_root), Path(db_path), Path(tables_dir)
    ks = sorted({float(k) for k in k_percent})
    if not ks or any(not 0 < k <= 100 for k in ks):
        raise CrosstraceError(f"k_percent values must be in (0, 100], got {list(k_percent)}")
    unknown = sorted(set(rank_modules) - set(MODULES))
    if unknown:
        raise CrosstraceError(f"unknown rank_modules {unknown}; allowed: {list(MODULES)}")
    for _model, _strategy, _seed, path in predictions:
        if not Path(path).exists():
            raise InputDataError(f"predictions file not found: {path}")
    for path in ablations:
        if not Path(path).exists():
            raise InputDataError(f"ablation file not found: {path}")

    with atomic_file(db_path) as tmp:
        spill = tmp.with_name(tmp.name + ".spill")
        config = {"memory_limit": memory_limit, "temp_directory": str(spill)}
        if threads:
            config["threads"] = int(threads)
        con = duckdb.connect(str(tmp), config=config)
        try:
            _run(con, "schema")
            con.executemany(
                "INSERT INTO crosstrace_meta VALUES (?, ?)",
                [
                    ["base_dir", str(Path.cwd().resolve())],
                    ["trace_root", str(trace_root.resolve())],
                    ["format", "crosstrace-db/1"],
                ],
            )
            con.executemany("INSERT INTO k_values VALUES (?)", [[k] for k in ks])
            con.executemany("INSERT INTO rank_modules VALUES (?)", [[m] for m in rank_modules])
            _load_dump_metadata(con, trace_root)
            glob = _quote(_view_path(trace_root) + "/**/*.parquet")
            con.execute(
                f"CREATE VIEW trace AS SELECT * FROM read_parquet({glob}, hive_partitioning = true)"
            )
            _compute_thresholds(con)
            members = con.execute(
                "SELECT model, strategy, seed, task, k_percent, threshold FROM thresholds "
                "ORDER BY ALL"
            ).fetchall()
            for model, strategy, seed, task, k, threshold in members:
                params = {"model": model, "strategy": strategy, "seed": seed, "task": task}
                _run(con, "topk_insert", {**params, "k_percent": k, "threshold": threshold})
            _run(con, "shared_counts")
            _run(con, "overlap")
            _run(con, "concentration")
            for model, strategy, seed, path in predictions:
                params = {"model": model, "strategy": strategy, "seed": int(seed)}
                _run(con, "accuracy", {**params, "path": str(path)})
            for path in ablations:
                _run(con, "ablation_load", {"path": str(path)})
            _run(con, "ablation")
            con.execute("CHECKPOINT")
            tables_dir.mkdir(parents=True, exist_ok=True)
            for name in TABLES:
                table = con.table(name).to_arrow_table()
                with atomic_file(tables_dir / f"{name}.parquet") as out:
                    pq.write_table(table, out, compression="zstd")
        finally:
            con.close()
            shutil.rmtree(spill, ignore_errors=True)
    return db_path


def shared_by_head_query(con: duckdb.DuckDBPyConnection, k_percent: float) -> pd.DataFrame:
    """Shared parameters per (run, layer, module, head) at one k, from a built database."""
    return con.execute(
        """SELECT model, strategy, seed, layer, module, head, n_params, n_bio, n_qa, n_shared
           FROM shared_counts WHERE k_percent = ? AND head IS NOT NULL ORDER BY ALL""",
        [float(k_percent)],
    ).df()


def chance_tolerance(n_ranked: int, k_percent: float, z: float = 5.0) -> float:
    """Tolerance on shared_fraction for two independent top-K sets (hypergeometric).

    |A ∩ B| for two random K-subsets of n is hypergeometric with mean K²/n and variance
    K·(K/n)·(1−K/n)·(n−K)/(n−1). Returns z standard deviations of |A ∩ B|/n, plus the
    rounding gap between K²/n² and (k/100)².
    """
    k = max(1, math.ceil(k_percent / 100 * n_ranked - 1e-9))
    p = k / n_ranked
    var = k * p * (1 - p) * (n_ranked - k) / max(n_ranked - 1, 1)
    return z * math.sqrt(var) / n_ranked + abs(p * p - (k_percent / 100) ** 2)
