"""The Snakemake workflow: lint, formatting, config validation, the DAG, incremental reruns,
and the conda environments."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_workflow, snakemake
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from crosstrace.outputs import FIGURES

GPU_RULES = {
    "train_bio",
    "train",
    "evaluate",
    "evaluate_bio_end",
    "ablate",
    "endpoint_trace",
    "consistency",
}
TRAINING_RULES = {"train_bio", "train"}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A copy of the workflow for parse-only commands (they leave .snakemake/ behind)."""
    return copy_workflow(tmp_path_factory.mktemp("scratch") / "repo")


def job_counts(output: str) -> Counter:
    """Rule -> job count from the `Job stats:` table of a dry run."""
    counts: Counter = Counter()
    if "Nothing to be done" in output:
        return counts
    table = output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def dry_run(cwd: Path, *configfiles: str) -> Counter:
    args = ["-n", "--quiet", "rules"]
    if configfiles:
        args += ["--configfile", *configfiles]
    proc = snakemake(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return job_counts(proc.stdout)


# ---- static checks -----------------------------------------------------------------------


def test_lint_is_clean(scratch):
    proc = snakemake("--lint", cwd=scratch)
    assert proc.returncode == 0, proc.stdout
    assert "Congratulations, your workflow is in a good condition" in proc.stdout, proc.stdout
    assert "Lints for" not in proc.stdout


@pytest.mark.skipif(shutil.which("snakefmt") is None, reason="snakefmt is not installed")
def test_snakefmt_check():
    proc = subprocess.run(
        ["snakefmt", "--check", "Snakefile", "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_rule_has_log_benchmark_and_resources():
    """Each rule with an action declares log, benchmark, runtime and mem_mb; GPU rules gpu=1."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    rules = re.split(r"^rule ", text, flags=re.M)[1:]
    names = set()
    for body in rules:
        name = body.split(":", 1)[0]
        names.add(name)
        for key in ("log:", "benchmark:", "resources:", "runtime=", "mem_mb=", "script:"):
            assert key in body, f"rule {name} lacks {key}"
        # the training rules ask for training.nproc GPUs (crosstrace.distributed), others for 1
        gpu = "gpu=training_gpus()" if name in TRAINING_RULES else "gpu=1"
        assert (gpu in body) == (name in GPU_RULES), f"rule {name}: {gpu} only on GPU rules"
    assert names >= GPU_RULES


# ---- config validation -------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown_top_key": ("colour: blue\n", "'colour' was unexpected"),
    "unknown_nested_key": ("training:\n  learning_rate: 0.1\n", "'learning_rate' was unexpected"),
    "wrong_type": ("world:\n  n_people: many\n", "config key 'world.n_people'"),
    "strategy_joint": ("strategies: [stage, joint]\n", "config key 'strategies.1'"),
    "k_zero": ("analysis:\n  k_percent: [0]\n", "config key 'analysis.k_percent.0'"),
    "k_150": ("analysis:\n  k_percent: [1, 150]\n", "config key 'analysis.k_percent.1'"),
    "unknown_arch": (
        "models:\n  m:\n    tiny: {arch: gpt2, layers: 1, hidden: 8, heads: 1, intermediate: 8}\n",
        "config key 'models.m.tiny.arch'",
    ),
    "model_name_with_slash": (
        "models:\n  'a/b': {pretrained: gpt2}\n",
        "does not match",
    ),
    "dump_top_percent_zero": ("trace:\n  dump_top_percent: 0\n", "trace.dump_top_percent"),
    "trace_disabled": ("trace:\n  enabled: false\n", "config key 'trace.enabled'"),
    "rank_params_bad": ("analysis:\n  rank_params: biases\n", "config key 'analysis.rank_params'"),
    "rank_scope_bad": ("analysis:\n  rank_scope: [local]\n", "config key 'analysis.rank_scope.0'"),
    "consistency_every_zero": (
        "analysis:\n  consistency_every: 0\n",
        "config key 'analysis.consistency_every'",
    ),
    "qa_loss_weight_one": ("training:\n  qa_loss_weight: 1\n", "training.qa_loss_weight"),
    "qa_loss_weight_zero": ("training:\n  qa_loss_weight: 0\n", "training.qa_loss_weight"),
    # keys that do not fit together (crosstrace.config.cross_key_problems)
    "three_people": (
        "world:\n  n_people: 3\n",
        "config key 'analysis.probe_people': the probe batches need 32 trained and 32 held-out "
        "people, but world.qa_train_fraction=0.5 with world.n_people=3 gives 2 trained and 1",
    ),
    "no_held_out_people": (
        "world:\n  n_people: 10\n  qa_train_fraction: 0.99\n",
        "config key 'world.qa_train_fraction': world.qa_train_fraction=0.99 with "
        "world.n_people=10 leaves no OOD test people",
    ),
    "too_few_names": (
        "world:\n  n_people: 100\n  pools: {first_names: 2, middle_names: 3, last_names: 4}\n",
        "config key 'world.n_people': 100 people need as many unique full names, but "
        "world.pools give 2 x 3 x 4 = 24",
    ),
    "pool_beyond_shipped": (
        "world:\n  pools: {majors: 5000}\n",
        "config key 'world.pools.majors': 5000, but only 110 values are shipped",
    ),
    "k_below_one_element_per_tensor": (
        "analysis:\n  k_percent: [0.001]\n",
        "with rank_scope per_tensor, [0.001] % of model.layers.0.self_attn.k_proj.weight (attn.k, "
        "8192 elements) of model 'llama_tiny' is less than one element",
    ),
    "k_below_one_element_global": (
        "analysis:\n  k_percent: [0.00001]\n  rank_scope: [global]\n",
        "config key 'analysis.k_percent': [1e-05] % of the 983040 ranked elements of model "
        "'llama_tiny' is less than one element",
    ),
    "hidden_not_divisible_by_heads": (
        "models:\n  m:\n    tiny: {arch: llama, layers: 1, hidden: 30, heads: 4, intermediate: 8}"
        "\n",
        "config key 'models.m.tiny.hidden': 30 is not divisible by heads (4)",
    ),
    "bos_not_boolean": (
        "models:\n  m:\n    bos: 1\n    tiny: {arch: llama, layers: 1, hidden: 8, heads: 1, "
        "intermediate: 8}\n",
        "models.m",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_refused_with_its_key(tmp_path, case):
    """The loader the Snakefile and the command line share (rules/common.smk calls it at parse
    time; the test below shows the wiring), over config.yaml as Snakemake merges them."""
    from crosstrace.config import load
    from crosstrace.errors import ConfigError

    content, expected = BAD_CONFIGS[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    with pytest.raises(ConfigError) as info:
        load([REPO / "config.yaml", bad])
    assert str(info.value).startswith("Invalid config"), str(info.value)
    assert expected in str(info.value), str(info.value)


# One case of each kind through Snakemake: a schema error, keys that do not fit together, and
# a model the parameter map checks.
PARSE_TIME_CASES = ["unknown_top_key", "three_people", "k_below_one_element_per_tensor"]


@pytest.mark.parametrize("case", PARSE_TIME_CASES)
def test_bad_config_fails_at_parse_time(scratch, tmp_path, case):
    content, expected = BAD_CONFIGS[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    proc = snakemake("-n", "--configfile", str(bad), cwd=scratch)
    assert proc.returncode != 0
    assert "Invalid config" in proc.stdout, proc.stdout[-2000:]
    assert expected in proc.stdout, proc.stdout[-2000:]
    assert "Job stats" not in proc.stdout  # failed before building the DAG
    assert not (scratch / "results").exists()


def test_broken_config_yaml_names_its_line(tmp_path):
    """The Snakefile's own config.yaml, not valid YAML: the file and the line, at parse time.
    (A broken --configfile is read by Snakemake before the Snakefile; see the README.)"""
    root = copy_workflow(tmp_path / "repo")
    (root / "config.yaml").write_text("seeds: [0\nworld: {}\n")
    proc = snakemake("-n", cwd=root)
    assert proc.returncode != 0
    assert "config file 'config.yaml' is not valid YAML: line 2, column 6: expected ',' or ']'" in (
        proc.stdout
    ), proc.stdout[-2000:]
    assert "Job stats" not in proc.stdout


def test_schema_fills_defaults(tmp_path):
    """A config with only `models` gets every other key from the schema's defaults."""
    from snakemake.utils import validate

    cfg = {
        "models": {
            "m": {
                "tiny": {"arch": "llama", "layers": 1, "hidden": 8, "heads": 1, "intermediate": 8}
            }
        }
    }
    validate(cfg, str(REPO / "src/crosstrace/schemas/config.schema.yaml"))
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    for key, value in shipped.items():
        if key != "models":
            assert cfg[key] == value, f"schema default for {key!r} differs from config.yaml"


@pytest.mark.parametrize(
    "configfiles",
    [
        ["config.yaml"],
        ["config/ci.yaml"],
        ["config/paper.yaml"],
        ["config/paper.yaml", "config/paper_multi5_permute.yaml"],
        ["config/seeds.yaml"],
        ["config/bios_single.yaml"],
        ["config/bios_single.yaml", "config/seeds.yaml"],
    ],
)
def test_shipped_configs_are_valid(scratch, configfiles):
    counts = dry_run(scratch, *configfiles)
    assert counts["aggregate"] == 1


# ---- the DAG -----------------------------------------------------------------------------


def test_default_dry_run_lists_the_study(scratch):
    """2 tiny models x 2 strategies x 1 seed; train_bio is shared by the stage runs only."""
    counts = dry_run(scratch)
    runs = 2 * 2 * 1
    assert counts == Counter(
        synthesize=1,
        base_model=2,
        train_bio=2,
        evaluate_bio_end=2,
        train=runs,
        evaluate=runs,
        dump_trace=runs,
        endpoint_trace=runs,
        rank=runs,
        ablate=runs,
        consistency=runs,
        aggregate=1,
        report_tables=1,
        plots=1,
        all=1,
    )


def test_seeds_overlay_triples_the_training(scratch):
    """config/seeds.yaml: seeds 0, 1, 2; one θ0 per model and seed, 3x every per-run job."""
    one, three = dry_run(scratch), dry_run(scratch, "config/seeds.yaml")
    for rule in ("base_model", "train_bio", "train", "evaluate", "dump_trace", "ablate"):
        assert three[rule] == 3 * one[rule], rule
    assert three["base_model"] == 2 * 3
    proc = snakemake("-n", "--configfile", "config/seeds.yaml", cwd=scratch)
    for model in ("llama_tiny", "neox_tiny"):
        for seed in (0, 1, 2):
            assert f"models/{model}/seed{seed}/base" in proc.stdout
    # the same seeds from the command line (Snakemake passes the list items as strings)
    cli = snakemake("-n", "--quiet", "rules", "--config", "seeds=[0,1,2]", cwd=scratch)
    assert cli.returncode == 0, cli.stdout[-3000:]
    assert job_counts(cli.stdout) == three


def test_people_kind_adds_the_trajectory_people_trace_to_train_and_rank(scratch, tmp_path):
    """trace.kinds with people: the train rules write trace_people.safetensors, and the rank
    rule reads it beside the endpoint people trace; the same jobs, no more."""
    overlay = tmp_path / "people.yaml"
    overlay.write_text("trace: {kinds: [gradient, update, people]}\n")
    assert dry_run(scratch, str(overlay)) == dry_run(scratch)
    proc = snakemake("-n", "--configfile", str(overlay), cwd=scratch)
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout)  # one block per job
    train = [j for j in jobs if j.startswith(("rule train:", "localrule train:")) and "mix" in j]
    rank = [j for j in jobs if j.startswith(("rule rank:", "localrule rank:")) and "mix" in j]
    assert train and all(
        "mix/seed0/trace_people.safetensors" in j.split("output:")[1] for j in train
    )
    assert rank and all("mix/seed0/trace_people.safetensors" in j.split("output:")[0] for j in rank)
    plain = snakemake("-n", cwd=scratch)
    assert "trace_people.safetensors" not in plain.stdout


def test_paper_configs_headline_single_and_multi5_permute_overlay():
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())["world"]
    assert (paper["bios_per_person"], paper["permute"], paper["fullname"]) == (1, False, False)
    multi = yaml.safe_load((REPO / "config/paper_multi5_permute.yaml").read_text())["world"]
    assert (multi["bios_per_person"], multi["permute"]) == (5, True)


def test_paper_config_sizes_the_jobs(scratch):
    proc = snakemake("-n", "--configfile", "config/paper.yaml", cwd=scratch)
    assert proc.returncode == 0, proc.stdout[-3000:]
    train = re.search(r"rule train:(?:.|\n)*?resources: ([^\n]*)", proc.stdout).group(1)
    assert "mem_mb=128000" in train and "runtime=720" in train, train
    base = re.search(r"rule base_model:(?:.|\n)*?resources: ([^\n]*)", proc.stdout).group(1)
    assert "mem_mb=48000" in base, base


def test_paper_config_replaces_the_tiny_models(scratch):
    proc = snakemake("-n", "--configfile", "config/paper.yaml", cwd=scratch)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "model=llama_3_2_1b" in proc.stdout and "model=pythia_2_8b" in proc.stdout
    assert "tiny" not in " ".join(re.findall(r"wildcards: .*", proc.stdout))


def test_gpu_resource_does_not_block_a_local_run(ci_run):
    """The GPU rules declare gpu=1, yet `--cores 2` without --resources ran them (on the CPU)."""
    log = (ci_run / "run.log").read_text()
    assert re.search(r"rule train:(.|\n)*?resources: .*gpu=1", log), "train did not declare gpu=1"
    assert (ci_run / "results/benchmarks/train/llama_tiny/mix/seed0.tsv").is_file()


# ---- incremental reruns on a finished tree (the CI study, run once for real) ---------------


def test_outputs_land_where_the_contract_says(ci_run):
    r = ci_run / "results"
    for path in [
        "data/bio.parquet",
        "data/qa.parquet",
        "data/people.parquet",
        "data/world/dataset_dict.json",
        "models/llama_tiny/seed0/base/config.json",
        "runs/llama_tiny/stage/seed0/bio/trace.safetensors",
        "runs/llama_tiny/stage/seed0/bio/train_log.parquet",
        "runs/neox_tiny/mix/seed0/final/config.json",
        "runs/neox_tiny/mix/seed0/trace.safetensors",
        "runs/neox_tiny/stage/seed0/predictions.parquet",
        "runs/neox_tiny/stage/seed0/ablation.parquet",
        "runs/neox_tiny/stage/seed0/ranking.parquet",
        "runs/neox_tiny/stage/seed0/ranking_cells.parquet",
        "runs/llama_tiny/mix/seed0/endpoint_trace.safetensors",
        "runs/llama_tiny/mix/seed0/people_trace.safetensors",
        "runs/llama_tiny/mix/seed0/people_control.parquet",
        "runs/llama_tiny/stage/seed0/bio_end_representation.parquet",
        "tables/accuracy.parquet",
        "tables/ablation.parquet",
        "crosstrace.duckdb",
        "figures/accuracy.png",
    ]:
        assert (r / path).exists(), path
    parts = list(
        (r / "trace/model=llama_tiny/strategy=stage/seed=0/task=qa").glob("part-*.parquet")
    )
    assert parts


def test_finished_tree_has_nothing_to_do(ci_run):
    proc = snakemake("-n", "--configfile", "config/ci.yaml", cwd=ci_run)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Nothing to be done" in proc.stdout, proc.stdout[-3000:]


def test_changing_a_plot_setting_reruns_only_the_plots(ci_run, tmp_path):
    overlay = tmp_path / "dpi.yaml"
    overlay.write_text("plots:\n  dpi: 61\n")
    assert dry_run(ci_run, "config/ci.yaml", str(overlay)) == Counter(plots=1, all=1)


def test_adding_a_seed_adds_only_the_new_runs(ci_run, tmp_path):
    overlay = tmp_path / "seed.yaml"
    overlay.write_text("seeds: [0, 1]\n")
    new_runs = 2 * 2  # models x strategies, for seed 1 only
    assert dry_run(ci_run, "config/ci.yaml", str(overlay)) == Counter(
        synthesize_seed=1,  # seed 1's own world (world.vary_with_seed)
        base_model=2,  # θ0 is per model and seed
        train_bio=2,
        evaluate_bio_end=2,
        train=new_runs,
        evaluate=new_runs,
        dump_trace=new_runs,
        endpoint_trace=new_runs,
        rank=new_runs,
        ablate=new_runs,
        consistency=new_runs,
        aggregate=1,
        report_tables=1,
        plots=1,
        all=1,
    )


def test_adding_a_model_adds_only_its_jobs(ci_run, tmp_path):
    overlay = tmp_path / "model.yaml"
    overlay.write_text(
        "models:\n  extra_tiny:\n    tiny: {arch: llama, layers: 1, hidden: 16, heads: 2, "
        "intermediate: 32}\n"
    )
    assert dry_run(ci_run, "config/ci.yaml", str(overlay)) == Counter(
        base_model=1,
        train_bio=1,
        evaluate_bio_end=1,
        train=2,
        evaluate=2,
        dump_trace=2,
        endpoint_trace=2,
        rank=2,
        ablate=2,
        consistency=2,
        aggregate=1,
        report_tables=1,
        plots=1,
        all=1,
    )


@pytest.mark.parametrize(
    "overlay",
    [
        "analysis:\n  k_percent: [1, 2]\n",
        "analysis:\n  rank_modules: [attn.v, attn.o]\n",
        "analysis:\n  rank_scope: [global]\n",
    ],
)
def test_changing_the_ranking_reruns_ranking_and_what_follows(ci_run, tmp_path, overlay):
    """k_percent, rank_modules and rank_scope belong to the ranking: training, the dump and
    the endpoint gradients (with the different-people control's) stay."""
    path = tmp_path / "rank.yaml"
    path.write_text(overlay)
    runs = 2 * 2
    assert dry_run(ci_run, "config/ci.yaml", str(path)) == Counter(
        rank=runs,
        ablate=runs,
        consistency=runs,
        aggregate=1,
        report_tables=1,
        plots=1,
        all=1,
    )


def test_changing_qa_epochs_keeps_the_shared_bio_stage(ci_run, tmp_path):
    """qa_epochs is a QA-stage setting: the BIO stage and the mixed runs stay."""
    overlay = tmp_path / "qa.yaml"
    overlay.write_text("training:\n  qa_epochs: 2\n")
    counts = dry_run(ci_run, "config/ci.yaml", str(overlay))
    assert counts["train_bio"] == 0
    assert counts["train"] == 2  # the two stage runs, not the mix runs
    assert counts["synthesize"] == counts["base_model"] == 0


def test_summary_fills_every_headline_table_from_a_real_run(ci_run):
    """`crosstrace summary` on the CI study's database: each query runs against the real
    tables and returns rows (the unit tests' database has no consistency records)."""
    from crosstrace.database import connect
    from crosstrace.headline import headline_tables

    con = connect(ci_run / "results/crosstrace.duckdb")
    tables = headline_tables(con)
    con.close()
    assert len(tables) >= 9
    for caption, df in tables:
        assert len(df) > 0, caption
        assert df.iloc[:, 3:].notna().any().any(), caption  # numbers beside the keys
    proc = subprocess.run(
        [sys.executable, "-m", "crosstrace.cli", "summary", "results/crosstrace.duckdb"],
        cwd=ci_run, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n| ") > 20


def test_report_gathers_every_figure_with_its_caption(ci_run):
    proc = snakemake(
        "--report", "results/report.html", "--configfile", "config/ci.yaml", cwd=ci_run
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "ERROR" not in proc.stdout, proc.stdout[-3000:]  # docutils errors in captions
    html = (ci_run / "results/report.html").read_text()
    for stem in FIGURES:
        assert f"{stem}.png" in html, stem
        caption = (REPO / f"workflow/report/{stem}.rst").read_text().split()[0]
        assert caption in html, stem
    for caption in (REPO / "workflow/report/tables").glob("*.rst"):
        assert f"{caption.stem}.csv" in html, caption.stem  # every table, with its caption


# ---- conda environments ------------------------------------------------------------------

# conda-forge names of pip packages, where they differ
CONDA_TO_PIP = {"pytorch": "torch", "python-duckdb": "duckdb", "matplotlib-base": "matplotlib"}
# the driver's packages: Snakemake itself runs outside the job environments
DRIVER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}
# Floors raised for a reason: a lower version breaks the install or a command.
KNOWN_FLOORS = {
    "python": "3.11",  # Snakemake 9; the jobs import datetime.UTC (3.11)
    "snakemake": "9.0",
    "snakemake-executor-plugin-slurm": "2.0.3",  # 2.0.1, 2.0.2: every command needs sacct
    "transformers": "4.56",  # from_pretrained(dtype=...)
    "torch": "2.4",  # FSDP2 needs 2.6, checked when training.distributed is fsdp
}


def _requirements() -> dict[str, Requirement]:
    """pyproject.toml's dependencies by (lower-case) name."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def _floor(spec: SpecifierSet) -> str:
    """The version of the one `>=` clause of ``spec``."""
    floors = [s.version for s in spec if s.operator == ">="]
    assert len(floors) == 1, f"{spec}: one >= floor expected"
    return floors[0]


def _conda_spec(dep: str) -> tuple[str, SpecifierSet]:
    """("torch", SpecifierSet(">=2.4")) from a conda-forge entry such as "pytorch >=2.4"."""
    name, _, spec = dep.strip().partition(" ")
    return CONDA_TO_PIP.get(name, name), SpecifierSet(spec.replace(" ", ""))


def test_declared_floors_are_the_known_ones():
    """pyproject.toml's floors, as versions: lowering one of these breaks something."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = _requirements()
    assert _floor(SpecifierSet(project["requires-python"])) == KNOWN_FLOORS["python"]
    for name, floor in KNOWN_FLOORS.items():
        if name != "python":
            assert _floor(requirements[name].specifier) == floor, name
    assert "reports" in requirements["snakemake"].extras  # pygments, for --report
    readme = (REPO / "README.md").read_text()
    plugin = KNOWN_FLOORS["snakemake-executor-plugin-slurm"]
    assert f"snakemake-executor-plugin-slurm ≥ {plugin}" in readme
    assert f"Python ≥ {KNOWN_FLOORS['python']}" in readme


def test_conda_envs_pin_the_pyproject_versions():
    """Every job environment: the same packages with the same bounds, the same Python floor."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {name: r.specifier for name, r in _requirements().items() if name not in DRIVER_ONLY}
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        assert spec["channels"][0] == "conda-forge"
        got = dict(_conda_spec(d) for d in spec["dependencies"] if isinstance(d, str))
        python = got.pop("python")
        assert _floor(python) == _floor(SpecifierSet(project["requires-python"])), env.name
        assert set(got) == set(wanted), f"{env.name}: {set(wanted) ^ set(got)}"
        for name, specifier in wanted.items():
            assert got[name] == specifier, f"{env.name}: {name} {got[name]} vs {specifier}"


def test_every_rule_uses_an_existing_env():
    for smk in (REPO / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: {env}"


# ---- the SLURM profile (parsed here; run for real in test_slurm.py) -----------------------


def test_profile_slurm_dry_run_from_the_repo_root(scratch):
    """`snakemake --profile slurm -n`, typed as is, with the installed Snakemake version."""
    proc = snakemake("--profile", "slurm", "-n", cwd=scratch)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Using profile slurm" in proc.stdout, proc.stdout[-3000:]
    assert "Job stats" in proc.stdout


# every SLURM client command (the SLURM plugin looks for sinfo when it is imported)
SLURM_COMMANDS = ("sbatch", "squeue", "sacct", "sinfo", "scontrol", "srun", "scancel", "salloc")


def path_without_slurm(tmp_path: Path) -> str:
    """$PATH with every folder that holds a SLURM command replaced by a copy of links to its
    other entries (where SLURM is installed, it is then not found)."""
    folders = []
    for i, folder in enumerate(os.environ["PATH"].split(os.pathsep)):
        if not any((Path(folder) / c).exists() for c in SLURM_COMMANDS):
            folders.append(folder)
            continue
        shadow = tmp_path / f"bin{i}"
        shadow.mkdir()
        for entry in Path(folder).iterdir():
            if entry.name not in SLURM_COMMANDS:
                (shadow / entry.name).symlink_to(entry)
        folders.append(str(shadow))
    return os.pathsep.join(folders)


def test_profile_slurm_without_slurm_stops_before_submitting(tmp_path):
    """`snakemake --profile slurm` where SLURM is not installed: one line, no job submitted."""
    root = copy_workflow(tmp_path / "repo")
    env = {**os.environ, "PATH": path_without_slurm(tmp_path)}
    proc = snakemake("--profile", "slurm", "--configfile", "config/ci.yaml", cwd=root, env=env)
    assert proc.returncode != 0
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("crosstrace: error: SLURM was not found on this machine (no sbatch")
    assert last.endswith("`snakemake --cores all`"), last
    assert "Error in rule" not in proc.stdout and "Traceback" not in proc.stdout, proc.stdout
    assert not (root / "results").exists()
    assert not list((root / ".snakemake" / "locks").glob("*"))  # the lock was released


def test_slurm_check_needs_sbatch_and_a_status_command(tmp_path):
    from crosstrace.cluster import slurm_problem

    def with_commands(*names: str) -> str:
        folder = tmp_path / "-".join(names or ("none",))
        folder.mkdir()
        for name in names:
            (folder / name).write_text("#!/bin/sh\n")
            (folder / name).chmod(0o755)
        return str(folder)

    assert slurm_problem(with_commands("sbatch", "squeue")) is None
    assert slurm_problem(with_commands("sbatch", "sacct")) is None
    assert "no squeue, sacct on PATH" in slurm_problem(with_commands("sbatch"))
    assert "no sbatch on PATH" in slurm_problem(with_commands("squeue", "sacct"))


def test_slurm_profile_is_found_from_the_repo_root():
    link = REPO / "slurm"
    assert link.is_symlink() and link.resolve() == (REPO / "profiles/slurm").resolve()
    profile = yaml.safe_load((link / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-requeue"] is True and profile["retries"] >= 1
    assert profile["slurm-logdir"]
    for rule in GPU_RULES:
        res = profile["set-resources"][rule]
        # a gpu value here would override the training rules' own training.nproc GPUs
        assert res.get("gpu") == (None if rule in TRAINING_RULES else 1), rule
        assert res["cpus_per_task"] >= 1, rule
        assert "runtime" not in res and "mem_mb" not in res, rule  # the config sizes jobs


# ---- one config loader for the workflow and the command line -----------------------------


def test_cli_and_snakemake_see_the_same_validated_config(tmp_path):
    """Each config section, through Snakemake (rules/common.smk) and through the CLI loader."""
    from crosstrace.cli import load_config

    overlay = tmp_path / "cfg.yaml"
    overlay.write_text(
        "world: {n_people: 50}\ntraining: {lr: 0.002}\n"
        "analysis: {k_percent: [2], probe_people: 8}\n"
        "models: {m: {tiny: {arch: llama, layers: 1, hidden: 8, heads: 1, intermediate: 8}}}\n"
    )
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        f'configfile: "{overlay}"\n'
        f'include: "{REPO / "rules" / "common.smk"}"\n'
        "import json\n"
        f'json.dump(config, open("{tmp_path / "seen.json"}", "w"))\n'
        "rule all:\n    input: []\n"
    )
    proc = snakemake("-n", "-s", str(snakefile), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    import json

    seen = json.loads((tmp_path / "seen.json").read_text())
    cli = json.loads(json.dumps(load_config(str(overlay))))
    assert set(seen) == set(cli)
    for section in seen:
        assert seen[section] == cli[section], section
    assert cli["training"]["lr"] == 0.002 and cli["training"]["mix_epochs"] > 0  # default filled


@pytest.mark.skipif(shutil.which("python3") is None, reason="no python3 for a venv")
def test_fresh_venv_resolves_the_declared_floors(tmp_path):
    """The README's install into a new venv with every dependency held at its declared floor
    (pip's dry run): the floors install together, and pip takes exactly those versions."""
    floors = {name: _floor(r.specifier) for name, r in _requirements().items() if name != "torch"}
    constraints = tmp_path / "floors.txt"
    constraints.write_text("".join(f"{name}=={v}\n" for name, v in floors.items()))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    proc = subprocess.run(
        [*pip, "install", "--dry-run", "--quiet", "--report", str(tmp_path / "r.json"),
         "-c", str(constraints), "torch==2.13.0", f"{REPO}[test]"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    got = {i["metadata"]["name"].lower(): i["metadata"]["version"]
           for i in json.loads((tmp_path / "r.json").read_text())["install"]}  # fmt: skip
    for name, floor in floors.items():
        assert Version(got[name]) == Version(floor), f"{name}: {got[name]}, floor {floor}"
    assert "pygments" in got  # snakemake[reports]
    assert got["torch"].startswith("2.13.0")  # the README's pin (2.13.0+cpu where it lies locally)
