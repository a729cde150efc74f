"""Adapter: one training phase, bio | qa | mix (rules/train.smk: train_bio and train)."""

import logging
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
)

import os  # noqa: E402

import torch  # noqa: E402

from crosstrace.train import train_run  # noqa: E402

torch.set_num_threads(snakemake.threads)
train_run(
    snakemake.input.init,
    snakemake.output.model,
    snakemake.params.trace_out,
    snakemake.params.log_out,
    phase=snakemake.params.phase,
    data_dir=os.path.dirname(snakemake.input.bio),
    training=snakemake.params.training,
    trace=snakemake.params.trace,
    seed=int(snakemake.wildcards.seed),
    device=snakemake.params.device,
    init_trace=snakemake.params.init_trace,
    progress=True,  # tqdm to the log: steps done, rate, losses
)
