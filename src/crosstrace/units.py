"""Units of the network for ablation: whole attention heads and whole MLP neurons.

A **head** owns every element labelled with its query-head index in the attention tensors of
its layer (``crosstrace.param_map``): its rows of the query projection (with the bias), its
columns of the output projection and, where every query head has its own keys and values
(GPT-NeoX; Llama without grouped-query attention), its rows of the key and value
projections. Under grouped-query attention a key/value head serves several query heads, so
the key and value projections belong to no single head and stay out of head units.

A **neuron** j of layer l owns row j of the up and gate projections (and their biases) and
column j of the down projection.

Units are ranked by how many elements of the shared set (top-k BIO ∩ top-k QA) they hold
(ties broken by unit index); a unit without any is never among the top, so where fewer than n
units hold shared elements the top set is smaller (``n_chosen``) and so are its controls. The
control for the top units is as many random units drawn among the others, matched on layer:
for each top unit of a layer, one unit of the same layer; a layer whose other units run out is
filled from the remaining units of any layer, and ``n_same_layer`` records how many were
matched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crosstrace.param_map import MODULE_CODE, NO_HEAD, NO_NEURON, ParamMap

UNIT_KINDS = ("head", "neuron")
NO_UNIT = -1
_HEAD_OWNED = ("attn.q", "attn.o")  # always one query head's
_HEAD_OWNED_WITHOUT_GQA = ("attn.k", "attn.v")

Masks = dict[str, np.ndarray]


@dataclass(frozen=True)
class UnitLabels:
    """Per parameter (flat, row-major): the unit index of each element, ``NO_UNIT`` where it
    belongs to none. Unit ``u`` lies in layer ``u // per_layer``."""

    kind: str
    per_layer: int
    n_layers: int
    labels: dict[str, np.ndarray]

    @property
    def n_units(self) -> int:
        return self.per_layer * self.n_layers

    def layer(self, units: np.ndarray) -> np.ndarray:
        return np.asarray(units) // self.per_layer

    def name(self, unit: int) -> str:
        letter = "H" if self.kind == "head" else "N"
        return f"L{unit // self.per_layer}.{letter}{unit % self.per_layer}"

    def masks(self, units: Sequence[int], shapes: Mapping[str, Sequence[int]]) -> Masks:
        """Bool masks (parameter shape) of every element of ``units``."""
        chosen = np.zeros(self.n_units + 1, dtype=bool)  # the last slot stands for NO_UNIT
        chosen[np.asarray(units, dtype=np.int64)] = True
        out: Masks = {}
        for name, label in self.labels.items():
            mask = chosen[label]
            if mask.any():
                out[name] = mask.reshape(tuple(shapes[name]))
        return out

    def counts(self, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per unit: how many elements of ``masks`` it holds."""
        total = np.zeros(self.n_units, dtype=np.int64)
        for name, label in self.labels.items():
            if name in masks:
                inside = label[np.asarray(masks[name]).reshape(-1) & (label != NO_UNIT)]
                total += np.bincount(inside, minlength=self.n_units)
        return total


def unit_labels(pmap: ParamMap, shapes: Mapping[str, Sequence[int]], kind: str) -> UnitLabels:
    """The ``kind`` units (``head`` or ``neuron``) of a model with these parameter shapes."""
    if kind not in UNIT_KINDS:
        raise ValueError(f"unit kind must be one of {UNIT_KINDS}, got {kind!r}")
    owned = list(_HEAD_OWNED)
    if pmap.info.group_size == 1:
        owned += _HEAD_OWNED_WITHOUT_GQA
    owned_codes = np.array([MODULE_CODE[m] for m in owned], dtype=np.int8)
    specs = {n: pmap.spec(n, tuple(s)) for n, s in shapes.items()}
    layers = [s.layer for s in specs.values() if s.layer is not None]
    n_layers = max(layers) + 1 if layers else 0
    if kind == "head":
        per_layer = pmap.info.num_heads
    else:
        sizes = [len(s.row_neuron) for s in specs.values() if s.row_neuron is not None]
        per_layer = max(sizes, default=0)
    labels: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        if spec.layer is None:
            continue
        cols = spec.columns()
        if kind == "head":
            index = cols["head"].astype(np.int64)
            inside = (index != NO_HEAD) & np.isin(cols["module"], owned_codes)
        else:
            index = cols["neuron"].astype(np.int64)
            inside = index != NO_NEURON
        if inside.any():
            labels[name] = np.where(inside, spec.layer * per_layer + index, NO_UNIT)
    return UnitLabels(kind, per_layer, n_layers, labels)


def shift_norm(shift: Mapping[str, np.ndarray], masks: Masks) -> float:
    """‖θT − θ0‖ over the elements of a set: how far training moved what a reset undoes."""
    return float(np.sqrt(sum(float(np.square(shift[n][m]).sum()) for n, m in masks.items())))


def top_units(shared_counts: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` units holding the most shared elements (ties: the lower index first); only
    units that hold any, so fewer than ``n`` where fewer hold some."""
    order = np.lexsort((np.arange(len(shared_counts)), -shared_counts))
    order = order[shared_counts[order] > 0]
    return np.sort(order[: min(n, len(order))])


def layer_matched_units(
    units: UnitLabels, top: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """As many units as ``top``, none of them in it: per layer as many as ``top`` has there,
    the shortfall of a crowded layer from the rest. Returns (units, how many layer-matched)."""
    others = np.setdiff1d(np.arange(units.n_units), top)
    chosen: list[int] = []
    for layer, need in zip(*np.unique(units.layer(top), return_counts=True), strict=True):
        pool = others[units.layer(others) == layer]
        chosen += rng.choice(pool, size=min(int(need), len(pool)), replace=False).tolist()
    matched = len(chosen)
    rest = np.setdiff1d(others, chosen)
    chosen += rng.choice(rest, size=min(len(top) - matched, len(rest)), replace=False).tolist()
    return np.sort(np.asarray(chosen, dtype=np.int64)), matched


COLUMNS = ["unit", "n_units", "n_chosen", "condition", "draw", "units", "n_same_layer",
           "n_shared", "n_reset", "shift_norm"]  # fmt: skip
Score = Callable[[Masks], list[tuple]]  # masks -> rows (split, n, accuracy)


def unit_ablation_rows(
    score: Score,
    pmap: ParamMap,
    shapes: Mapping[str, Sequence[int]],
    shared: Masks,
    shift: Mapping[str, np.ndarray],
    *,
    counts: Mapping[str, Sequence[int]],
    draws: int,
    seed: Sequence[int],
) -> list[tuple]:
    """Reset the top-n units by shared count, and ``draws`` layer-matched random sets of n
    units, for every kind and n of ``counts`` (``{kind: [n, …]}``); one row per set and split
    (``COLUMNS`` then the score's columns). ``score`` resets a mask, scores, and restores."""
    rows: list[tuple] = []
    for kind_index, kind in enumerate(UNIT_KINDS):
        if not counts.get(kind):
            continue
        units = unit_labels(pmap, shapes, kind)
        held = units.counts(shared)
        for n in counts[kind]:
            top = top_units(held, n)
            if not len(top):  # no unit of this kind holds a shared element
                continue
            picks = [("top", 0, top, len(top))]
            for draw in range(draws):
                rng = np.random.default_rng([*seed, 0x0417, kind_index, int(n), draw])
                picks.append(("random", draw, *layer_matched_units(units, top, rng)))
            for condition, draw, chosen, same in picks:
                masks = units.masks(chosen, shapes)
                moved = shift_norm(shift, masks)
                n_reset = sum(int(m.sum()) for m in masks.values())
                names = ",".join(units.name(int(u)) for u in chosen)
                head = (kind, int(n), len(top), condition, draw, names, int(same),
                        int(held[chosen].sum()), n_reset, moved)  # fmt: skip
                rows += [(*head, *r) for r in score(masks)]
    return rows
