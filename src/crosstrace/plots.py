"""Seaborn figures of the analysis tables, as PNG and PDF under results/figures/.

Figures (file stem → caption in workflow/report/<stem>.rst):

- ``accuracy``: exact-match accuracy by strategy × split × model (mean over seeds).
- ``shared_by_layer_module``: shared parameters per layer and module, stage vs mix.
- ``shared_head_heatmap``: layer × head heatmap of shared parameters per attention module.
- ``overlap_vs_k``: enrichment of the shared set over the stratified null, vs k.
- ``people_control``: enrichment of BIO ∩ QA on the same people vs on other people (at θT,
  and over training where the trace keeps the people halves).
- ``concentration``: Gini of the shared set over heads and neurons, next to each task's own.
- ``ablation``: accuracy drop when shared parameters are reset, vs the matched controls.
- ``unit_ablation``: accuracy drop when the heads or neurons holding the most shared elements
  are reset, vs layer-matched random units.
- ``consistency_vs_step``: cosine of the BIO and QA gradients on the probe batches during
  training (and of mixed training's own batches), per module, stage vs mix.
- ``consistency_by_set``: that cosine at θT and of the trace, on the shared set vs a matched
  random set vs every ranked parameter.
- ``representation``: per layer, the cosine of a person's name-token state in BIO and QA
  contexts (vs mismatched people), and the BIO→QA probe transfer.
- ``token_dependence``: the drop of log p(answer) when one prompt token is masked, by class.

The per-layer, per-head, concentration, ablation and θT-consistency figures show one ranking
(``definition`` and ``scope``): the trajectory Δ and the global top-k where they were ranked,
otherwise the first of each in the tables, named in the title.

Every faceted figure titles its panels "row · column" (or "column" with one row), keeps its
legend next to the panels, and wraps a long figure title to the figure's width.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, MaxNLocator

from crosstrace.atomic import atomic_file
from crosstrace.errors import ConfigError, InputDataError
from crosstrace.outputs import FIGURES
from crosstrace.runs import STRATEGIES

TITLES = {  # figure stem -> title
    "accuracy": "QA exact match and bio memorisation by training strategy",
    "training_curve": "Memorisation and recall during training",
    "shared_by_layer_module": "Shared parameters (top-k BIO ∩ top-k QA) per layer and module",
    "shared_head_heatmap": "Shared parameters per layer and head",
    "overlap_vs_k": "Shared parameters vs the stratified null",
    "people_control": "Overlap of BIO and QA gradients: the same people vs other people",
    "concentration": "Concentration of the shared set, next to each task's own top-k set",
    "ablation": "Accuracy drop when parameters are reset to θ0",
    "unit_ablation": "Accuracy drop when whole heads or neurons are reset to θ0",
    "consistency_vs_step": "Cosine of the BIO and QA gradients during training (probe batches)",
    "consistency_by_set": (
        "BIO–QA gradient cosine on the shared set, a matched random set and all ranked"
    ),
    "representation": "Name-token representations in BIO and QA contexts, per layer",
    "token_dependence": "Change of log p(answer) when one prompt token is masked (held-out people)",
}
SPLIT_ORDER = ["id", "ood", "bio_id", "bio_ood"]
FORMATS = ("png", "pdf", "svg")
CONDITION_ORDER = ["shared", "random", "magnitude", "bio_only", "qa_only"]
BIO_END = "stage θ_BIO"  # two-stage training's BIO checkpoint, drawn beside the strategies
CONSISTENCY_SOURCES = {  # consistency record source -> legend entry
    "probe_id": "probe, trained people",
    "probe_ood": "probe, held-out people",
    "probe_id_values": "probe, trained people, BIO loss on values",
    "probe_ood_values": "probe, held-out people, BIO loss on values",
    "step": "in-step (mixed training's own batches)",
}
PEOPLE_PAIRINGS = {
    "enrichment_same": "same people: BIO(A) ∩ QA(A)",
    "enrichment_other": "other people: BIO(A) ∩ QA(B)",
}
UNIT_SETS = ("most shared", "layer-matched random")
MODULE_ORDER = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"]


def load_tables(source: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Analysis tables from a tables folder (``<name>.parquet``) or a DuckDB file."""
    source = Path(source)
    names = (
        "accuracy",
        "training_curve",
        "shared_counts",
        "overlap",
        "ablation_draws",
        "unit_ablation_draws",
        "people_control",
        "concentration",
        "consistency_by_module",
        "consistency_by_set",
        "representation",
        "token_dependence",
    )
    if source.is_file():
        from crosstrace.database import connect

        con = connect(source)
        try:
            return {n: con.table(n).df() for n in names}
        finally:
            con.close()
    if not source.is_dir():
        raise InputDataError(f"no tables folder or database at {source}")
    return {
        n: pd.read_parquet(source / f"{n}.parquet")
        if (source / f"{n}.parquet").exists()
        else pd.DataFrame()
        for n in names
    }


def _pick_k(df: pd.DataFrame, k_percent: float | None) -> float | None:
    if df.empty:
        return None
    ks = sorted(df["k_percent"].unique())
    if k_percent is None:
        return float(ks[len(ks) // 2])
    if k_percent not in ks:
        raise ConfigError(f"k_percent {k_percent} is not among the tables' values {ks}")
    return float(k_percent)


class _NoData(Exception):
    """A figure's table is empty: the figure then says why instead."""


def _need(df: pd.DataFrame, why: str, k: float | None = 0.0) -> pd.DataFrame:
    """``df``, or :class:`_NoData` with ``why`` when it is empty (or no k was picked)."""
    if df.empty or k is None:
        raise _NoData(why)
    return df


def _empty(title: str, why: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def _ci(df: pd.DataFrame):
    """95 % interval bars over seeds, where there is more than one seed."""
    return ("ci", 95) if "seed" in df and df["seed"].nunique() > 1 else None


def _present(order: Sequence[str], values: pd.Series) -> list[str]:
    """``order`` restricted to the values that occur."""
    seen = set(values)
    return [v for v in order if v in seen]


def _grid(d: pd.DataFrame, kind: str, **facets) -> sns.FacetGrid:
    """A seaborn figure-level plot of ``d`` (``kind`` "bar": catplot, "line": relplot), with
    95 % intervals over seeds unless ``facets`` says otherwise."""
    facets = {"errorbar": _ci(d), **facets}
    if kind == "bar":
        return sns.catplot(data=d, kind="bar", **facets)
    return sns.relplot(data=d, kind="line", **facets)


def _bio_end_as_strategy(d: pd.DataFrame) -> pd.DataFrame:
    """Rows of two-stage training's θ_BIO (``checkpoint`` bio_end) as a strategy of their own,
    beside the final models."""
    d = d.copy()
    if "checkpoint" in d:
        d["strategy"] = d["strategy"].where(d["checkpoint"] != "bio_end", BIO_END)
    return d


def _by_strategy(d: pd.DataFrame, kind: str, **facets) -> sns.FacetGrid:
    """:func:`_grid` with the strategies (and θ_BIO, where present) as colours, in one order."""
    order = _present([*STRATEGIES, BIO_END], d["strategy"])
    return _grid(d, kind, hue="strategy", hue_order=order, **facets)


def _suptitle(fig: plt.Figure, title: str, *, above: bool = True) -> None:
    """The figure title, wrapped to the figure's width (a long one would widen the saved
    figure and leave the panels and the legend adrift in white space); ``above``: just above
    the panels' titles, however many lines it takes (a constrained layout places it itself)."""
    chars = max(40, int(fig.get_figwidth() * 72 / 6.5))  # ~6.5 pt per character at 12 pt
    text = textwrap.fill(title, chars)
    if above:
        fig.suptitle(text, y=1.0, va="bottom")
    else:
        fig.suptitle(text)


def _titles(g: sns.FacetGrid) -> None:
    """Facet titles in one style for every figure: "row · column", or "column" alone."""
    if g.row_names and g.col_names:
        g.set_titles("{row_name} · {col_name}")
    elif g.row_names:
        g.set_titles("{row_name}")
    else:
        g.set_titles("{col_name}")


def _finish(g: sns.FacetGrid, title: str, *, zero_line: bool = False) -> plt.Figure:
    """Facet titles in one style, an optional line at 0, the legend right beside the top
    right panel, and the figure title."""
    _titles(g)
    if zero_line:
        for ax in g.axes.flat:
            ax.axhline(0, color="k", lw=0.6)
    if g.legend is not None:
        sns.move_legend(g, "upper left", bbox_to_anchor=(1.04, 1.0), frameon=False,
                        bbox_transform=g.axes[0, -1].transAxes)  # fmt: skip
    _suptitle(g.figure, title)
    return g.figure


def _label_bars(ax: plt.Axes, fmt: str = "{:.2f}") -> None:
    """The value above each bar, so that a bar at 0 reads "0.00" and is not taken for a
    missing one."""
    for bars in ax.containers:
        labels = [fmt.format(bar.get_height()) for bar in bars]
        ax.bar_label(bars, labels=labels, padding=1, fontsize="x-small", rotation=90)


def _mark_missing(g: sns.FacetGrid, d: pd.DataFrame, row: str, col: str, why: str) -> None:
    """Panels without data (columns ``row`` × ``col`` of ``d``) say why, ``why`` formatted
    with the panel's ``row`` and ``col`` values, instead of showing empty axes."""
    for (r, c), ax in g.axes_dict.items():
        if d[(d[row] == r) & (d[col] == c)].empty:
            for artist in [*ax.lines, *ax.collections, *ax.patches]:
                artist.remove()  # not ax.clear(): that resets the axis it shares
            ax.set_axis_off()
            ax.text(0.5, 0.5, why.format(row=r, col=c), ha="center", va="center",
                    transform=ax.transAxes, wrap=True)  # fmt: skip


MEASURES = {  # split -> (panel row, people)
    "id": ("QA exact match", "QA trained"),
    "ood": ("QA exact match", "held out (OOD)"),
    "bio_id": ("bio memorisation", "QA trained"),
    "bio_ood": ("bio memorisation", "held out (OOD)"),
}


def fig_accuracy(acc: pd.DataFrame) -> plt.Figure:
    """QA exact match and, in its own row, the memorisation of the bios (the first token of
    each attribute value, teacher-forced); every bar carries its value, so 0 is seen."""
    title = TITLES["accuracy"]
    _need(acc, "no predictions in the accuracy table")
    d = _bio_end_as_strategy(acc[acc["attribute"] == "all"])
    d["measure"] = d["split"].map(lambda s: MEASURES[s][0])
    d["people"] = d["split"].map(lambda s: MEASURES[s][1])
    rows = [m for m in dict.fromkeys(v[0] for v in MEASURES.values()) if m in set(d["measure"])]
    g = _grid(d, "bar", x="strategy", y="accuracy", hue="people", col="model", row="measure",
              order=_present(["mix", BIO_END, "stage"], d["strategy"]), row_order=rows,
              hue_order=["QA trained", "held out (OOD)"], height=2.6, aspect=1.3)  # fmt: skip
    g.set(ylim=(0, 1.15))
    g.set_axis_labels("training strategy", "accuracy")
    for ax in g.axes.flat:
        _label_bars(ax)
    return _finish(g, title)


def primary(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of one ranking, the same in every figure: the trajectory Δ and the global
    top-k where they were ranked, otherwise the first of the table; and a label for titles."""
    if df.empty or "definition" not in df:
        return df, ""
    defs, scopes = list(df["definition"].unique()), list(df["scope"].unique())
    d0 = "trajectory" if "trajectory" in defs else defs[0]
    s0 = "global" if "global" in scopes else scopes[0]
    return df[(df["definition"] == d0) & (df["scope"] == s0)], f"{d0} Δ, {s0} top-k"


def fig_shared_layer_module(shared: pd.DataFrame, k: float | None) -> plt.Figure:
    title = TITLES["shared_by_layer_module"]
    _need(shared, "no shared_counts", k)
    shared, label = primary(shared)
    d = shared[(shared["k_percent"] == k) & shared["layer"].notna()]
    d = d.groupby(["model", "strategy", "seed", "layer", "module"], as_index=False)[
        "n_shared"
    ].sum()
    d = d.groupby(["model", "strategy", "layer", "module"], as_index=False)["n_shared"].mean()
    d["layer"] = d["layer"].astype(int)
    g = _grid(d, "bar", x="layer", y="n_shared", hue="module", col="strategy", row="model",
              hue_order=_present(MODULE_ORDER, d["module"]),
              col_order=_present(STRATEGIES, d["strategy"]), height=3.2, aspect=1.4,
              sharey="row", errorbar=None)  # fmt: skip
    g.set_axis_labels("layer", "shared parameters")
    return _finish(g, f"{title}, k = {k:g}%, {label} (mean over seeds)")


def _heatmap(ax: plt.Axes, grid: pd.DataFrame, vmax: float) -> None:
    """``grid`` as cells, first row at the top, one labelled tick per row and column: what
    ``sns.heatmap`` draws, without the whole-figure draw it makes per panel to test whether
    tick labels overlap (16 panels under a constrained layout took 16 s)."""
    ax.pcolormesh(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=vmax)
    ax.set(xlim=(0, grid.shape[1]), ylim=(grid.shape[0], 0))
    ax.set_xticks([i + 0.5 for i in range(grid.shape[1])], [str(c) for c in grid.columns])
    ax.set_yticks([i + 0.5 for i in range(grid.shape[0])], [str(r) for r in grid.index])
    ax.tick_params(length=0)
    ax.grid(False)
    sns.despine(ax=ax, left=True, bottom=True)


def fig_head_heatmap(shared: pd.DataFrame, k: float | None) -> plt.Figure:
    title = TITLES["shared_head_heatmap"]
    _need(shared, "no shared_counts", k)
    shared, label = primary(shared)
    d = shared[(shared["k_percent"] == k) & shared["head"].notna() & shared["layer"].notna()]
    d = d[d["module"].str.startswith("attn.")]
    if d.empty:
        raise _NoData("no attention heads among the ranked modules")
    d = d.groupby(["model", "strategy", "module", "layer", "head"], as_index=False)[
        "n_shared"
    ].mean()
    runs = sorted({(m, s) for m, s in zip(d["model"], d["strategy"], strict=True)})
    modules = [m for m in ("attn.q", "attn.k", "attn.v", "attn.o") if m in set(d["module"])]
    fig, axes = plt.subplots(len(runs), len(modules), squeeze=False, layout="constrained",
                             figsize=(2.8 * len(modules) + 1.2, 2.3 * len(runs) + 0.8))  # fmt: skip
    vmax = float(d["n_shared"].max()) or 1.0
    for i, (model, strategy) in enumerate(runs):
        n_q = d[(d["model"] == model) & (d["module"] == "attn.q")]["head"].nunique()
        for j, module in enumerate(modules):
            ax = axes[i][j]
            part = d[(d["model"] == model) & (d["strategy"] == strategy) & (d["module"] == module)]
            grid = part.pivot_table(index="layer", columns="head", values="n_shared", aggfunc="sum")
            grid.index = grid.index.astype(int)
            grid.columns = grid.columns.astype(int)
            _heatmap(ax, grid, vmax)
            gqa = module in ("attn.k", "attn.v") and part["head"].nunique() < n_q
            ax.set_title(f"{model} · {strategy} · {module}")
            ax.set_xlabel("KV head" if gqa else "head")
            ax.set_ylabel("layer" if j == 0 else "")
    # one scale for every panel, so one colour bar for the figure
    fig.colorbar(axes[0][0].collections[0], ax=axes, shrink=0.6, label="shared parameters")
    _suptitle(fig, f"{title}, k = {k:g}%, {label} (mean over seeds)", above=False)
    return fig


def fig_overlap(overlap: pd.DataFrame) -> plt.Figure:
    title = TITLES["overlap_vs_k"]
    _need(overlap, "no overlap table")
    d = overlap.copy()
    d["definition"] = d["definition"] + " Δ"
    d["scope"] = d["scope"] + " top-k"
    g = _by_strategy(d, "line", x="k_percent", y="enrichment", style="model", col="scope",
                     row="definition", markers=True, height=3.0, aspect=1.2,
                     facet_kws={"sharey": "row"})  # fmt: skip
    ks = sorted(d["k_percent"].unique())
    for ax in g.axes.flat:
        ax.axhline(1.0, color="grey", ls=":", lw=2)
        ax.set_xscale("log")
        ax.set_xticks(ks, [f"{k:g}" for k in ks])
        ax.minorticks_off()
    g.set_axis_labels("k (% of ranked parameters)", "shared / expected by the null")
    return _finish(
        g,
        f"{title}: 1 (dotted) = two independent top-k sets with the observed size in every "
        "head slice / tensor; one y scale per row",
    )


def fig_people_control(people: pd.DataFrame) -> plt.Figure:
    """Enrichment over the stratified null of BIO(A) ∩ QA(A) and BIO(A) ∩ QA(B), global
    top-k, per k, run, definition (endpoint, trajectory) and model."""
    title = TITLES["people_control"]
    _need(people, "no people control table")
    d = people[people["scope"] == "global"] if "global" in set(people["scope"]) else people
    d = d.melt(id_vars=["model", "strategy", "definition", "seed", "k_percent"],
               value_vars=["enrichment_same", "enrichment_other"], var_name="people",
               value_name="enrichment")  # fmt: skip
    d["people"] = d["people"].map(PEOPLE_PAIRINGS)
    d["k"] = d["k_percent"].map(lambda k: f"{k:g}%")
    d["panel"] = d["strategy"] + ", " + d["definition"]  # one panel per strategy and definition
    panels = [f"{s}, {x}" for s in _present(STRATEGIES, d["strategy"])
              for x in sorted(d["definition"].unique())]  # fmt: skip
    g = _grid(d, "bar", x="k", y="enrichment", hue="people",
              hue_order=list(PEOPLE_PAIRINGS.values()), col="panel", row="model",
              col_order=[p for p in panels if p in set(d["panel"])],
              order=[f"{k:g}%" for k in sorted(d["k_percent"].unique())], height=2.6,
              aspect=1.3)  # fmt: skip
    g.set_axis_labels("k (global top-k)", "shared / stratified null")
    for ax in g.axes.flat:
        ax.axhline(1, color="k", lw=0.6, ls="--")
    return _finish(g, f"{title} (BIO of half A; QA of A or of B; 1 = the null)")


def fig_concentration(conc: pd.DataFrame, k: float | None) -> plt.Figure:
    title = TITLES["concentration"]
    _need(conc, "no concentration table", k)
    conc, label = primary(conc)
    d = conc[(conc["k_percent"] == k) & conc["unit"].isin(["head", "neuron"])]
    g = _by_strategy(d, "bar", x="set", y="gini", col="unit", row="model",
                     order=["shared", "null", "bio", "qa"], height=3.0, aspect=1.1)  # fmt: skip
    g.set(ylim=(0, 1))
    g.set_axis_labels("top-k set", "Gini over units")
    return _finish(g, f"{title}, k = {k:g}%, {label}")


def fig_ablation(draws: pd.DataFrame) -> plt.Figure:
    title = TITLES["ablation"]
    _need(draws, "no ablation results")
    draws, label = primary(draws)
    if "counterfactual" in draws:  # the resets to θ0 (removals of one task's updates apart)
        draws = draws[draws["counterfactual"].isin(["none", "reset"])]
    keys = ["model", "strategy", "seed", "split"]
    base = draws[draws["condition"] == "none"].groupby(keys)["accuracy"].first()
    d = draws[draws["condition"] != "none"].merge(base.rename("accuracy_none").reset_index(),
                                                  on=keys)  # fmt: skip
    d["accuracy_drop"] = d["accuracy_none"] - d["accuracy"]
    d["run"] = d["model"] + " · " + d["strategy"]
    d["k"] = d["k_percent"].map(lambda k: f"k = {k:g}%")
    g = _grid(d, "bar", x="condition", y="accuracy_drop", hue="split", col="k", row="run",
              order=_present(CONDITION_ORDER, d["condition"]), errorbar="sd", height=2.4,
              aspect=1.5)  # fmt: skip
    g.set_axis_labels("reset set", "")
    g.figure.supylabel("accuracy drop (θT − ablated)")
    theta = base.groupby(["model", "strategy", "split"]).mean()
    for (run, _k), ax in g.axes_dict.items():
        acc = theta.loc[tuple(run.split(" · "))]
        if (acc == 0).all():  # nothing can drop: say so instead of an empty panel
            ax.text(0.5, 0.5, "θT accuracy is 0:\nno drop is possible", ha="center",
                    va="center", transform=ax.transAxes, backgroundcolor="white")  # fmt: skip
        else:
            note = "θT: " + " · ".join(f"{split} {a:.2f}" for split, a in acc.items())
            ax.text(0.02, 0.97, note, transform=ax.transAxes, va="top", fontsize="small")
        ax.tick_params(axis="x", rotation=20)
    return _finish(
        g,
        f"{title} ({label}): shared vs matched controls (error bars: sd over draws and seeds)",
        zero_line=True,
    )


def fig_unit_ablation(units: pd.DataFrame, draws: pd.DataFrame) -> plt.Figure:
    """The top-n units by shared count vs layer-matched random units: the accuracy drop from
    θT (the ablation's condition ``none``, scored on the same questions)."""
    title = TITLES["unit_ablation"]
    _need(units, "no unit ablation results")
    _need(draws, "no ablation results (θT's accuracy on the ablation questions)")
    keys = ["model", "strategy", "seed", "split"]
    base = draws[draws["condition"] == "none"].groupby(keys)["accuracy"].first()
    d = units.merge(base.rename("accuracy_none").reset_index(), on=keys)
    d["accuracy_drop"] = d["accuracy_none"] - d["accuracy"]
    d["run"] = d["model"] + " · " + d["strategy"]
    d["units"] = d["unit"] + "s, " + d["split"].map({"id": "trained", "ood": "held-out"})
    d["set"] = d["condition"].map(dict(zip(("top", "random"), UNIT_SETS, strict=True)))
    d["n"] = d["n_units"].astype(str)
    cols = [f"{u}s, {p}" for u in ("head", "neuron") for p in ("trained", "held-out")]
    runs = [f"{m} · {s}" for m in sorted(d["model"].unique()) for s in STRATEGIES]
    g = sns.FacetGrid(d, row="run", col="units", row_order=_present(runs, d["run"]),
                      col_order=_present(cols, d["units"]), height=2.4, aspect=1.7,
                      sharex=False)  # fmt: skip
    palette = dict(zip(UNIT_SETS, sns.color_palette(n_colors=2), strict=True))

    def bars(data: pd.DataFrame, **_ignored) -> None:  # each panel: its own kind's counts
        order = [str(n) for n in sorted(data["n_units"].unique())]
        sns.barplot(data=data, x="n", y="accuracy_drop", hue="set", hue_order=list(UNIT_SETS),
                    order=order, palette=palette, errorbar="sd", legend=False)  # fmt: skip

    g.map_dataframe(bars)
    g.add_legend(legend_data={s: Patch(color=c) for s, c in palette.items()}, title="")
    g.set_axis_labels("units reset", "")
    g.figure.supylabel("accuracy drop (θT − ablated)")
    k = d["k_percent"].iloc[0]
    return _finish(
        g,
        f"{title}: most shared (k = {k:g}%, {d['definition'].iloc[0]}) vs layer-matched "
        "random units (error bars: sd over draws and seeds)",
        zero_line=True,
    )


def fig_training_curve(curve: pd.DataFrame) -> plt.Figure:
    """QA exact match and bio memorisation at a few points of each phase, over the run's
    steps (two-stage: the BIO stage, then the QA stage)."""
    title = TITLES["training_curve"]
    _need(curve, "no training curve")
    d = curve.copy()
    d["measure"] = d["split"].map(lambda s: f"{MEASURES[s][0]},\n{MEASURES[s][1]}")
    cols = [f"{m},\n{p}" for m, p in MEASURES.values() if f"{m},\n{p}" in set(d["measure"])]
    g = _by_strategy(d, "line", x="run_step", y="accuracy", col="measure", row="model",
                     col_order=cols, markers=True, height=2.6, aspect=1.1)  # fmt: skip
    g.set(ylim=(-0.02, 1.02))
    g.set_axis_labels("", "accuracy")
    for ax in g.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True, prune="upper"))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    g.figure.supxlabel("optimizer step (two-stage: the BIO stage, then the QA stage)", y=0.0)
    return _finish(g, title)


def fig_consistency_vs_step(cons: pd.DataFrame) -> plt.Figure:
    title = TITLES["consistency_vs_step"]
    _need(cons, "no consistency records")
    d = cons[cons["source"].isin(list(CONSISTENCY_SOURCES))].copy()
    d["source"] = d["source"].map(CONSISTENCY_SOURCES)
    g = _by_strategy(d, "line", x="run_step", y="cosine", style="source", col="module",
                     row="model", col_order=_present(MODULE_ORDER, d["module"]), height=2.4,
                     aspect=1.0, style_order=_present(CONSISTENCY_SOURCES.values(),
                                                      d["source"]))  # fmt: skip
    g.set_axis_labels("", "cos(g_BIO, g_QA)")
    for ax in g.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True, prune="upper"))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 2000 -> "2k"
    g.figure.supxlabel("training step (stage: the BIO stage, then the QA stage)", y=0.0)
    fig = _finish(g, title, zero_line=True)
    _mark_missing(g, d, "model", "module", "{row} has no {col}")
    return fig


def fig_consistency_by_set(by_set: pd.DataFrame, k: float | None) -> plt.Figure:
    title = TITLES["consistency_by_set"]
    _need(by_set, "no consistency_by_set table", k)
    by_set, label = primary(by_set)
    d = by_set[by_set["k_percent"] == k]
    g = _by_strategy(d, "bar", x="set", y="cosine", col="source", row="model",
                     order=["shared", "random", "all"], height=2.8, aspect=1.0)  # fmt: skip
    return _finish(
        g,
        f"{title}, k = {k:g}%, {label} (trace: Δ over training; probe_*: gradients at θT)",
        zero_line=True,
    )


def fig_representation(rep: pd.DataFrame) -> plt.Figure:
    title = TITLES["representation"]
    _need(rep, "no representation table")
    rep = _bio_end_as_strategy(rep)
    cos = rep[rep["measure"] == "cosine"]
    cos = cos.groupby(["model", "strategy", "seed", "layer", "split"], as_index=False)[
        ["value", "baseline"]
    ].mean()
    long = cos.melt(
        id_vars=["model", "strategy", "seed", "layer", "split"],
        value_vars=["value", "baseline"],
        var_name="pair",
        value_name="y",
    )
    long["pair"] = long["pair"].map({"value": "same person", "baseline": "other person"})
    long["panel"] = "cosine BIO vs QA state"
    tr = (
        rep[rep["measure"] == "transfer"]
        .groupby(["model", "strategy", "seed", "layer"], as_index=False)[["value", "baseline"]]
        .mean()
    )
    tr = tr.rename(columns={"value": "y"}).assign(pair="probe BIO→QA", panel="probe transfer")
    d = pd.concat([long, tr[long.columns.intersection(tr.columns)]], ignore_index=True)
    d = d[(d.get("split", "ood") != "id") | (d["panel"] != "cosine BIO vs QA state")]
    g = _by_strategy(d, "line", x="layer", y="y", style="pair", col="panel", row="model",
                     markers=True, height=2.8, aspect=1.2, facet_kws={"sharey": False})  # fmt: skip
    g.set_axis_labels("layer (0 = embeddings)", "")
    for ax in g.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    before_qa = "; stage θ_BIO: before the QA stage" if (rep["strategy"] == BIO_END).any() else ""
    return _finish(g, f"{title} (held-out people{before_qa})")


def fig_token_dependence(td: pd.DataFrame) -> plt.Figure:
    title = TITLES["token_dependence"]
    _need(td, "no token_dependence table")
    d = td.groupby(["model", "strategy", "seed", "token_class"], as_index=False)["delta"].mean()
    g = _by_strategy(d, "bar", x="token_class", y="delta", col="model",
                     order=["name", "relation", "other"], height=3.0, aspect=1.1)  # fmt: skip
    g.set_axis_labels("masked token", "Δ log p(answer)")
    return _finish(g, title, zero_line=True)


def make_figures(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 150,
    style: str = "whitegrid",
    k_percent: float | None = None,
) -> list[Path]:
    """Write every figure in every format; return the paths (``<out_dir>/<stem>.<fmt>``).

    ``source`` is the tables folder or the DuckDB file. ``k_percent`` picks the k of the
    per-layer and per-head figures (default: the middle of the tables' k values).
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"plot formats {bad} are not among {list(FORMATS)}")
    t = load_tables(source)
    k = _pick_k(t["shared_counts"], k_percent)
    sns.set_theme(style=style)
    builders = {
        "accuracy": lambda: fig_accuracy(t["accuracy"]),
        "training_curve": lambda: fig_training_curve(t["training_curve"]),
        "shared_by_layer_module": lambda: fig_shared_layer_module(t["shared_counts"], k),
        "shared_head_heatmap": lambda: fig_head_heatmap(t["shared_counts"], k),
        "overlap_vs_k": lambda: fig_overlap(t["overlap"]),
        "people_control": lambda: fig_people_control(t["people_control"]),
        "concentration": lambda: fig_concentration(t["concentration"], k),
        "ablation": lambda: fig_ablation(t["ablation_draws"]),
        "unit_ablation": lambda: fig_unit_ablation(t["unit_ablation_draws"], t["ablation_draws"]),
        "consistency_vs_step": lambda: fig_consistency_vs_step(t["consistency_by_module"]),
        "consistency_by_set": lambda: fig_consistency_by_set(t["consistency_by_set"], k),
        "representation": lambda: fig_representation(t["representation"]),
        "token_dependence": lambda: fig_token_dependence(t["token_dependence"]),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem in FIGURES:
        try:
            fig = builders[stem]()
        except _NoData as exc:
            fig = _empty(TITLES[stem], str(exc))
        try:
            for fmt in formats:
                path = out_dir / f"{stem}.{fmt}"
                with atomic_file(path) as tmp:
                    fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
                paths.append(path)
        finally:
            plt.close(fig)
    return paths
