"""Adapter: synthesize the bioS fact world (rules/world.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

import os  # noqa: E402

from crosstrace.world import save_world, synthesize_world  # noqa: E402

synthesize_world(
    snakemake.params.world,
    snakemake.output.bio,
    snakemake.output.qa,
    snakemake.output.people,
)
save_world(os.path.dirname(snakemake.output.bio), snakemake.output.dataset)
