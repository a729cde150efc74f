"""Adapter: synthesize the bioS fact world (rules/synthesize.smk)."""

import logging
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
)

from crosstrace.world import synthesize_world  # noqa: E402

synthesize_world(
    snakemake.params.world,
    snakemake.output.bio,
    snakemake.output.qa,
    snakemake.output.people,
)
