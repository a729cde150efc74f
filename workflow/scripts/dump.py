"""Adapter: dump one run's trace to hive-partitioned Parquet (rules/dump.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

from crosstrace.dump import dump_trace  # noqa: E402

# The library writes <trace_root>/model=…/strategy=…/seed=…, which is this rule's output.
dump_trace(
    snakemake.input.trace,
    snakemake.input.model,
    snakemake.params.trace_root,
    **snakemake.params.run,
    top_percent=snakemake.params.top_percent,
)
