"""Build results/crosstrace.duckdb: a ``trace`` view over the Parquet dump plus analysis tables.

All SQL lives in ``crosstrace/sql/*.sql``; this module only binds parameters and loops over
runs. The top-k sets come from the ranking stage (``crosstrace.rank``): ``ranking``,
``shared_counts`` and ``definition_agreement`` are its per-run files; ``overlap`` (with the
stratified null), ``concentration``, ``ablation`` and the ``*_summary`` tables (mean and 95 %
interval over seeds) are computed here in SQL. ``trace_runs`` and ``crosstrace_meta`` are
bookkeeping. Each table in ``TABLES`` is also exported to ``<tables_dir>/<name>.parquet``.

The ``trace`` view reads ``read_parquet('<trace_root>/**/*.parquet', hive_partitioning=true)``
with the absolute path of the dump, so the database opens from any folder, in Python or in the
``duckdb`` shell; ``connect`` (and ``crosstrace sql``) also find a moved results folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crosstrace.atomic import atomic_file
from crosstrace.contrasts import build_contrasts
from crosstrace.dump import read_dump_metadata
from crosstrace.errors import InputDataError
from crosstrace.outputs import CONSISTENCY_FILES as CONSISTENCY_OUTPUTS
from crosstrace.outputs import RANKING_FILES, TABLES
from crosstrace.rank import RankSettings, check_ranking_file
from crosstrace.runs import Run

CONSISTENCY_FILES = tuple(CONSISTENCY_OUTPUTS)  # RunFiles fields: all of them, or none


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


def _trace_view(trace_root: Path, *, temp: bool = False) -> str:
    glob = _quote(str(trace_root.resolve()) + "/**/*.parquet")
    kind = "TEMP VIEW" if temp else "VIEW"
    return f"CREATE {kind} trace AS SELECT * FROM read_parquet({glob}, hive_partitioning = true)"


def connect(
    db_path: str | os.PathLike[str], read_only: bool = True, **config
) -> duckdb.DuckDBPyConnection:
    """Open the database from any folder.

    The stored ``trace`` view reads the dump by its absolute path, so the plain ``duckdb``
    shell works from anywhere. If the results folder was moved since, the dump is found again
    next to the database (its path relative to the database file is stored too) and a
    temporary ``trace`` view of this connection points there.
    """
    db_path = Path(db_path)
    if not db_path.exists():
        raise InputDataError(f"database not found: {db_path}")
    con = duckdb.connect(str(db_path), read_only=read_only, config=config)
    meta = dict(con.execute("SELECT key, value FROM crosstrace_meta").fetchall())
    stored, rel = meta.get("trace_root"), meta.get("trace_root_from_db")
    if stored and not Path(stored).is_dir() and rel is not None:
        here = (db_path.resolve().parent / rel).resolve()
        if here.is_dir():
            con.execute(_trace_view(here, temp=True))
    return con


def _load_dump_metadata(con: duckdb.DuckDBPyConnection, trace_root: Path) -> None:
    runs: list[dict] = []
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
    if not runs:
        raise InputDataError(f"no trace tables under {trace_root} (expected model=…/…/*.parquet)")
    con.register("_incoming", pd.DataFrame(runs))
    con.execute("INSERT INTO trace_runs SELECT * FROM _incoming")
    con.unregister("_incoming")


def _with_columns(path: str | os.PathLike[str], defaults: dict[str, pa.Array]) -> pa.Table:
    """A Parquet file, with the columns an older version did not write filled in."""
    table = pq.read_table(path)
    for name, column in defaults.items():
        if name not in table.column_names:
            table = table.append_column(name, column(len(table)))
    return table


def _predictions(path: str | os.PathLike[str]) -> pa.Table:
    """A predictions file, with ``precision`` "unrecorded" where an older file has none."""
    return _with_columns(path, {"precision": lambda n: pa.array(["unrecorded"] * n)})


def _train_log(path: str | os.PathLike[str]) -> pa.Table:
    """A per-step training log, with null per-task tokens where an older log has none."""
    if not Path(path).is_file():
        raise InputDataError(f"training log {path} does not exist")
    table = pq.read_table(path)
    for col in ("tokens_bio", "tokens_qa"):
        if col not in table.column_names:
            table = table.append_column(col, pa.nulls(len(table), pa.int64()))
    return table


@dataclass(frozen=True)
class RunFiles:
    """One run's inputs to the database: its predictions and ranking outputs."""

    run: Run
    predictions: str | os.PathLike[str]
    ranking: str | os.PathLike[str]
    cells: str | os.PathLike[str]
    agreement: str | os.PathLike[str]
    ablation: str | os.PathLike[str] | None = None
    unit_ablation: str | os.PathLike[str] | None = None
    people_control: str | os.PathLike[str] | None = None
    consistency: str | os.PathLike[str] | None = None
    by_set: str | os.PathLike[str] | None = None
    representation: str | os.PathLike[str] | None = None
    token_dependence: str | os.PathLike[str] | None = None
    training_curve: str | os.PathLike[str] | None = None
    bio_end_predictions: str | os.PathLike[str] | None = None  # θ_BIO (two-stage runs)
    bio_end_representation: str | os.PathLike[str] | None = None  # θ_BIO's name-token states
    train_logs: tuple[str | os.PathLike[str], ...] = ()  # every phase's per-step log


OPTIONAL_FILES = (
    "ablation",
    "unit_ablation",
    "people_control",
    *CONSISTENCY_FILES,
    "training_curve",
    "bio_end_predictions",
    "bio_end_representation",
)


def _load_run(con: duckdb.DuckDBPyConnection, files: RunFiles) -> None:
    """One run's files into the tables (a missing optional file leaves its rows out)."""
    params = {"model": files.run.model, "strategy": files.run.strategy,
              "seed": int(files.run.seed)}  # fmt: skip
    ranking = {what: str(getattr(files, what)) for what in RANKING_FILES}
    _run(con, "ranking_load", {**params, **ranking})
    for checkpoint, path in (("final", files.predictions), ("bio_end", files.bio_end_predictions)):
        if path is not None:
            con.register("predictions_in", _predictions(path))
            _run(con, "accuracy", {**params, "checkpoint": checkpoint})
            con.unregister("predictions_in")
    if files.ablation is not None:  # older files: every set was reset to θ0
        older = {
            "counterfactual": lambda n: pa.array(["reset"] * n),
            "shift_norm": lambda n: pa.nulls(n, pa.float64()),
        }
        con.register("ablation_in", _with_columns(files.ablation, older))
        _run(con, "ablation_load")
        con.unregister("ablation_in")
    if files.unit_ablation is not None:
        con.register("unit_ablation_in", pq.read_table(files.unit_ablation))
        _run(con, "unit_ablation_load")
        con.unregister("unit_ablation_in")
    if files.people_control is not None:
        _run(con, "people_control_load", {"path": str(files.people_control)})
    for path in files.train_logs:
        con.register("train_log_in", _train_log(path))
        _run(con, "compute_load", params)
        con.unregister("train_log_in")
    if files.training_curve is not None:
        _run(con, "curve_load", {**params, "path": str(files.training_curve)})
    paths = {what: getattr(files, what) for what in CONSISTENCY_FILES}
    if all(p is not None for p in paths.values()):
        _run(con, "consistency_load", {**params, **{k: str(v) for k, v in paths.items()}})
    elif any(p is not None for p in paths.values()):
        raise InputDataError(f"run {files.run}: give all of {CONSISTENCY_FILES} or none")
    if files.bio_end_representation is not None:
        _run(con, "bio_end_representation_load",
             {**params, "path": str(files.bio_end_representation)})  # fmt: skip


def build_database(
    trace_root: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    tables_dir: str | os.PathLike[str],
    *,
    runs: Sequence[RunFiles],
    settings: RankSettings,
    memory_limit: str = "2GB",
    threads: int | None = None,
    primary_k: float = 1.0,
) -> Path:
    """Create ``db_path`` (atomically) and export its tables to ``tables_dir``.

    Every run's ranking files must have been written with ``settings``; a missing input file
    is an error that names the run. Returns ``db_path``.
    """
    trace_root, db_path, tables_dir = Path(trace_root), Path(db_path), Path(tables_dir)
    if not runs:
        raise InputDataError("build_database: no runs given")
    for files in runs:
        for what in ("predictions", *RANKING_FILES, *OPTIONAL_FILES):
            path = getattr(files, what)
            if path is not None and not Path(path).is_file():
                raise InputDataError(f"run {files.run}: {what} file {path} does not exist")
        for what in RANKING_FILES:
            check_ranking_file(getattr(files, what), settings=settings, run=files.run)

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
                    ["trace_root", str(trace_root.resolve())],
                    [
                        "trace_root_from_db",
                        os.path.relpath(trace_root.resolve(), db_path.resolve().parent),
                    ],
                    ["format", "crosstrace-db/2"],
                    ["rank_settings", json.dumps(settings.to_json())],
                    ["primary_k", str(float(primary_k))],
                ],
            )
            _load_dump_metadata(con, trace_root)
            con.execute(_trace_view(trace_root))
            for files in runs:
                _load_run(con, files)
            for name in ("overlap", "people_control", "concentration", "ablation", "unit_ablation",
                         "consistency", "curve", "summaries", "contrast_pairs"):  # fmt: skip
                _run(con, name)
            build_contrasts(con)
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
    """Shared parameters per (run, definition, scope, layer, module, head) at one k."""
    return con.execute(
        """SELECT model, strategy, seed, definition, scope, layer, module, head, query_heads,
                  sum(n_params) AS n_params, sum(n_bio) AS n_bio, sum(n_qa) AS n_qa,
                  sum(n_shared) AS n_shared
           FROM shared_counts WHERE k_percent = ? AND head IS NOT NULL
           GROUP BY ALL ORDER BY ALL""",
        [float(k_percent)],
    ).df()
