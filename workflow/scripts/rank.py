"""Adapter: rank one run's trace(s) into its top-k tables (rules/rank.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

from crosstrace.rank import OUTPUTS, RankSettings, rank_run  # noqa: E402
from crosstrace.runs import Run  # noqa: E402

settings = RankSettings(**snakemake.params.settings)
rank_run(
    {d: snakemake.input[f"trace_{d}"] for d in settings.definitions},
    snakemake.input.model,
    {what: snakemake.output[what] for what in OUTPUTS},
    run=Run(**snakemake.params.run),
    settings=settings,
)  # fmt: skip
