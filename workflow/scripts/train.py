"""Adapter: one training phase, bio | qa | mix (rules/train.smk: train_bio and train)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0], snakemake.threads)

import os  # noqa: E402

from crosstrace.train import train_run  # noqa: E402

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
    consistency=snakemake.params.consistency,
    consistency_out=snakemake.params.consistency_out,
    init_consistency=snakemake.params.init_consistency,
    curve=snakemake.params.curve,
    curve_out=snakemake.params.curve_out,
    init_curve=snakemake.params.init_curve,
    progress=True,  # tqdm to the log: steps done, rate, losses
)
