"""Adapter: the seaborn figures (rules/plots.smk)."""

import logging
import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115
logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
)

from crosstrace.plots import make_figures  # noqa: E402

# Writes <out_dir>/<figure>.<format> for every figure: exactly this rule's outputs.
make_figures(
    snakemake.params.tables_dir,
    snakemake.params.out_dir,
    formats=snakemake.params.formats,
    dpi=snakemake.params.dpi,
    style=snakemake.params.style,
)
