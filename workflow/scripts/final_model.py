"""Adapter: consistency, representation and token dependence of one run's θT
(rules/final_model.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0], snakemake.threads)

import os  # noqa: E402

from crosstrace.final_model import FINAL_OUTPUTS, analyse_final_model  # noqa: E402
from crosstrace.rank import RankSettings  # noqa: E402
from crosstrace.runs import Run  # noqa: E402

settings = RankSettings(**snakemake.params.settings)
analyse_final_model(
    snakemake.input.model,
    os.path.dirname(snakemake.input.bio),
    {d: snakemake.input[f"trace_{d}"] for d in settings.definitions},
    snakemake.input.ranking,
    {name: snakemake.output[name] for name in FINAL_OUTPUTS},
    run=Run(**snakemake.params.run),
    settings=settings,
    probe_people=snakemake.params.probe_people,
    probe_bio_values=snakemake.params.probe_bio_values,
    seed=snakemake.params.ablation_seed,
    device=snakemake.params.device,
)
