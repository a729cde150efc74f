"""Ablation: reset chosen parameters of θT to θ0 and re-evaluate ID and OOD accuracy.

Per run and k (percent), with the top-k definition shared with the SQL
(``crosstrace.dump.topk_count`` / ``kth_largest``: over the ranked elements of a task,
threshold = the K-th largest |Δ| with K = max(1, ceil(k/100 · n)); top-k = |Δ| ≥ threshold):

- ``none``: θT itself (n_reset 0; one evaluation, repeated for every k).
- ``shared``: top-k BIO ∩ top-k QA.
- ``random``: as many elements as ``shared``, drawn uniformly without replacement among the
  ranked elements (seeded by ablation_seed, the run seed and k).
- ``bio_only``: top-k BIO minus shared; ``qa_only``: top-k QA minus shared. The exclusive
  sets isolate "important for one task only" from "shared"; their n_reset is recorded.

Masks are elementwise boolean tensors, one per parameter; only ranked modules are eligible.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from crosstrace.atomic import atomic_file
from crosstrace.dump import kth_largest, topk_count
from crosstrace.errors import InputDataError
from crosstrace.param_map import DEFAULT_RANK_MODULES, ParamMap

CONDITIONS = ("none", "shared", "random", "bio_only", "qa_only")
Masks = dict[str, torch.Tensor]


def ranked_masks(pmap: ParamMap, shapes: dict[str, tuple[int, ...]], rank_modules) -> Masks:
    """Per parameter: which elements belong to a ranked module (parameters with none left out)."""
    out = {}
    for name, shape in shapes.items():
        mask = pmap.spec(name, shape).ranked_mask(rank_modules)
        if mask.any():
            out[name] = torch.from_numpy(np.ascontiguousarray(mask))
    return out


def topk_thresholds(
    deltas: dict[str, torch.Tensor], ranked: Masks, k_percents: Sequence[float]
) -> dict[float, float]:
    """{k: threshold} over the ranked elements of one task (same definition as the SQL)."""
    n = sum(int(m.sum()) for m in ranked.values())

    def chunks() -> Iterator[np.ndarray]:
        for name, mask in ranked.items():
            yield deltas[name].detach().float().cpu().abs()[mask].numpy()

    values = kth_largest(chunks, [topk_count(k, n) for k in k_percents])
    return dict(zip(k_percents, values, strict=True))


def condition_masks(
    trace: dict[str, dict[str, torch.Tensor]],
    pmap: ParamMap,
    k_percent: float,
    *,
    rank_modules: Sequence[str] = DEFAULT_RANK_MODULES,
    seed: int | Sequence[int] = 0,
) -> dict[str, Masks]:
    """{condition: {param: bool mask}} for one k (``none`` maps to no masks)."""
    shapes = {name: tuple(t.shape) for name, t in trace["bio"].items()}
    ranked = ranked_masks(pmap, shapes, rank_modules)
    top = {}
    for task in ("bio", "qa"):
        (thr,) = topk_thresholds(trace[task], ranked, [k_percent]).values()
        top[task] = {
            name: (trace[task][name].detach().float().cpu().abs() >= thr) & m
            for name, m in ranked.items()
        }
    shared = {name: top["bio"][name] & top["qa"][name] for name in ranked}
    n_shared = sum(int(m.sum()) for m in shared.values())
    return {
        "none": {},
        "shared": shared,
        "random": random_masks(ranked, n_shared, seed=seed),
        "bio_only": {name: top["bio"][name] & ~shared[name] for name in ranked},
        "qa_only": {name: top["qa"][name] & ~shared[name] for name in ranked},
    }


def random_masks(ranked: Masks, n: int, *, seed: int | Sequence[int]) -> Masks:
    """``n`` elements drawn uniformly without replacement among the ranked ones."""
    sizes = np.array([int(m.sum()) for m in ranked.values()], dtype=np.int64)
    total = int(sizes.sum())
    if n > total:
        raise InputDataError(f"cannot draw {n} random parameters from {total} ranked ones")
    picks = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    out = {}
    for i, (name, mask) in enumerate(ranked.items()):
        lo, hi = np.searchsorted(picks, [starts[i], starts[i + 1]])
        flat_ranked = torch.nonzero(mask.reshape(-1)).reshape(-1)
        chosen = torch.zeros(mask.numel(), dtype=torch.bool)
        chosen[flat_ranked[torch.from_numpy(picks[lo:hi] - starts[i])]] = True
        out[name] = chosen.reshape(mask.shape)
    return out


@torch.no_grad()
def reset_parameters(model: torch.nn.Module, base: dict[str, torch.Tensor], masks: Masks) -> int:
    """Set the masked elements of ``model``'s parameters to ``base`` (θ0). Returns the count."""
    params = dict(model.named_parameters())
    n = 0
    for name, mask in masks.items():
        if name not in params:
            raise InputDataError(f"trace parameter {name!r} is not a parameter of the model")
        p = params[name]
        m = mask.to(p.device)
        p[m] = base[name].to(device=p.device, dtype=p.dtype)[m]
        n += int(mask.sum())
    return n


def _load_model(path, device):
    from crosstrace.models import load_model

    return load_model(path, device)


def _predict(model, tokenizer, qa, *, batch_size, max_new_tokens):
    from crosstrace.evaluate import predict

    return predict(model, tokenizer, qa, batch_size=batch_size, max_new_tokens=max_new_tokens)


def _accuracy(pred: pd.DataFrame) -> dict[str, tuple[int, float]]:
    g = pred.groupby("split")["exact_match"]
    return {split: (int(g.size()[split]), float(g.mean()[split])) for split in g.size().index}


def ablate_run(
    model_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    trace_path: str | os.PathLike[str],
    qa_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    model: str,
    strategy: str,
    seed: int,
    k_percent: Sequence[float],
    rank_modules: Sequence[str] = DEFAULT_RANK_MODULES,
    ablation_seed: int = 0,
    batch_size: int = 1024,
    max_new_tokens: int = 12,
    device: str = "auto",
) -> pd.DataFrame:
    """Evaluate θT and every ablation condition for each k; write and return the table.

    Columns: model, strategy, seed, k_percent, condition, n_reset, split, n, accuracy.
    """
    from crosstrace.devices import resolve_device
    from crosstrace.errors import ConfigError
    from crosstrace.trace import load_trace
    from crosstrace.world import read_qa

    bad = [k for k in k_percent if not 0 < float(k) <= 100]
    if bad or not k_percent:
        raise ConfigError(f"analysis.k_percent: every k must be in (0, 100], got {list(k_percent)}")
    dev = resolve_device(device)
    net, tokenizer = _load_model(model_dir, dev)
    base_net, _ = _load_model(base_dir, "cpu")
    base = {n: p.detach().cpu() for n, p in base_net.named_parameters()}
    del base_net
    final = {n: p.detach().cpu().clone() for n, p in net.named_parameters()}
    trace = load_trace(trace_path)
    qa = read_qa(qa_path)
    pmap = ParamMap(net.config)

    rows = []
    eval_kw = {"batch_size": batch_size, "max_new_tokens": max_new_tokens}
    acc_none = _accuracy(_predict(net, tokenizer, qa, **eval_kw))
    for k in k_percent:
        for split, (n, acc) in acc_none.items():
            rows.append((k, "none", 0, split, n, acc))
        masks = condition_masks(
            trace,
            pmap,
            k,
            rank_modules=rank_modules,
            seed=[int(ablation_seed), int(seed), round(float(k) * 1e6)],
        )
        for condition in CONDITIONS[1:]:
            n_reset = reset_parameters(net, base, masks[condition])
            for split, (n, acc) in _accuracy(_predict(net, tokenizer, qa, **eval_kw)).items():
                rows.append((k, condition, n_reset, split, n, acc))
            reset_parameters(net, final, masks[condition])  # back to θT
    df = pd.DataFrame(rows, columns=["k_percent", "condition", "n_reset", "split", "n", "accuracy"])
    df.insert(0, "seed", int(seed))
    df.insert(0, "strategy", strategy)
    df.insert(0, "model", model)
    df["k_percent"] = df["k_percent"].astype("float64")
    with atomic_file(out_path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, compression="zstd")
    return df
