"""The figures as a reader sees them: values on bars, shared scales, empty panels that say why,
tick labels that do not overlap, one title style, one colour bar."""

from __future__ import annotations

import itertools
import re

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from crosstrace import plots

MODELS = ("llama_tiny", "neox_tiny")
STRATEGIES = ("stage", "mix")
MODULES = {
    "llama_tiny": ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"),
    "neox_tiny": ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"),  # no gate
}


# seaborn's own facet title: "model = llama_tiny" (a "k = 1%" panel value is ours)
FACET_DEFAULT = r"(model|strategy|module|run|measure|definition|scope|source|panel|unit) = "


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def titles(fig: plt.Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def texts(ax: plt.Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def accuracy_table() -> pd.DataFrame:
    rows = []
    for model, strategy, split in itertools.product(
        MODELS, STRATEGIES, ("id", "ood", "bio_id", "bio_ood")
    ):
        value = 0.0 if split in ("id", "ood") else 0.25  # QA at 0, as in the CI-size study
        rows.append((model, strategy, 0, split, "all", value))
    return pd.DataFrame(rows, columns=["model", "strategy", "seed", "split", "attribute",
                                       "accuracy"])  # fmt: skip


def test_accuracy_labels_every_bar_and_gives_memorisation_its_own_row():
    fig = plots.fig_accuracy(accuracy_table())
    assert titles(fig) == [
        "QA exact match · llama_tiny", "QA exact match · neox_tiny",
        "bio memorisation · llama_tiny", "bio memorisation · neox_tiny",
    ]  # fmt: skip
    qa, bio = fig.axes[0], fig.axes[2]
    bars = [b for c in qa.containers for b in c]
    assert len(bars) == 4 and all(b.get_height() == 0 for b in bars)
    labels = [t.get_text() for c in qa.containers for t in qa.texts if t.get_text()]
    assert labels.count("0.00") >= 4  # a bar at 0 is labelled, not just absent
    assert "0.25" in texts(bio)


def overlap_table() -> pd.DataFrame:
    rows = []
    for model, strategy, definition, scope, k in itertools.product(
        MODELS, STRATEGIES, ("trajectory", "endpoint"), ("global", "per_tensor"), (1.0, 5.0)
    ):
        high = 20.0 if definition == "endpoint" and scope == "global" else 3.0
        rows.append((model, strategy, 0, definition, scope, k, high / k + 1))
    return pd.DataFrame(rows, columns=["model", "strategy", "seed", "definition", "scope",
                                       "k_percent", "enrichment"])  # fmt: skip


def test_overlap_shares_the_y_scale_within_a_row_and_names_its_axis():
    fig = plots.fig_overlap(overlap_table())
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == 4
    for row in (axes[:2], axes[2:]):
        assert row[0].get_ylim() == row[1].get_ylim()
        assert row[0].get_title().split(" · ")[0] == row[1].get_title().split(" · ")[0]
    assert axes[0].get_ylim() != axes[2].get_ylim()  # rows keep their own scale
    ylabel = axes[0].get_ylabel()
    assert "_" not in ylabel and "expected" in ylabel


def consistency_table(last_step: int) -> pd.DataFrame:
    rows = []
    for model, strategy in itertools.product(MODELS, STRATEGIES):
        for module, step, source in itertools.product(
            MODULES[model],
            range(0, last_step + 1, last_step // 10),
            ("probe_id", "probe_ood", "probe_ood_values", "step"),
        ):
            if source != "step" or strategy == "mix":  # in-step records: mixed batches only
                rows.append((model, strategy, 0, step, source, module, 0.1))
    return pd.DataFrame(rows, columns=["model", "strategy", "seed", "run_step", "source",
                                       "module", "cosine"])  # fmt: skip


def overlapping(boxes) -> list[tuple]:
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


@pytest.mark.parametrize("last_step", [30, 24000])
def test_consistency_vs_step_is_readable_and_says_neox_has_no_gate(last_step):
    fig = plots.fig_consistency_vs_step(consistency_table(last_step))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    grid = [ax for ax in fig.axes if ax.get_title()]
    gate = next(ax for ax in grid if ax.get_title() == "neox_tiny · mlp.gate")
    assert not gate.axison and texts(gate) == ["neox_tiny has no mlp.gate"]
    labels = [  # the tick labels drawn: visible, inside the axis's range
        tick.label1.get_window_extent(renderer)
        for ax in grid
        if ax.axison
        for tick in ax.xaxis.get_major_ticks()
        if tick.label1.get_visible()
        and tick.label1.get_text()
        and min(ax.get_xlim()) <= tick.get_loc() <= max(ax.get_xlim())
    ]
    assert labels and not overlapping(labels)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "in-step (mixed training's own batches)" in legend  # the whole of training, a curve
    assert "probe, held-out people, BIO loss on values" in legend
    xlabels = [ax.xaxis.label.get_window_extent(renderer) for ax in grid if ax.get_xlabel()]
    assert not overlapping(xlabels)


def ablation_table(theta: float) -> pd.DataFrame:
    rows = []
    for model, strategy, k, split in itertools.product(MODELS, STRATEGIES, (1.0,), ("id", "ood")):
        rows.append((model, strategy, 0, "trajectory", "global", k, "none", 0, split, theta))
        for condition, draw in itertools.product(("shared", "random"), (0, 1)):
            rows.append((model, strategy, 0, "trajectory", "global", k, condition, draw, split,
                         theta / 2))  # fmt: skip
    columns = ["model", "strategy", "seed", "definition", "scope", "k_percent", "condition",
               "draw", "split", "accuracy"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_ablation_panels_give_the_accuracy_there_was_to_lose():
    fig = plots.fig_ablation(ablation_table(0.0))
    grid = [ax for ax in fig.axes if ax.get_title()]
    assert grid and all("θT accuracy is 0:\nno drop is possible" in texts(ax) for ax in grid)
    fig = plots.fig_ablation(ablation_table(0.6))
    grid = [ax for ax in fig.axes if ax.get_title()]
    assert all("θT: id 0.60 · ood 0.60" in texts(ax) for ax in grid)
    legend = fig.legends[0].get_window_extent(fig.canvas.get_renderer())
    right = max(ax.get_window_extent().x1 for ax in grid)
    assert 0 <= legend.x0 - right < 0.5 * fig.dpi  # beside the panels, not adrift


def shared_counts() -> pd.DataFrame:
    rows = []
    for model, strategy, module, layer, head in itertools.product(
        MODELS, STRATEGIES, ("attn.q", "attn.k", "attn.v", "attn.o"), (0, 1), (0, 1)
    ):
        rows.append((model, strategy, 0, "trajectory", "global", 5.0, layer, module, head,
                     layer * 10 + head))  # fmt: skip
    columns = ["model", "strategy", "seed", "definition", "scope", "k_percent", "layer",
               "module", "head", "n_shared"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def test_head_heatmap_has_one_colour_bar_and_readable_titles():
    fig = plots.fig_head_heatmap(shared_counts(), 5.0)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 16 and len(fig.axes) == 17  # one colour bar for the whole figure
    assert fig.axes[-1].get_ylabel() == "shared parameters"
    assert all(ax.title.get_fontsize() >= 10 for ax in panels)
    assert panels[0].get_title() == "llama_tiny · mix · attn.q"


def test_representation_draws_theta_bio_beside_the_final_models():
    rows = [
        (model, strategy, checkpoint, 0, measure, layer, "birth_city", "ood", value, 0.2)
        for model in MODELS
        for strategy, checkpoint, value in (("mix", "final", 0.9), ("stage", "final", 0.5),
                                            ("stage", "bio_end", 0.3))
        for measure in ("cosine", "transfer", "train_accuracy")
        for layer in range(3)
    ]  # fmt: skip
    columns = ["model", "strategy", "checkpoint", "seed", "measure", "layer", "attribute",
               "split", "value", "baseline"]  # fmt: skip
    rep = pd.DataFrame(rows, columns=columns)
    fig = plots.fig_representation(rep)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"stage", "mix", plots.BIO_END} <= set(legend)
    cosine = next(ax for ax in fig.axes if ax.get_title().endswith("cosine BIO vs QA state"))
    heights = sorted({round(float(y), 3) for line in cosine.lines for y in line.get_ydata()})
    assert {0.3, 0.5, 0.9} <= set(heights)  # θ_BIO's own line, not merged into stage's
    assert "θ_BIO" in fig._suptitle.get_text()


def test_every_facet_title_has_one_style():
    """ "row · column" or "column": never seaborn's "model = llama_tiny"."""
    td = pd.DataFrame(
        [(m, s, 0, c, -0.1) for m, s, c in itertools.product(MODELS, STRATEGIES,
                                                             ("name", "relation", "other"))],
        columns=["model", "strategy", "seed", "token_class", "delta"],
    )  # fmt: skip
    figures = [
        plots.fig_token_dependence(td),
        plots.fig_accuracy(accuracy_table()),
        plots.fig_overlap(overlap_table()),
        plots.fig_ablation(ablation_table(0.5)),
        plots.fig_consistency_vs_step(consistency_table(30)),
    ]
    for fig in figures:
        assert titles(fig), fig
        for title in titles(fig):
            assert " | " not in title and not re.match(FACET_DEFAULT, title), title
    assert titles(figures[0]) == ["llama_tiny", "neox_tiny"]


def test_figures_show_the_same_ranking():
    """Trajectory Δ and global top-k wherever they were ranked, whatever the table's order."""
    table = overlap_table().sort_values(["definition", "scope"])  # endpoint first
    rows, label = plots.primary(table)
    assert set(rows["definition"]) == {"trajectory"} and set(rows["scope"]) == {"global"}
    assert label == "trajectory Δ, global top-k"


def unit_tables(theta: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for model, strategy, split in itertools.product(MODELS, STRATEGIES, ("id", "ood")):
        for unit, n in (("head", 1), ("head", 2), ("head", 4), ("neuron", 16), ("neuron", 64)):
            rows.append((model, strategy, 0, "trajectory", "global", 1.0, unit, n, "top", 0,
                         split, theta / 4))  # fmt: skip
            for draw in (0, 1):
                rows.append((model, strategy, 0, "trajectory", "global", 1.0, unit, n,
                             "random", draw, split, theta))  # fmt: skip
    columns = ["model", "strategy", "seed", "definition", "scope", "k_percent", "unit",
               "n_units", "condition", "draw", "split", "accuracy"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns), ablation_table(theta)


def test_unit_ablation_panels_show_each_kinds_own_unit_counts():
    fig = plots.fig_unit_ablation(*unit_tables(0.8))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4 * 4  # 4 runs × (heads, neurons) × (trained, held-out)
    for ax in panels:
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == (["1", "2", "4"] if "heads" in ax.get_title() else ["16", "64"])
    assert panels[0].get_title() == "llama_tiny · stage · heads, trained"
    heights = sorted({round(p.get_height(), 6) for ax in panels for p in ax.patches})
    assert heights == [0.0, 0.6]  # the top units drop 0.8 − 0.2; the random ones nothing


def test_people_control_sets_same_and_other_people_side_by_side_over_the_null_line():
    rows = [(m, s, d, seed, "global", k, 3.0 + seed, 1.0) for m, s, d, seed, k in
            itertools.product(MODELS, STRATEGIES, ("endpoint", "trajectory"), (0, 1),
                              (1.0, 5.0))]  # fmt: skip
    rows += [
        (m, s, "endpoint", 0, "per_tensor", 1.0, 9.0, 9.0)
        for m, s in itertools.product(MODELS, STRATEGIES)
    ]
    people = pd.DataFrame(rows, columns=["model", "strategy", "definition", "seed", "scope",
                                         "k_percent", "enrichment_same",
                                         "enrichment_other"])  # fmt: skip
    fig = plots.fig_people_control(people)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels][:4] == [
        "llama_tiny · stage, endpoint", "llama_tiny · stage, trajectory",
        "llama_tiny · mix, endpoint", "llama_tiny · mix, trajectory",
    ]  # fmt: skip
    heights = sorted({round(p.get_height(), 6) for ax in panels for p in ax.patches} - {0})
    assert heights == [1.0, 3.5]  # the global rows only; the mean over seeds
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["same people: BIO(A) ∩ QA(A)", "other people: BIO(A) ∩ QA(B)"]
    assert all(any(line.get_ydata()[0] == 1 for line in ax.lines) for ax in panels)
