"""crosstrace: cross-task gradient traces of two-stage vs mixed training.

Run the default tiny study on this machine:   snakemake --cores all
On a SLURM cluster:                           snakemake --profile slurm
HTML report after a run:                      snakemake --report results/report.html
"""

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from crosstrace.config import read_yaml
from crosstrace.errors import ConfigError

min_version("9.0")

# Snakemake's own message for a config file that is no YAML names neither file nor line.
try:
    read_yaml("config.yaml")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/world.smk"
include: "rules/models.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/dump.smk"
include: "rules/posthoc.smk"
include: "rules/rank.smk"
include: "rules/final_model.smk"
include: "rules/database.smk"
include: "rules/ablate.smk"
include: "rules/plots.smk"
include: "rules/report.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        final_outputs(),
