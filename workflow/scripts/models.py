"""Adapter: write θ0 for one model (rules/models.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

import os  # noqa: E402

from crosstrace.models import build_base  # noqa: E402

build_base(
    snakemake.params.model_cfg,
    os.path.dirname(snakemake.input.bio),
    snakemake.output.model,
    seed=snakemake.params.seed,
    single_token_names=snakemake.params.single_token_names,
    bos=snakemake.params.bos,
)
