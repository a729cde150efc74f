"""Atomic outputs: a crash part-way leaves the previous output or nothing, never a partial one."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import crosstrace.dump
import crosstrace.tracefile
from crosstrace.atomic import atomic_dir, atomic_file
from crosstrace.dump import dump_trace
from crosstrace.errors import OutputWriteError
from crosstrace.tracefile import load_trace, save_trace


class Crash(Exception):
    pass


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_atomic_file_leaves_nothing_on_exception(tmp_path):
    final = tmp_path / "out.parquet"
    with pytest.raises(Crash), atomic_file(final) as tmp:
        tmp.write_bytes(b"half")
        raise Crash
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_keeps_the_previous_file_on_exception(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(Crash), atomic_file(final) as tmp:
        tmp.write_text("new, half")
        raise Crash
    assert final.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_file_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_file(tmp_path / "x"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_leaves_nothing_on_exception(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(Crash), atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        raise Crash
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_previous_folder_on_exception(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "a").write_text("old")
    with pytest.raises(Crash), atomic_dir(final) as tmp:
        (tmp / "a").write_text("new")
        raise Crash
    assert sorted(p.name for p in final.iterdir()) == ["a"]
    assert (final / "a").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_dir_replaces_on_success(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "stale").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["a"]
    assert leftovers(tmp_path) == []


# ---- a crash mid-dump ---------------------------------------------------------------------


@pytest.fixture
def tiny_run(tmp_path) -> tuple[Path, Path]:
    """A tiny Llama folder and a trace of it (random deltas)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    deltas = {
        task: {n: torch.randn(p.shape) for n, p in model.named_parameters()}
        for task in ("bio", "qa")
    }
    trace = tmp_path / "trace.safetensors"
    save_trace(trace, deltas)
    return model_dir, trace


def _flaky_writer(after: int):
    calls = {"n": 0}

    class Flaky(pq.ParquetWriter):
        def write_table(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] > after:
                raise Crash(f"disk full after {after} row groups")
            return super().write_table(*args, **kwargs)

    return Flaky, calls


def _dump(model_dir: Path, trace: Path, out: Path) -> Path:
    return dump_trace(trace, model_dir, out, model="m", strategy="mix", seed=0, row_group_size=64)


def test_crash_mid_dump_leaves_no_partition(tiny_run, tmp_path, monkeypatch):
    model_dir, trace = tiny_run
    out = tmp_path / "trace_root"
    flaky, calls = _flaky_writer(after=5)
    monkeypatch.setattr(crosstrace.dump.pq, "ParquetWriter", flaky)
    with pytest.raises(Crash):
        _dump(model_dir, trace, out)
    assert calls["n"] > 5  # it did write some row groups before the crash
    run_parent = out / "model=m" / "strategy=mix"
    assert not (run_parent / "seed=0").exists()
    assert list(out.rglob("*.parquet")) == []
    assert leftovers(run_parent) == []


def test_crash_mid_dump_keeps_the_previous_dump(tiny_run, tmp_path, monkeypatch):
    model_dir, trace = tiny_run
    out = tmp_path / "trace_root"
    run_dir = _dump(model_dir, trace, out)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*.parquet")}
    assert before
    flaky, _ = _flaky_writer(after=3)
    monkeypatch.setattr(crosstrace.dump.pq, "ParquetWriter", flaky)
    with pytest.raises(Crash):
        _dump(model_dir, trace, out)
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*.parquet")}
    assert after == before
    assert leftovers(run_dir.parent) == []


# ---- save_trace ----------------------------------------------------------------------------


def test_save_trace_crash_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "trace.safetensors"

    def half_then_crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # a torn header
        raise Crash("killed mid-write")

    monkeypatch.setattr(crosstrace.tracefile, "save_file", half_then_crash)
    with pytest.raises(Crash):
        save_trace(path, {"bio": {"w": torch.ones(3)}, "qa": {"w": torch.ones(3)}})
    assert list(tmp_path.iterdir()) == []


def test_save_trace_crash_keeps_the_previous_trace(tmp_path, monkeypatch):
    path = tmp_path / "trace.safetensors"
    save_trace(path, {"bio": {"w": torch.ones(3)}, "qa": {"w": torch.zeros(3)}})

    def crash(*_args, **_kwargs):
        raise Crash

    monkeypatch.setattr(crosstrace.tracefile, "save_file", crash)
    with pytest.raises(Crash):
        save_trace(path, {"bio": {"w": torch.full((3,), 7.0)}, "qa": {"w": torch.ones(3)}})
    assert torch.equal(load_trace(path)["bio"]["w"], torch.ones(3))
    assert leftovers(tmp_path) == []


# ---- security basics ------------------------------------------------------------------------


def test_database_connect_is_read_only_by_default(tmp_path):
    import duckdb

    from crosstrace.database import connect

    db = tmp_path / "x.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE crosstrace_meta (key VARCHAR, value VARCHAR)")
    con.close()
    ro = connect(db)
    try:
        with pytest.raises(duckdb.Error, match="read-only"):
            ro.execute("CREATE TABLE t (x INT)")
    finally:
        ro.close()


def test_rules_run_no_shell_commands():
    """Wildcards and config values reach the library through script: only, never a shell."""
    repo = Path(__file__).resolve().parents[1]
    for smk in [repo / "Snakefile", *sorted((repo / "rules").glob("*.smk"))]:
        directives = re.findall(r"^\s+(shell|run):", smk.read_text(), flags=re.MULTILINE)
        assert directives == [], smk.name


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
        # pyarrow's own wording of the same error: the OS message inside its text
        (OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"),
         "No space left on device"),
    ],
)  # fmt: skip
def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path, error, words):
    final = tmp_path / "out.parquet"
    with pytest.raises(OutputWriteError) as caught, atomic_file(final) as tmp:
        tmp.write_bytes(b"half")
        raise error
    assert str(caught.value).startswith(f"could not write {final}: {words}")
    assert caught.value.__cause__ is error
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "model"
    match = f"could not write {folder}: {words}"
    with pytest.raises(OutputWriteError, match=match), atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text("{}")
        raise error
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_file(tmp_path / "out.txt"):
        (tmp_path / "missing-input.txt").read_text()
    assert list(tmp_path.iterdir()) == []
