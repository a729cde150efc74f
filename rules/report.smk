# The HTML report is built by Snakemake itself after a run, not by a rule:
#
#     snakemake --report results/report.html
#
# A rule cannot call `snakemake --report` on the workflow that is running it (the working
# directory is locked, and the report needs the finished run's metadata). The figures are
# registered with report(...) and captions in rules/plots.smk; this page is the report's
# front matter.


report: "../workflow/report/workflow.rst"
