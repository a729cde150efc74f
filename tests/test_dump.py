"""The Parquet dump: layout, types, row counts, filtering, exact delta values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from crosstrace.dump import dump_trace as dump
from crosstrace.dump import read_dump_metadata
from crosstrace.errors import InputDataError
from crosstrace.param_map import MODULES, ParamMap
from crosstrace.rank import topk_size


def _model(arch):
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=24,
        )
        return LlamaForCausalLM(cfg)
    cfg = GPTNeoXConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
    )
    return GPTNeoXForCausalLM(cfg)


@pytest.fixture(params=["llama", "gpt_neox"])
def run(request, tmp_path):
    torch.manual_seed(0)
    model = _model(request.param)
    model.save_pretrained(tmp_path / "model")
    deltas = {
        f"{task}/{name}": torch.randn(p.shape) * (1 + i)
        for task in ("bio", "qa")
        for i, (name, p) in enumerate(model.named_parameters())
    }
    save_file(deltas, tmp_path / "trace.safetensors")
    return tmp_path, model, deltas


def _read(folder):
    files = sorted(folder.glob("*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files), files


def test_layout_types_and_values(run):
    tmp, model, deltas = run
    out = dump(
        tmp / "trace.safetensors", tmp / "model", tmp / "trace", model="m", strategy="mix", seed=3
    )
    assert out == tmp / "trace" / "model=m" / "strategy=mix" / "seed=3"
    assert sorted(p.name for p in out.iterdir()) == ["task=bio", "task=qa"]
    pmap = ParamMap(model.config)
    for task in ("bio", "qa"):
        table, files = _read(out / f"task={task}")
        assert [f.name for f in files] == ["part-00000.parquet"]
        assert table.schema.field("param").type == pa.string()
        assert table.schema.field("module").type == pa.string()
        for col, typ in [("row", pa.int32()), ("col", pa.int32()), ("delta", pa.float32())]:
            assert table.schema.field(col).type == typ
        assert table.schema.field("layer").type == pa.int16()
        assert table.schema.field("head").type == pa.int16()
        assert table.schema.field("neuron").type == pa.int32()
        numel = sum(p.numel() for p in model.parameters())
        assert table.num_rows == numel
        df = table.to_pandas()
        assert set(df["module"]) <= set(MODULES)
        for name, p in model.named_parameters():
            part = df[df["param"] == name]
            assert len(part) == p.numel()
            want = deltas[f"{task}/{name}"].reshape(p.shape[0], -1).numpy()
            got = np.zeros_like(want)
            got[part["row"].to_numpy(), part["col"].to_numpy()] = part["delta"].to_numpy()
            assert got.tobytes() == want.tobytes()  # bit-exact round trip
            spec = pmap.spec(name, tuple(p.shape))
            if spec.layer is None:
                assert part["layer"].isna().all()
            else:
                assert (part["layer"] == spec.layer).all()
        attn = df[df["module"].isin(["attn.q", "attn.k", "attn.v"])]
        assert attn["head"].notna().all()
        assert df[df["module"].str.startswith("mlp")]["head"].isna().all()
        # neurons: rows of up/gate, columns of down; none outside the MLP
        up = df[df["param"].str.contains("up_proj|dense_h_to_4h") & df["param"].str.endswith("t")]
        assert (up["neuron"] == up["row"]).all() and len(up) > 0
        down = df[df["param"].str.contains("down_proj|dense_4h_to_h.weight")]
        assert (down["neuron"] == down["col"]).all() and len(down) > 0
        assert df[~df["module"].str.startswith("mlp")]["neuron"].isna().all()
        meta = read_dump_metadata(files[0])
        assert meta["task"] == task and meta["top_percent"] is None
        # index columns are sorted inside each parameter (row-major)
        first = df[df["param"] == df["param"].iloc[-1]]
        flat = first["row"].to_numpy().astype(np.int64) * (first["col"].max() + 1) + first["col"]
        assert np.all(np.diff(flat.to_numpy()) == 1)


def test_row_groups_and_encodings(run):
    tmp, _, _ = run
    out = dump(
        tmp / "trace.safetensors",
        tmp / "model",
        tmp / "trace",
        model="m",
        strategy="stage",
        seed=0,
        row_group_size=500,
    )
    md = pq.ParquetFile(out / "task=bio" / "part-00000.parquet").metadata
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert all(s == 500 for s in sizes[:-1]) and 0 < sizes[-1] <= 500
    cols = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i) for i in range(8)}
    assert cols["delta"].compression == "ZSTD"
    assert not cols["delta"].has_dictionary_page
    assert "BYTE_STREAM_SPLIT" in cols["delta"].encodings
    assert cols["module"].has_dictionary_page


@pytest.mark.parametrize("top", [1.0, 10.0])
def test_top_percent_keeps_exactly_the_top(run, top):
    tmp, model, deltas = run
    out = dump(
        tmp / "trace.safetensors",
        tmp / "model",
        tmp / "trace",
        model="m",
        strategy="mix",
        seed=0,
        top_percent=top,
    )
    for task in ("bio", "qa"):
        every = np.concatenate(
            [deltas[f"{task}/{n}"].abs().numpy().reshape(-1) for n, _ in model.named_parameters()]
        )
        thr = np.sort(every)[::-1][topk_size(top, every.size) - 1]
        table, files = _read(out / f"task={task}")
        assert table.num_rows == int((every >= thr).sum())
        assert np.abs(table["delta"].to_numpy()).min() >= thr
        meta = read_dump_metadata(files[0])
        assert meta["threshold"] == pytest.approx(float(thr), rel=0, abs=0)


def test_rejects_bad_top_percent(run):
    tmp, _, _ = run
    with pytest.raises(InputDataError, match="top_percent"):
        dump(
            tmp / "trace.safetensors",
            tmp / "model",
            tmp / "trace",
            model="m",
            strategy="mix",
            seed=0,
            top_percent=0,
        )
