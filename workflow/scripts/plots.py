"""Adapter: the seaborn figures (rules/plots.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

from crosstrace.plots import make_figures  # noqa: E402

# Writes <out_dir>/<figure>.<format> for every figure: exactly this rule's outputs.
make_figures(
    snakemake.params.tables_dir,
    snakemake.params.out_dir,
    formats=snakemake.params.formats,
    dpi=snakemake.params.dpi,
    style=snakemake.params.style,
)
