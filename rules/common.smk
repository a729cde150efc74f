"""Config loading and validation, wildcard constraints, path helpers and input functions.

The config is validated at parse time against crosstrace/schemas/config.schema.yaml (in the
package, shared with the command line), which also fills in defaults, so every later `config[...]` lookup is safe. Scripts never read the config:
each rule hands them exactly the values they need through `params`, which keeps Snakemake's
params rerun-trigger precise (a plot setting re-runs only the plots).
"""

import os
import sys

from snakemake.exceptions import WorkflowError

from crosstrace.cluster import slurm_problem
from crosstrace.config import primary_k, validated
from crosstrace.errors import ConfigError
from crosstrace.outputs import (
    ABLATION_FILE,
    CONSISTENCY_FILES,
    FIGURES,
    FINAL_MODEL_FILES,
    PREDICTIONS_FILE,
    RANKING_FILES,
    REPORT_TABLES,
    TABLES,
    TRACE_FILES,
    TRAIN_LOG_FILE,
    TRAINING_CONSISTENCY_FILE,
    TRAINING_CURVE_FILE,
    BIO_END_PREDICTIONS_FILE,
    BIO_END_REPRESENTATION_FILE,
    UNIT_ABLATION_FILE,
    PEOPLE_CONTROL_FILE,
    PEOPLE_TRACE_FILES,
)
from crosstrace.training_config import phase_training, trace_section

# The same loader as the `crosstrace` command line: the packaged JSON schema validates the
# merged config and fills every default (a null model entry drops a model of an earlier file).
try:
    validated(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None


def slurm_chosen():
    """Whether this run submits its jobs with the SLURM executor (`--profile slurm`)."""
    executor = getattr(workflow, "executor_plugin", None)
    return executor is not None and executor.cli_prefix == "slurm"


# `--profile slurm` on a machine without SLURM: one line before the first job is submitted.
# onstart runs once in the driver, never in a dry run nor inside a job (jobs run --no-hooks).
onstart:
    problem = slurm_problem() if slurm_chosen() else None
    if problem:
        print(f"crosstrace: error: {problem}", file=sys.stderr, flush=True)
        sys.exit(1)


MODELS = sorted(config["models"])
STRATEGIES = list(config["strategies"])
SEEDS = [int(s) for s in config["seeds"]]


wildcard_constraints:
    model=r"[A-Za-z0-9_-]+",
    strategy=r"stage|mix",
    seed=r"[0-9]+",
    fmt=r"png|pdf|svg",


def res(path):
    """A path under the configured results root (default `results`)."""
    return os.path.join(config["results"], path)


# ---- params: only the config values a job depends on -----------------------------------


def training_params(phase):
    """The `training` config keys used by one phase (bio | qa | mix)."""
    return phase_training(config["training"], phase)


def training_gpus():
    """GPUs a training job asks for: one per process (training.nproc); none on the CPU."""
    return 0 if config["device"] == "cpu" else config["training"]["nproc"]


def trace_params():
    """The `trace` keys training uses (dump_top_percent belongs to the dump)."""
    return trace_section(config["trace"])


def consistency_params():
    """Gradient consistency during training (crosstrace.consistency)."""
    a = config["analysis"]
    return {
        "every": a["consistency_every"],
        "probe_people": a["probe_people"],
        "bio_values": a["probe_bio_values"],
    }


def curve_params():
    """Memorisation and recall during training (crosstrace.curve)."""
    a = config["analysis"]
    return {"points": a["curve_points"], "people": a["curve_people"]}


def train_init_curve(wildcards):
    """The BIO stage's training curve a stage run continues; None for mix."""
    if wildcards.strategy == "stage":
        return os.path.join(train_init(wildcards), TRAINING_CURVE_FILE)
    return None


def train_init_consistency(wildcards):
    """The BIO stage's consistency rows a stage run continues; None for mix."""
    if wildcards.strategy == "stage":
        return os.path.join(train_init(wildcards), TRAINING_CONSISTENCY_FILE)
    return None


def rank_settings():
    """The `analysis` keys that define the top-k sets (crosstrace.rank.RankSettings)."""
    a = config["analysis"]
    return {
        "k_percent": a["k_percent"],
        "rank_modules": a["rank_modules"],
        "rank_params": a["rank_params"],
        "scopes": a["rank_scope"],
        "definitions": a["definitions"],
        "primary": a["primary_definition"],
    }


def job_runtime(rule):
    """Minutes for a job of `rule`: config `resources`, times the attempt (1, 2, 3 …)."""
    return lambda wildcards, attempt: config["resources"][rule]["runtime"] * attempt


def input_mem_mb(rule, per_input_mb):
    """Memory (MB) for a job that reads a run's traces: the config's value, or more where the
    inputs are large (per_input_mb MB per MB of input, measured on a 1B-parameter trace:
    docs/performance.md), times the attempt."""
    base = config["resources"][rule]["mem_mb"]
    return (
        lambda wc, input, attempt: max(base, int(1000 + per_input_mb * input.size_mb))
        * attempt
    )


def job_threads(rule):
    """Threads of a job of `rule` (config `resources`; 1 when not set)."""
    return config["resources"][rule].get("threads", 1)


def job_mem_mb(rule):
    """Memory (MB) for a job of `rule`: config `resources`, times the attempt."""
    return lambda wildcards, attempt: config["resources"][rule]["mem_mb"] * attempt


def phase_of(wildcards):
    return "qa" if wildcards.strategy == "stage" else "mix"


def model_config(wildcards):
    return config["models"][wildcards.model]


# ---- input functions -------------------------------------------------------------------


def world_dir(seed):
    """The world a run of `seed` trains on: results/data for seed 0 (or every seed, with
    world.vary_with_seed false), results/data/seed{seed} otherwise."""
    if int(seed) == 0 or not config["world"]["vary_with_seed"]:
        return res("data")
    return res(f"data/seed{seed}")


def world_files(wildcards):
    """bio, qa and people of the world of the run's seed."""
    folder = world_dir(wildcards.seed)
    return {
        name: os.path.join(folder, f"{name}.parquet")
        for name in ("bio", "qa", "people")
    }


def world_params(wildcards):
    """The world section for the world of `seed` (its world seed shifted by the run's)."""
    seed = int(wildcards.seed) if config["world"]["vary_with_seed"] else 0
    return {**config["world"], "seed": config["world"]["seed"] + seed}


DATA = {name: res(f"data/{name}.parquet") for name in ("bio", "qa", "people")}


def run_dir(model, strategy, seed):
    return res(f"runs/{model}/{strategy}/seed{seed}")


def run_file(name):
    """A file of the run folder, with the {model}/{strategy}/{seed} wildcards."""
    return os.path.join(run_dir("{model}", "{strategy}", "{seed}"), name)


def train_init(wildcards):
    """stage: start from the BIO checkpoint (and its trace); mix: start from θ0 of the seed."""
    if wildcards.strategy == "stage":
        return res(f"runs/{wildcards.model}/stage/seed{wildcards.seed}/bio")
    return res(f"models/{wildcards.model}/seed{wildcards.seed}/base")


def train_init_trace(wildcards):
    """The BIO-stage trace a stage run continues; None for mix."""
    if wildcards.strategy == "stage":
        return os.path.join(train_init(wildcards), TRACE_FILES["trajectory"])
    return None


def trace_root_of(partition):
    """results/trace from a run's partition folder results/trace/model=…/strategy=…/seed=…."""
    return os.path.dirname(os.path.dirname(os.path.dirname(partition)))


def all_runs():
    return [(m, s, seed) for m in MODELS for s in STRATEGIES for seed in SEEDS]


def all_predictions():
    return [os.path.join(run_dir(*run), PREDICTIONS_FILE) for run in all_runs()]


def all_trace_dumps():
    """The runs' partition folders, each holding task=bio/ and task=qa/."""
    return [
        res(f"trace/model={m}/strategy={s}/seed={seed}") for m, s, seed in all_runs()
    ]


def rank_traces(wildcards):
    """{trace_<definition>: trace file} of one run, for the definitions the config ranks."""
    folder = run_dir(wildcards.model, wildcards.strategy, wildcards.seed)
    return {
        f"trace_{d}": os.path.join(folder, TRACE_FILES[d])
        for d in config["analysis"]["definitions"]
    }


def kind_trace_outputs():
    """The train rule's files of the trace kinds beside the gradient one, where trace.kinds
    keeps them: the update decomposition and the people halves."""
    kinds = config["trace"]["kinds"]
    out = {}
    if "update" in kinds:
        out["update_trace"] = run_file(TRACE_FILES["update"])
    if "people" in kinds:
        out["people_trace"] = run_file(PEOPLE_TRACE_FILES["trajectory"])
    return out


def people_definitions():
    """The definitions the different-people control is ranked for: endpoint always (the
    endpoint_trace rule's gradients at θT), trajectory where trace.kinds keeps the halves.
    """
    if "people" in config["trace"]["kinds"]:
        return ["endpoint", "trajectory"]
    return ["endpoint"]


def people_traces(wildcards):
    """{people_trace_<definition>: file} of one run (people_definitions)."""
    folder = run_dir(wildcards.model, wildcards.strategy, wildcards.seed)
    return {
        f"people_trace_{d}": os.path.join(folder, PEOPLE_TRACE_FILES[d])
        for d in people_definitions()
    }


def update_trace_input(wildcards):
    """A run's update-decomposition file (the ablation's removal counterfactuals), if kept."""
    if "update" in config["trace"]["kinds"]:
        folder = run_dir(wildcards.model, wildcards.strategy, wildcards.seed)
        return {"update_trace": os.path.join(folder, TRACE_FILES["update"])}
    return {}


def ranking_files(model, strategy, seed):
    """The ranking stage's three outputs of one run (wildcard strings allowed)."""
    folder = run_dir(model, strategy, seed)
    return {what: os.path.join(folder, name) for what, name in RANKING_FILES.items()}


def run_files(model, strategy, seed):
    """Every input the database reads of one run, by crosstrace.database.RunFiles field."""
    folder = run_dir(model, strategy, seed)
    return {
        "run": {"model": model, "strategy": strategy, "seed": seed},
        "predictions": os.path.join(folder, PREDICTIONS_FILE),
        **ranking_files(model, strategy, seed),
        "ablation": os.path.join(folder, ABLATION_FILE),
        "unit_ablation": os.path.join(folder, UNIT_ABLATION_FILE),
        "people_control": os.path.join(folder, PEOPLE_CONTROL_FILE),
        **consistency_files(model, strategy, seed),
        "training_curve": os.path.join(folder, TRAINING_CURVE_FILE),
        "bio_end_predictions": bio_end_file(
            model, strategy, seed, BIO_END_PREDICTIONS_FILE
        ),
        "bio_end_representation": bio_end_file(
            model, strategy, seed, BIO_END_REPRESENTATION_FILE
        ),
        "train_logs": train_logs(model, strategy, seed),
    }


def train_logs(model, strategy, seed):
    """Every phase's per-step log of a run (two-stage: the BIO stage's, then the QA stage's)."""
    logs = [os.path.join(run_dir(model, strategy, seed), TRAIN_LOG_FILE)]
    if strategy == "stage":
        logs.insert(
            0, os.path.join(res(f"runs/{model}/stage/seed{seed}/bio"), TRAIN_LOG_FILE)
        )
    return logs


def bio_end_file(model, strategy, seed, name):
    """A file of θ_BIO's evaluation of a two-stage run; None for mix."""
    if strategy != "stage":
        return None
    return os.path.join(run_dir(model, "stage", seed), name)


def all_run_inputs():
    """The files of every run the database reads beyond predictions, ranking and ablation."""
    out = []
    for run in all_runs():
        files = run_files(*run)
        out += [
            files["training_curve"],
            files["people_control"],
            *files["train_logs"][-1:],
        ]
        out += [
            files[what]
            for what in ("bio_end_predictions", "bio_end_representation")
            if files[what] is not None
        ]
    return out


def consistency_files(model, strategy, seed):
    """A run's gradient-consistency and θT-analysis outputs, by RunFiles field."""
    folder = run_dir(model, strategy, seed)
    return {
        what: os.path.join(folder, name) for what, name in CONSISTENCY_FILES.items()
    }


def all_consistency_files():
    return [p for run in all_runs() for p in consistency_files(*run).values()]


def all_ranking_files():
    return [p for run in all_runs() for p in ranking_files(*run).values()]


def all_ablations():
    return [
        os.path.join(run_dir(*run), name)
        for run in all_runs()
        for name in (ABLATION_FILE, UNIT_ABLATION_FILE)
    ]


def all_tables():
    return [res(f"tables/{t}.parquet") for t in TABLES]


def all_figures():
    return [
        res(f"figures/{name}.{fmt}")
        for name in FIGURES
        for fmt in config["plots"]["formats"]
    ]


def final_outputs():
    return (
        all_predictions()
        + all_tables()
        + [res("crosstrace.duckdb")]
        + all_figures()
        + [res(f"tables/csv/{t}.csv") for t in REPORT_TABLES]
    )
