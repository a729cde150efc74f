"""Adapter: write θ0 for one model (rules/models.smk)."""

import logging
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
)

import os  # noqa: E402

from crosstrace.models import build_base  # noqa: E402

build_base(
    snakemake.params.model_cfg,
    os.path.dirname(snakemake.input.bio),
    snakemake.output.model,
    seed=snakemake.params.seed,
    single_token_names=snakemake.params.single_token_names,
)
