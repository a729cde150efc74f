"""Adapter: results/crosstrace.duckdb and the tables it exports (rules/database.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

from crosstrace.database import RunFiles, build_database  # noqa: E402
from crosstrace.rank import RankSettings  # noqa: E402
from crosstrace.runs import Run  # noqa: E402

build_database(
    snakemake.params.trace_root,
    snakemake.output.database,
    snakemake.params.tables_dir,
    runs=[RunFiles(**{**r, "run": Run(**r["run"])}) for r in snakemake.params.runs],
    settings=RankSettings(**snakemake.params.settings),
    memory_limit=snakemake.params.memory_limit,
    threads=snakemake.threads,
    primary_k=snakemake.params.primary_k,
)
