# The HTML report is built by Snakemake itself after a run, not by a rule:
#
#     snakemake --report results/report.html
#
# A rule cannot call `snakemake --report` on the workflow that is running it (the working
# directory is locked, and the report needs the finished run's metadata). The figures are
# registered with report(...) and captions in rules/plots.smk; this page is the report's
# front matter.


report: "../workflow/report/workflow.rst"


rule report_tables:
    """The analysis tables as CSV, registered for the HTML report beside the figures."""
    input:
        **{t: res(f"tables/{t}.parquet") for t in REPORT_TABLES},
    output:
        **{
            t: report(
                res(f"tables/csv/{t}.csv"),
                caption=f"../workflow/report/tables/{t}.rst",
                category="Tables",
                labels={"table": t},
            )
            for t in REPORT_TABLES
        },
    log:
        res("logs/report_tables.log"),
    benchmark:
        res("benchmarks/report_tables.tsv")
    conda:
        "../envs/crosstrace.yaml"
    resources:
        runtime=job_runtime("plots"),
        mem_mb=job_mem_mb("plots"),
    params:
        names=REPORT_TABLES,
    script:
        "../workflow/scripts/report.py"
