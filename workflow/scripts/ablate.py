"""Adapter: ablation of shared top-k parameters vs controls for one run (rules/ablate.smk)."""

import logging
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
)

import torch  # noqa: E402

from crosstrace.ablate import ablate_run  # noqa: E402

torch.set_num_threads(snakemake.threads)
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
