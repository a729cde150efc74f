"""Adapter: rank one run's trace(s) into its top-k tables (rules/rank.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

from crosstrace.rank import RankSettings, Run, rank_run  # noqa: E402

settings = RankSettings(**snakemake.params.settings)
rank_run(
    {d: snakemake.input[d] for d in settings.definitions},
    snakemake.input.model,
    {"ranking": snakemake.output.ranking, "cells": snakemake.output.cells,
     "agreement": snakemake.output.agreement},
    run=Run(**snakemake.params.run),
    settings=settings,
)  # fmt: skip
