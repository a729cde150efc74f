"""Adapter: ablation of shared top-k parameters vs controls for one run (rules/ablate.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0], snakemake.threads)

from crosstrace.ablate import ablate_run  # noqa: E402

ablate_run(
    snakemake.input.model,
    snakemake.input.base,
    snakemake.input.trace,
    snakemake.input.qa,
    snakemake.output.ablation,
    **snakemake.params.run,
    k_percent=snakemake.params.k_percent,
    rank_modules=snakemake.params.rank_modules,
    ablation_seed=snakemake.params.ablation_seed,
    batch_size=snakemake.params.batch_size,
    max_new_tokens=snakemake.params.max_new_tokens,
    device=snakemake.params.device,
)
