"""Adapter: the analysis tables as CSV for the HTML report (rules/report.smk)."""

from crosstrace.joblog import start_job

start_job(snakemake.log[0])

from crosstrace.report import tables_to_csv  # noqa: E402

tables_to_csv({name: snakemake.input[name] for name in snakemake.params.names},
              {name: snakemake.output[name] for name in snakemake.params.names})  # fmt: skip
