"""Adapter: QA predictions of one run (rules/evaluate.smk)."""

import logging
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
)

import torch  # noqa: E402

from crosstrace.evaluate import evaluate_run  # noqa: E402

torch.set_num_threads(snakemake.threads)
evaluate_run(
    snakemake.input.model,
    snakemake.input.qa,
    snakemake.output.predictions,
    batch_size=snakemake.params.batch_size,
    max_new_tokens=snakemake.params.max_new_tokens,
    device=snakemake.params.device,
)
