"""Adapter: ablation of the shared top-k parameters vs matched controls (rules/ablate.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0], snakemake.threads)

from crosstrace.ablate import ablate_run  # noqa: E402
from crosstrace.rank import RankSettings  # noqa: E402
from crosstrace.runs import Run  # noqa: E402

settings = RankSettings(**snakemake.params.settings)
ablate_run(
    snakemake.input.model,
    snakemake.input.base,
    {d: snakemake.input[f"trace_{d}"] for d in settings.definitions},
    snakemake.input.ranking,
    snakemake.input.qa,
    snakemake.output.ablation,
    run=Run(**snakemake.params.run),
    settings=settings,
    draws=snakemake.params.draws,
    ablation_seed=snakemake.params.ablation_seed,
    questions_per_split=snakemake.params.questions_per_split,
    batch_size=snakemake.params.batch_size,
    device=snakemake.params.device,
    update_trace=snakemake.input.get("update_trace"),
    units_out=snakemake.output.units,
    unit_counts=snakemake.params.unit_counts,
    unit_k=snakemake.params.unit_k,
)
