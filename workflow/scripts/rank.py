"""Adapter: rank one run's trace(s) into its top-k tables, and the different-people
control's pairings (rules/rank.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

from crosstrace.people_control import rank_people_control  # noqa: E402
from crosstrace.rank import OUTPUTS, RankSettings, rank_run  # noqa: E402
from crosstrace.runs import Run  # noqa: E402

settings = RankSettings(**snakemake.params.settings)
run = Run(**snakemake.params.run)
rank_run(
    {d: snakemake.input[f"trace_{d}"] for d in settings.definitions},
    snakemake.input.model,
    {what: snakemake.output[what] for what in OUTPUTS},
    run=run,
    settings=settings,
)  # fmt: skip
rank_people_control(
    {d: snakemake.input[f"people_trace_{d}"] for d in snakemake.params.people_definitions},
    snakemake.input.model,
    snakemake.output.people_control,
    run=run,
    settings=settings,
)
