"""Bad input: a clear message naming the problem, a non-zero exit, nothing half-written.

Most cases go through the CLI (``crosstrace.cli.main`` in-process, one through the installed
entry point in a subprocess) and check the exit code, the message and that the output path
does not exist afterwards. Config-schema cases (unknown keys, wrong types, an unknown
architecture, k out of range, ...) are covered at parse time by
``tests/test_workflow.py::test_bad_config_fails_at_parse_time`` and not repeated here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaForCausalLM, LlamaModel

from crosstrace import cli
from crosstrace.dump import dump_trace
from crosstrace.errors import CrosstraceError, InputDataError
from crosstrace.models import build_base
from crosstrace.tracefile import load_trace, save_trace
from crosstrace.train import train_run
from crosstrace.world import read_bio, read_qa, synthesize_world

# Bad inputs this module tries (one per case below; the schema cases of test_workflow.py
# come on top). Kept in step by test_bad_input_count.
N_BAD_INPUTS = 31

WORLD = {
    "seed": 0,
    "n_people": 24,
    "templates_per_attribute": 2,
    "pools": {
        "first_names": 20,
        "middle_names": 20,
        "last_names": 20,
        "birth_cities": 10,
        "universities": 10,
        "majors": 5,
        "employers": 10,
    },
}
TINY = {"arch": "llama", "layers": 1, "hidden": 16, "heads": 2, "intermediate": 32}
TRAINING = {"batch_size": 8, "mix_epochs": 1, "checkpoint_every": 100000}

TRIED: list[str] = []


def tried(name: str) -> None:
    TRIED.append(name)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    synthesize_world(WORLD, data / "bio.parquet", data / "qa.parquet", data / "people.parquet")
    build_base({"tiny": TINY}, data, root / "base", seed=0, bos=True)
    return root


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def assert_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "crosstrace: error: " in err, err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err


def train_argv(cfg: str, root: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("train", "--config", cfg, "--phase", "mix", "--init", str(root / "base")),
        *("--data-dir", str(data), "--out", str(out / "final")),
        *("--trace-out", str(out / "trace.safetensors"), "--log-out", str(out / "log.parquet")),
        *extra,
    ]


def assert_nothing_written(out: Path) -> None:
    for name in ("final", "trace.safetensors", "log.parquet", "final.checkpoints"):
        assert not (out / name).exists(), name
    if out.exists():
        assert not [p for p in out.iterdir() if ".tmp-" in p.name]


# ---- config ------------------------------------------------------------------------------


def test_config_file_missing(capsys, tmp_path):
    tried("config file missing")
    code, err = run_cli(capsys, "synthesize", "--config", str(tmp_path / "nope.yaml"),
                        "--out-dir", str(tmp_path / "data"))  # fmt: skip
    assert_error(code, err, "cannot read config file", "nope.yaml")
    assert not (tmp_path / "data").exists()


def test_config_not_valid_yaml_names_the_line(capsys, tmp_path):
    tried("config not valid YAML")
    bad = tmp_path / "bad.yaml"
    bad.write_text("world:\n  n_people: 30\n\tseed: 1\n")
    code, err = run_cli(capsys, "check-config", "config.yaml", str(bad))
    assert_error(code, err, f"config file '{bad}' is not valid YAML: line 3, column 1: found "
                 "character '\\t' that cannot start any token")  # fmt: skip
    assert len(err.strip().splitlines()) == 1, err


def test_check_config_of_the_shipped_overlay(capsys):
    from conftest import REPO

    files = [str(REPO / "config.yaml"), str(REPO / "config" / "ci.yaml")]
    capsys.readouterr()
    assert cli.main(["check-config", *files]) == 0
    assert "config OK" in capsys.readouterr().out


def test_config_not_yaml_mapping(capsys, tmp_path):
    tried("config not a YAML mapping")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    code, err = run_cli(
        capsys, "synthesize", "--config", str(bad), "--out-dir", str(tmp_path / "d")
    )
    assert_error(code, err, "must hold a mapping")
    assert not (tmp_path / "d").exists()


def test_unknown_training_key(capsys, base, tmp_path):
    tried("unknown training key")
    cfg = write_config(tmp_path / "c.yaml", {"training": {**TRAINING, "learning_rate": 1}})
    code, err = run_cli(capsys, *train_argv(cfg, base, base / "data", tmp_path / "run"))
    assert_error(code, err, "config key 'training'", "'learning_rate' was unexpected")
    assert_nothing_written(tmp_path / "run")


def test_unknown_architecture(capsys, base, tmp_path):
    tried("unknown architecture")
    cfg = write_config(tmp_path / "c.yaml", {"models": {"m": {"tiny": {**TINY, "arch": "gpt2"}}}})
    out = tmp_path / "base"
    code, err = run_cli(capsys, "build-base", "--config", cfg, "--model", "m",
                        "--data-dir", str(base / "data"), "--out", str(out))  # fmt: skip
    assert_error(code, err, "config key 'models.m.tiny.arch'", "'gpt2' is not one of")
    assert not out.exists()


def test_unknown_model_name(capsys, base, tmp_path):
    tried("model not in config")
    tiny = {"models": {"m": {"tiny": TINY}}, "analysis": {"k_percent": [5]}}
    cfg = write_config(tmp_path / "c.yaml", tiny)
    out = tmp_path / "base"
    code, err = run_cli(capsys, "build-base", "--config", cfg, "--model", "other",
                        "--data-dir", str(base / "data"), "--out", str(out))  # fmt: skip
    assert_error(code, err, "model 'other' is not in the config")
    assert not out.exists()


def test_hub_id_offline_without_cache(base, tmp_path):
    """Through the installed entry point, in a fresh process with HF_HUB_OFFLINE=1."""
    tried("hub id, no network, no cache")
    cfg = write_config(tmp_path / "c.yaml", {"models": {"m": {"pretrained": "no-org/no-model"}}})
    out = tmp_path / "base"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "crosstrace.cli", "build-base", "--config", cfg, "--model", "m",
         "--data-dir", str(base / "data"), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert_error(proc.returncode, proc.stderr, "'no-org/no-model'", "login node",
                 "`hf download no-org/no-model`")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("kind", ["file", "folder without config.json"])
def test_pretrained_path_that_is_no_model_folder(capsys, base, tmp_path, kind):
    tried(f"pretrained: a {kind}")
    local = tmp_path / "weights"
    if kind == "file":
        local.write_bytes(b"not a model")
    else:
        local.mkdir()
        (local / "model.safetensors").write_bytes(b"")
    cfg = write_config(tmp_path / "c.yaml", {"models": {"m": {"pretrained": str(local)}}})
    out = tmp_path / "base"
    code, err = run_cli(capsys, "build-base", "--config", cfg, "--model", "m",
                        "--data-dir", str(base / "data"), "--out", str(out))  # fmt: skip
    assert_error(code, err, f"models.*.pretrained: '{local}' is a {kind}, not a Hugging Face "
                 "model folder", "config.json")  # fmt: skip
    assert "hf download" not in err.split("(as")[0] and "hub cannot be reached" not in err
    assert not out.exists()


# ---- input data --------------------------------------------------------------------------


def test_missing_parquet(capsys, base, tmp_path):
    tried("missing parquet")
    data = tmp_path / "data"
    data.mkdir()
    (data / "bio.parquet").write_bytes((base / "data" / "bio.parquet").read_bytes())
    cfg = write_config(tmp_path / "c.yaml", {"training": TRAINING})
    code, err = run_cli(capsys, *train_argv(cfg, base, data, tmp_path / "run"))
    assert_error(code, err, "qa file", str(data / "qa.parquet"))
    assert_nothing_written(tmp_path / "run")


def test_truncated_parquet(capsys, base, tmp_path):
    tried("truncated parquet")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("bio.parquet", "qa.parquet"):
        (data / name).write_bytes((base / "data" / name).read_bytes())
    qa = data / "qa.parquet"
    qa.write_bytes(qa.read_bytes()[: qa.stat().st_size // 2])
    with pytest.raises(InputDataError, match="cannot read the qa file"):
        read_qa(qa)
    cfg = write_config(tmp_path / "c.yaml", {"training": TRAINING})
    code, err = run_cli(capsys, *train_argv(cfg, base, data, tmp_path / "run"))
    assert_error(code, err, "cannot read the qa file", str(qa))
    assert_nothing_written(tmp_path / "run")
    # evaluate reads the same file
    out = tmp_path / "pred.parquet"
    code, err = run_cli(capsys, "evaluate", "--config", cfg, "--model-dir", str(base / "base"),
                        "--qa", str(qa), "--out", str(out))  # fmt: skip
    assert_error(code, err, "cannot read the qa file")
    assert not out.exists()


def test_parquet_with_wrong_columns(base, tmp_path):
    tried("parquet lacking columns")
    wrong = tmp_path / "bio.parquet"
    wrong.write_bytes((base / "data" / "people.parquet").read_bytes())
    with pytest.raises(InputDataError, match=r"lacks columns \['text'\]"):
        read_bio(wrong)


def test_missing_model_folder(capsys, base, tmp_path):
    tried("missing model folder")
    cfg = write_config(tmp_path / "c.yaml", {})
    out = tmp_path / "pred.parquet"
    code, err = run_cli(capsys, "evaluate", "--config", cfg, "--model-dir", str(tmp_path / "m"),
                        "--qa", str(base / "data" / "qa.parquet"), "--out", str(out))  # fmt: skip
    assert_error(code, err, "is not a model folder")
    assert not out.exists()


def test_truncated_trace(base, tmp_path):
    tried("truncated trace file")
    path = tmp_path / "trace.safetensors"
    save_trace(path, {"bio": {"w": torch.ones(64)}, "qa": {"w": torch.ones(64)}})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputDataError, match="unreadable or truncated"):
        load_trace(path)


# ---- world -------------------------------------------------------------------------------


def test_empty_world(capsys, tmp_path):
    tried("empty world")
    cfg = write_config(tmp_path / "c.yaml", {"world": {**WORLD, "n_people": 0}})
    out = tmp_path / "data"
    code, err = run_cli(capsys, "synthesize", "--config", cfg, "--out-dir", str(out))
    assert_error(code, err, "config key 'world.n_people'", "0 is less than the minimum of 1")
    assert not out.exists() or not list(out.iterdir())


def test_qa_split_without_ood_people(capsys, tmp_path):
    tried("QA split with no OOD people")
    world = {**WORLD, "n_people": 3, "qa_train_fraction": 0.9}
    cfg = write_config(tmp_path / "c.yaml", {"world": world})
    out = tmp_path / "data"
    code, err = run_cli(capsys, "synthesize", "--config", cfg, "--out-dir", str(out))
    assert_error(code, err, "leaves no OOD test people", "qa_train_fraction=0.9")
    assert not out.exists() or not list(out.iterdir())


def test_world_too_small_for_the_probe_people(capsys, tmp_path):
    """A check across keys, before any data exists: the same line as `snakemake -n`."""
    tried("probe people beyond the world's people")
    cfg = write_config(tmp_path / "c.yaml", {"world": {**WORLD, "n_people": 3}})
    out = tmp_path / "data"
    code, err = run_cli(capsys, "synthesize", "--config", cfg, "--out-dir", str(out))
    assert_error(code, err, "config key 'analysis.probe_people'", "gives 2 trained and 1 held-out",
                 "set analysis.probe_people to at most 1")  # fmt: skip
    assert not out.exists()


# ---- k out of range ----------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 150])
def test_analysis_k_out_of_range(k):
    """The ranking settings (read by rank, ablation and database alike) refuse k ∉ (0, 100]."""
    from crosstrace.errors import ConfigError
    from crosstrace.rank import RankSettings

    tried(f"analysis k_percent={k}")
    with pytest.raises(ConfigError, match=r"analysis.k_percent: every k must be in \(0, 100\]"):
        RankSettings(k_percent=[1, k], rank_modules=["attn.q"])


def test_dump_top_percent_out_of_range(base, tmp_path):
    tried("dump top_percent=0")
    trace = tmp_path / "trace.safetensors"
    save_trace(trace, {"bio": {"w": torch.ones(4)}, "qa": {"w": torch.ones(4)}})
    with pytest.raises(InputDataError, match=r"top_percent must be in \(0, 100\]"):
        dump_trace(trace, base / "base", tmp_path / "dump", model="m", strategy="s", seed=0,
                   top_percent=0)  # fmt: skip
    assert not (tmp_path / "dump").exists()


# ---- devices and memory ------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(capsys, base, tmp_path):
    tried("device: cuda without CUDA")
    cfg = write_config(tmp_path / "c.yaml", {"training": TRAINING, "device": "cuda"})
    code, err = run_cli(capsys, *train_argv(cfg, base, base / "data", tmp_path / "run"))
    assert_error(code, err, "'cuda' was requested but CUDA is not available", "device: auto")
    assert_nothing_written(tmp_path / "run")


def test_unknown_device(capsys, base, tmp_path):
    tried("unknown device name")
    cfg = write_config(tmp_path / "c.yaml", {"training": TRAINING})
    code, err = run_cli(
        capsys, *train_argv(cfg, base, base / "data", tmp_path / "run", "--device", "tpu")
    )
    assert_error(code, err, "device 'tpu' is not one of auto, cpu, cuda")
    assert_nothing_written(tmp_path / "run")


def _oom(*_args, **_kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_in_training(base, tmp_path, monkeypatch):
    tried("GPU out of memory (training)")
    # training runs the base model and the lm_head at supervised positions only
    monkeypatch.setattr(LlamaModel, "forward", _oom)
    out = tmp_path / "run"
    with pytest.raises(CrosstraceError) as info:
        train_run(base / "base", out / "final", out / "trace.safetensors", out / "log.parquet",
                  phase="mix", data_dir=base / "data", training=TRAINING, device="cpu",
                  progress=False)  # fmt: skip
    msg = str(info.value)
    for needle in ("out of memory", "M parameters", "batch_size=8", "grad_accum=1",
                   "Lower training.batch_size", "offload_cpu"):  # fmt: skip
        assert needle in msg, msg
    assert_nothing_written(out)


def test_out_of_memory_in_evaluation(capsys, base, tmp_path, monkeypatch):
    tried("GPU out of memory (evaluation)")
    monkeypatch.setattr(LlamaForCausalLM, "forward", _oom)
    cfg = write_config(tmp_path / "c.yaml", {"evaluation": {"batch_size": 512}})
    out = tmp_path / "pred.parquet"
    code, err = run_cli(capsys, "evaluate", "--config", cfg, "--model-dir", str(base / "base"),
                        "--qa", str(base / "data" / "qa.parquet"), "--out", str(out))  # fmt: skip
    assert_error(code, err, "out of memory", "M parameters", "batch_size=512",
                 "Lower evaluation.batch_size")  # fmt: skip
    assert not out.exists()


# ---- the SQL command -----------------------------------------------------------------------


@pytest.fixture
def database(tmp_path) -> str:
    """A small database with the crosstrace metadata table (what `crosstrace sql` opens)."""
    import duckdb

    path = tmp_path / "crosstrace.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE crosstrace_meta (key VARCHAR, value VARCHAR)")
    con.execute("CREATE TABLE accuracy AS SELECT 'llama' AS model, 0.5 AS accuracy")
    con.close()
    return str(path)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC * FROM accuracy", 'Parser Error: syntax error at or near "SELEC"'),
        ("SELECT * FROM accuracies", "Catalog Error: Table with name accuracies does not exist!"),
        ("DROP TABLE accuracy", 'Invalid Input Error: Cannot execute statement of type "DROP"'),
    ],
)
def test_sql_error_is_one_line(capsys, database, sql, message):
    tried(f"SQL: {sql}")
    code, err = run_cli(capsys, "sql", database, "-c", sql)
    assert_error(code, err, f"crosstrace: error: query failed: {message}")
    assert len(err.strip().splitlines()) == 1, err


def test_sql_error_from_stdin_is_reported_once(capsys, monkeypatch, database):
    import io

    tried("SQL from stdin")
    statements = "SELECT 'first' AS a;\nSELEC 2;\nSELECT 'third' AS b;\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(statements))
    capsys.readouterr()
    code = cli.main(["sql", database])
    out, err = capsys.readouterr()
    assert_error(code, err, 'query failed: Parser Error: syntax error at or near "SELEC"')
    assert len(err.strip().splitlines()) == 1, err
    assert "first" in out and "third" not in out  # what follows the bad statement does not run


def test_sql_database_not_found_says_where_it_looked(capsys, monkeypatch, tmp_path):
    tried("SQL: no database in the current folder")
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, "sql", "-c", "SELECT 1")
    hint = "give the path: crosstrace sql path/to/results/"
    assert_error(
        code,
        err,
        "database not found: results/crosstrace.duckdb",
        f"(relative to {tmp_path})",
        hint,
    )
    assert len(err.strip().splitlines()) == 1, err


def test_a_model_on_another_world_is_refused(base: Path, tmp_path: Path) -> None:
    """θ0 records its world's fingerprint; evaluation, post-hoc traces and training on the data
    of another world stop with one line naming both, before anything is written."""
    from crosstrace.evaluate import evaluate_run
    from crosstrace.posthoc import posthoc_trace

    tried("model on another world")
    other = tmp_path / "other"
    synthesize_world({**WORLD, "seed": 5}, other / "bio.parquet", other / "qa.parquet",
                     other / "people.parquet")  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match=r"belongs to world \w+, but .*qa.parquet is world"):
        evaluate_run(base / "base", other / "qa.parquet", out / "predictions.parquet")
    with pytest.raises(InputDataError, match="belongs to world"):
        posthoc_trace(base / "base", other, out / "endpoint.safetensors", progress=False)
    with pytest.raises(InputDataError, match="belongs to world"):
        train_run(base / "base", out / "final", out / "t.safetensors", out / "l.parquet",
                  phase="mix", data_dir=other, training=TRAINING, progress=False)  # fmt: skip
    assert not out.exists()
    # its own world passes the check
    evaluate_run(base / "base", base / "data" / "qa.parquet", out / "predictions.parquet")


def test_words_the_tokenizer_does_not_know_are_refused(base: Path) -> None:
    from crosstrace.batches import tokenize_qa
    from crosstrace.models import load_model

    tried("unknown words")
    _, tokenizer = load_model(base / "base")
    with pytest.raises(InputDataError, match="does not know"):
        tokenize_qa(["What is the birth city of Zyxwvut Qqq?"], ["Nowhere"], tokenizer, None)


def test_bad_input_count():
    """Runs last (file order): every case above registered itself once."""
    if torch.cuda.is_available():
        pytest.skip("the CUDA case is skipped on a GPU machine")
    assert len(TRIED) == N_BAD_INPUTS, TRIED
