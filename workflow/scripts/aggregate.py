"""Adapter: results/crosstrace.duckdb and the tables it exports (rules/aggregate.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

from crosstrace.database import build_database  # noqa: E402

build_database(
    snakemake.params.trace_root,
    snakemake.output.database,
    snakemake.params.tables_dir,
    predictions=snakemake.params.runs,
    ablations=list(snakemake.input.ablations),
    k_percent=snakemake.params.k_percent,
    rank_modules=snakemake.params.rank_modules,
    memory_limit=snakemake.params.memory_limit,
    threads=snakemake.threads,
)
