"""Ablation resets exactly the chosen elements: compared elementwise against θ0 and θT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import crosstrace.ablate as ablate
from crosstrace.ablate import condition_masks, reset_parameters
from crosstrace.dump import topk_count
from crosstrace.param_map import DEFAULT_RANK_MODULES, MODULES, ParamMap

CFG = dict(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=24,
)


def _pair():
    torch.manual_seed(0)
    theta0 = LlamaForCausalLM(LlamaConfig(**CFG))
    torch.manual_seed(1)
    theta_t = LlamaForCausalLM(LlamaConfig(**CFG))
    for p in theta_t.parameters():
        torch.nn.init.normal_(p)  # no element equal to θ0 by chance
    gen = torch.Generator().manual_seed(2)
    trace = {
        task: {n: torch.randn(p.shape, generator=gen) for n, p in theta_t.named_parameters()}
        for task in ("bio", "qa")
    }
    return theta0, theta_t, trace


def _numpy_sets(trace, pmap, k):
    """Top-k sets recomputed independently in numpy (sort, K-th largest)."""
    ranked = {
        n: pmap.spec(n, tuple(t.shape)).ranked_mask(DEFAULT_RANK_MODULES)
        for n, t in trace["bio"].items()
    }
    sets = {}
    for task in ("bio", "qa"):
        a = np.concatenate([trace[task][n].abs().numpy()[m] for n, m in ranked.items()])
        thr = np.sort(a)[::-1][topk_count(k, a.size) - 1]
        sets[task] = {n: (trace[task][n].abs().numpy() >= thr) & m for n, m in ranked.items()}
    return ranked, sets


@pytest.mark.parametrize("k", [1.0, 5.0, 20.0])
def test_masks_match_numpy_and_reset_is_exact(k):
    theta0, theta_t, trace = _pair()
    pmap = ParamMap(theta_t.config)
    masks = condition_masks(trace, pmap, k, seed=[0, 0, int(k)])
    ranked, sets = _numpy_sets(trace, pmap, k)
    shared = {n: sets["bio"][n] & sets["qa"][n] for n in ranked}
    want = {
        "shared": shared,
        "bio_only": {n: sets["bio"][n] & ~shared[n] for n in ranked},
        "qa_only": {n: sets["qa"][n] & ~shared[n] for n in ranked},
    }
    for cond, expected in want.items():
        for n in ranked:
            got = masks[cond][n].numpy() if n in masks[cond] else np.zeros_like(expected[n])
            assert np.array_equal(got, expected[n]), (cond, n)
    n_shared = sum(int(m.sum()) for m in shared.values())
    n_random = sum(int(m.sum()) for m in masks["random"].values())
    assert n_random == n_shared
    for n, m in masks["random"].items():
        assert not (m.numpy() & ~ranked[n]).any()  # only ranked elements are drawn

    base = {n: p.detach().clone() for n, p in theta0.named_parameters()}
    final = {n: p.detach().clone() for n, p in theta_t.named_parameters()}
    for cond in ("shared", "random", "bio_only", "qa_only"):
        net = LlamaForCausalLM(LlamaConfig(**CFG))
        net.load_state_dict(theta_t.state_dict())
        n_reset = reset_parameters(net, base, masks[cond])
        assert n_reset == sum(int(m.sum()) for m in masks[cond].values())
        for name, p in net.named_parameters():
            m = masks[cond].get(name, torch.zeros(p.shape, dtype=torch.bool))
            assert torch.equal(p.detach()[m], base[name][m])
            assert torch.equal(p.detach()[~m], final[name][~m])
            if not ranked[name].any():
                assert torch.equal(p.detach(), final[name])


def test_random_control_is_seeded():
    _, theta_t, trace = _pair()
    pmap = ParamMap(theta_t.config)
    a = condition_masks(trace, pmap, 5.0, seed=[0, 1])["random"]
    b = condition_masks(trace, pmap, 5.0, seed=[0, 1])["random"]
    c = condition_masks(trace, pmap, 5.0, seed=[9, 1])["random"]
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_ablate_run_table(tmp_path, monkeypatch):
    theta0, theta_t, trace = _pair()
    theta0.save_pretrained(tmp_path / "base")
    theta_t.save_pretrained(tmp_path / "final")
    from safetensors.torch import save_file

    save_file(
        {f"{t}/{n}": v.contiguous() for t, d in trace.items() for n, v in d.items()},
        tmp_path / "trace.safetensors",
        metadata={"format": "crosstrace-trace/1", "tasks": "bio,qa"},
    )
    pd.DataFrame(
        {
            "person_id": pd.array([0, 1], dtype="int32"),
            "attribute": ["major", "major"],
            "question": ["q1", "q2"],
            "answer": ["a", "b"],
            "split": ["train", "test"],
        }
    ).to_parquet(tmp_path / "qa.parquet")
    seen = []

    def fake_load(path, device):
        return LlamaForCausalLM.from_pretrained(path).to(device), None

    def fake_predict(model, tokenizer, qa, *, batch_size, max_new_tokens):
        # record how many elements differ from θT at evaluation time
        ref = dict(theta_t.named_parameters())
        moved = sum(int((p != ref[n]).sum()) for n, p in model.named_parameters())
        seen.append(moved)
        return pd.DataFrame({"split": ["id", "ood"], "exact_match": [moved == 0, True]})

    monkeypatch.setattr(ablate, "_load_model", fake_load)
    monkeypatch.setattr(ablate, "_predict", fake_predict)
    df = ablate.ablate_run(
        tmp_path / "final",
        tmp_path / "base",
        tmp_path / "trace.safetensors",
        tmp_path / "qa.parquet",
        tmp_path / "ablation.parquet",
        model="llama_tiny",
        strategy="mix",
        seed=0,
        k_percent=[1.0, 5.0],
        device="cpu",
    )
    back = pd.read_parquet(tmp_path / "ablation.parquet")
    assert list(back.columns) == [
        "model",
        "strategy",
        "seed",
        "k_percent",
        "condition",
        "n_reset",
        "split",
        "n",
        "accuracy",
    ]
    assert len(back) == len(df) == 2 * 5 * 2
    assert set(back["condition"]) == {"none", "shared", "random", "bio_only", "qa_only"}
    assert (back[back.condition == "none"]["n_reset"] == 0).all()
    # each evaluation starts from θT: exactly n_reset elements differ (θT is restored between)
    per_eval = back[back.split == "id"]
    assert seen[0] == 0
    assert seen[1:] == per_eval[per_eval.condition != "none"]["n_reset"].tolist()
    assert (per_eval[per_eval.condition == "none"]["accuracy"] == 1.0).all()
    shared = per_eval[per_eval.condition == "shared"]
    assert shared[shared.k_percent == 5.0]["n_reset"].item() > 0


def test_masks_agree_with_the_sql_tables(tmp_path, monkeypatch):
    """The ablation's sets are the database's sets: same counts per (layer, module, head)."""
    from safetensors.torch import save_file

    from crosstrace.database import build_database, connect
    from crosstrace.dump import dump_trace

    monkeypatch.chdir(tmp_path)
    _, theta_t, trace = _pair()
    theta_t.save_pretrained("final")
    save_file(
        {f"{t}/{n}": v.contiguous() for t, d in trace.items() for n, v in d.items()},
        "trace.safetensors",
    )
    dump_trace("trace.safetensors", "final", "trace", model="m", strategy="mix", seed=0)
    build_database("trace", "db.duckdb", "tables", k_percent=[1.0, 5.0])
    con = connect("db.duckdb")
    pmap = ParamMap(theta_t.config)
    for k in (1.0, 5.0):
        masks = condition_masks(trace, pmap, k)
        for cond, column in [("shared", "n_shared"), ("bio_only", "n_bio - n_shared")]:
            want = con.execute(
                f"SELECT layer, module, coalesce(head, -1), sum({column}) FROM shared_counts "
                "WHERE k_percent = ? GROUP BY ALL HAVING sum(n_params) > 0 ORDER BY ALL",
                [k],
            ).fetchall()
            got: dict[tuple, int] = {}
            for name, m in masks[cond].items():
                spec = pmap.spec(name, tuple(m.shape))
                cols = spec.columns()
                sel = m.reshape(-1).numpy()
                for mod, head in zip(cols["module"][sel], cols["head"][sel], strict=True):
                    key = (spec.layer, MODULES[mod], int(head))
                    got[key] = got.get(key, 0) + 1
            assert {r[:3]: int(r[3]) for r in want if r[3]} == got, (k, cond)
