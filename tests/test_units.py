"""Unit ablation: heads and neurons own exactly their elements, the top units are those with
the most shared elements, and the random units are layer-matched and disjoint from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_rank import net

from crosstrace.param_map import ParamMap
from crosstrace.units import (
    NO_UNIT,
    layer_matched_units,
    top_units,
    unit_ablation_rows,
    unit_labels,
)


def _shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_every_head_owns_its_query_and_output_slices_and_kv_only_without_gqa(arch):
    model = net(arch, hidden=16, inter=24, layers=2)
    units = unit_labels(ParamMap(model.config), _shapes(model), "head")
    assert units.n_units == 2 * 4
    hd, hidden = 4, 16
    sizes = units.counts({n: np.ones(s, dtype=bool) for n, s in _shapes(model).items()})
    if arch == "llama":  # GQA (4 query heads, 2 KV heads): q rows and o columns only
        assert (sizes == 2 * hd * hidden).all()
    else:  # fused q, k, v rows with their biases, and o columns
        assert (sizes == 3 * hd * hidden + 3 * hd + hidden * hd).all()
    masks = units.masks([5], _shapes(model))  # layer 1, head 1
    assert all(".1." in n for n in masks)
    assert sum(int(m.sum()) for m in masks.values()) == sizes[5]


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_every_neuron_owns_its_up_gate_rows_and_down_column(arch):
    model = net(arch, hidden=16, inter=24, layers=2)
    units = unit_labels(ParamMap(model.config), _shapes(model), "neuron")
    assert units.n_units == 2 * 24 and units.name(30) == "L1.N6"
    sizes = units.counts({n: np.ones(s, dtype=bool) for n, s in _shapes(model).items()})
    per = 2 * 16 + 16 if arch == "llama" else 16 + 1 + 16  # up, gate | up + bias; down column
    assert (sizes == per).all()
    labelled = sum(int((lab != NO_UNIT).sum()) for lab in units.labels.values())
    assert labelled == sizes.sum()  # no element in two neurons


def test_top_units_take_the_most_shared_and_break_ties_by_index():
    assert top_units(np.array([3, 9, 9, 0, 5]), 2).tolist() == [1, 2]
    assert top_units(np.array([3, 9, 9, 0, 5]), 3).tolist() == [1, 2, 4]
    assert top_units(np.array([1, 1, 1]), 5).tolist() == [0, 1, 2]
    assert top_units(np.array([0, 4, 0, 2]), 3).tolist() == [1, 3]  # never a unit without any
    assert top_units(np.zeros(4, dtype=int), 2).tolist() == []


def test_random_units_match_layers_and_fill_a_crowded_layer_from_the_rest():
    model = net("gpt_neox", hidden=16, inter=24, layers=2)
    units = unit_labels(ParamMap(model.config), _shapes(model), "head")  # 4 heads per layer
    for seed in range(10):
        rng = np.random.default_rng(seed)
        top = np.array([0, 5])
        got, same = layer_matched_units(units, top, rng)
        assert same == 2 and not set(got) & set(top)
        assert sorted(units.layer(got)) == [0, 1]
        crowded = np.array([0, 1, 2])  # layer 0 has one other head left
        got, same = layer_matched_units(units, crowded, rng)
        assert len(got) == 3 and same == 1 and not set(got) & set(crowded)
        assert (units.layer(got) == 0).sum() == 1


def test_unit_rows_score_the_top_units_and_layer_matched_draws():
    model = net("llama", hidden=16, inter=24, layers=2)
    shapes, pmap = _shapes(model), ParamMap(model.config)
    heads = unit_labels(pmap, shapes, "head")
    shared = {n: np.zeros(s, dtype=bool) for n, s in shapes.items()}
    shared.update(heads.masks([6], shapes))  # every shared element in head L1.H2
    shift = {n: np.ones(s) for n, s in shapes.items()}
    seen = []

    def score(masks):
        seen.append(sum(int(m.sum()) for m in masks.values()))
        return [("id", 10, 0.5), ("ood", 10, 0.25)]

    rows = unit_ablation_rows(score, pmap, shapes, shared, shift,
                              counts={"head": [1], "neuron": []}, draws=3, seed=(0, 0))  # fmt: skip
    df = pd.DataFrame(rows, columns=["unit", "n_units", "n_chosen", "condition", "draw", "units",
                                     "n_same_layer", "n_shared", "n_reset", "shift_norm",
                                     "split", "n", "accuracy"])  # fmt: skip
    assert len(df) == (1 + 3) * 2 and len(seen) == 4 and set(df.n_chosen) == {1}
    top = df[df.condition == "top"]
    assert set(top.units) == {"L1.H2"} and (top.n_shared == 2 * 4 * 16).all()
    rnd = df[df.condition == "random"]
    assert (rnd.n_shared == 0).all() and rnd.units.str.startswith("L1.").all()
    assert (df.n_reset == 2 * 4 * 16).all() and np.allclose(df.shift_norm, np.sqrt(128))
