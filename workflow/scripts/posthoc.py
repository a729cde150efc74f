"""Adapter: the endpoint gradient of each task at θT for one run, and the gradients of the
different-people control (rules/posthoc.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0], snakemake.threads)

import os  # noqa: E402

from crosstrace.people_control import people_gradients  # noqa: E402
from crosstrace.posthoc import posthoc_trace  # noqa: E402

posthoc_trace(
    snakemake.input.model,
    os.path.dirname(snakemake.input.bio),
    snakemake.output.trace,
    batch_size=snakemake.params.batch_size,
    device=snakemake.params.device,
    progress=True,
)
people_gradients(
    snakemake.input.model,
    os.path.dirname(snakemake.input.bio),
    snakemake.output.people,
    run_seed=snakemake.params.run["seed"],
    batch_size=snakemake.params.batch_size,
    device=snakemake.params.device,
)
