"""Seaborn figures of the analysis tables, as PNG and PDF under results/figures/.

Figures (file stem → caption in workflow/report/<stem>.rst):

- ``accuracy``: exact-match accuracy by strategy × split × model (mean over seeds).
- ``shared_by_layer_module``: shared parameters per layer and module, stage vs mix.
- ``shared_head_heatmap``: layer × head heatmap of shared parameters per attention module.
- ``overlap_vs_k``: enrichment of the shared set over the stratified null, vs k.
- ``concentration``: Gini of the shared set over heads and neurons, next to each task's own.
- ``ablation``: accuracy drop when shared parameters are reset, vs the matched controls.
- ``consistency_vs_step``: cosine of the BIO and QA gradients on the probe batches during
  training, per module, stage vs mix.
- ``consistency_by_set``: that cosine at θT and of the trace, on the shared set vs a matched
  random set vs every ranked parameter.
- ``representation``: per layer, the cosine of a person's name-token state in BIO and QA
  contexts (vs mismatched people), and the BIO→QA probe transfer.
- ``token_dependence``: the drop of log p(answer) when one prompt token is masked, by class.

The per-layer, per-head and concentration figures show one ranking (``definition`` and
``scope``): the first of each in the tables (the config's order), named in the title.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from crosstrace.atomic import atomic_file
from crosstrace.errors import ConfigError, InputDataError

FIGURES = (
    "accuracy",
    "shared_by_layer_module",
    "shared_head_heatmap",
    "overlap_vs_k",
    "concentration",
    "ablation",
    "consistency_vs_step",
    "consistency_by_set",
    "representation",
    "token_dependence",
)
SPLIT_ORDER = ["id", "ood", "bio_id", "bio_ood"]
FORMATS = ("png", "pdf", "svg")
CONDITION_ORDER = ["shared", "random", "bio_only", "qa_only"]
MODULE_ORDER = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"]


def load_tables(source: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Analysis tables from a tables folder (``<name>.parquet``) or a DuckDB file."""
    source = Path(source)
    names = (
        "accuracy",
        "shared_counts",
        "overlap",
        "ablation_draws",
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


def _empty(title: str, why: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def fig_accuracy(acc: pd.DataFrame) -> plt.Figure:
    title = "QA exact-match accuracy by training strategy"
    if acc.empty:
        return _empty(title, "no predictions in the accuracy table")
    d = acc[acc["attribute"] == "all"]
    g = sns.catplot(
        data=d,
        x="strategy",
        y="accuracy",
        hue="split",
        col="model",
        kind="bar",
        hue_order=[s for s in SPLIT_ORDER if s in set(d["split"])],
        errorbar=("ci", 95) if d["seed"].nunique() > 1 else None,
        height=3.5,
        aspect=1.0,
    )
    g.set(ylim=(0, 1.05))
    g.set_axis_labels("training strategy", "exact-match accuracy")
    g.set_titles("{col_name}")
    g.legend.set_title("split")
    sns.move_legend(g, "upper left", bbox_to_anchor=(1.0, 0.9))
    g.figure.suptitle(title, y=1.04)
    g.figure.text(
        0.5,
        -0.04,
        "id: people whose QA was trained · ood: held-out people · bio_*: first attribute token "
        "in their bios (teacher-forced)",
        ha="center",
    )
    return g.figure


def primary(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of the first definition and scope in the table, and a label for titles."""
    if df.empty or "definition" not in df:
        return df, ""
    d0, s0 = df["definition"].iloc[0], df["scope"].iloc[0]
    return df[(df["definition"] == d0) & (df["scope"] == s0)], f"{d0} Δ, {s0} top-k"


def fig_shared_layer_module(shared: pd.DataFrame, k: float | None) -> plt.Figure:
    title = "Shared parameters (top-k BIO ∩ top-k QA) per layer and module"
    if shared.empty or k is None:
        return _empty(title, "no shared_counts")
    shared, label = primary(shared)
    d = shared[(shared["k_percent"] == k) & shared["layer"].notna()]
    d = d.groupby(["model", "strategy", "seed", "layer", "module"], as_index=False)[
        "n_shared"
    ].sum()
    d = d.groupby(["model", "strategy", "layer", "module"], as_index=False)["n_shared"].mean()
    d["layer"] = d["layer"].astype(int)
    g = sns.catplot(
        data=d,
        x="layer",
        y="n_shared",
        hue="module",
        col="strategy",
        row="model",
        kind="bar",
        hue_order=[m for m in MODULE_ORDER if m in set(d["module"])],
        col_order=[s for s in ("stage", "mix") if s in set(d["strategy"])],
        height=3.2,
        aspect=1.4,
        sharey="row",
    )
    g.set_axis_labels("layer", "shared parameters")
    g.set_titles("{row_name} · {col_name}")
    g.figure.suptitle(f"{title}, k = {k:g}%, {label} (mean over seeds)", y=1.03)
    return g.figure


def fig_head_heatmap(shared: pd.DataFrame, k: float | None) -> plt.Figure:
    title = "Shared parameters per layer and head"
    if shared.empty or k is None:
        return _empty(title, "no shared_counts")
    shared, label = primary(shared)
    d = shared[(shared["k_percent"] == k) & shared["head"].notna() & shared["layer"].notna()]
    d = d[d["module"].str.startswith("attn.")]
    if d.empty:
        return _empty(title, "no attention heads among the ranked modules")
    d = d.groupby(["model", "strategy", "module", "layer", "head"], as_index=False)[
        "n_shared"
    ].mean()
    runs = sorted({(m, s) for m, s in zip(d["model"], d["strategy"], strict=True)})
    modules = [m for m in ("attn.q", "attn.k", "attn.v", "attn.o") if m in set(d["module"])]
    fig, axes = plt.subplots(
        len(runs),
        len(modules),
        figsize=(3.2 * len(modules) + 1, 2.6 * len(runs) + 0.6),
        squeeze=False,
    )
    vmax = float(d["n_shared"].max()) or 1.0
    for i, (model, strategy) in enumerate(runs):
        for j, module in enumerate(modules):
            ax = axes[i][j]
            part = d[(d["model"] == model) & (d["strategy"] == strategy) & (d["module"] == module)]
            grid = part.pivot_table(index="layer", columns="head", values="n_shared", aggfunc="sum")
            grid.index = grid.index.astype(int)
            grid.columns = grid.columns.astype(int)
            sns.heatmap(
                grid,
                ax=ax,
                cmap="viridis",
                vmin=0,
                vmax=vmax,
                cbar=j == len(modules) - 1,
                cbar_kws={"label": "shared parameters"},
            )
            n_q = d[(d["model"] == model) & (d["module"] == "attn.q")]["head"].nunique()
            gqa = module in ("attn.k", "attn.v") and part["head"].nunique() < n_q
            kv = " (KV head)" if gqa else ""
            ax.set_title(f"{model} · {strategy} · {module}", fontsize=9)
            ax.set_xlabel(f"head{kv}")
            ax.set_ylabel("layer")
    fig.suptitle(f"{title}, k = {k:g}%, {label} (mean over seeds)")
    fig.tight_layout()
    return fig


def fig_overlap(overlap: pd.DataFrame) -> plt.Figure:
    title = "Shared parameters vs the stratified null"
    if overlap.empty:
        return _empty(title, "no overlap table")
    d = overlap.copy()
    d["ranking"] = d["definition"] + " · " + d["scope"]
    g = sns.relplot(
        data=d,
        x="k_percent",
        y="enrichment",
        hue="strategy",
        style="model",
        col="ranking",
        kind="line",
        markers=True,
        errorbar=("ci", 95) if d["seed"].nunique() > 1 else None,
        height=3.4,
        aspect=1.1,
        facet_kws={"sharey": False},
    )
    ks = sorted(d["k_percent"].unique())
    for ax in g.axes.flat:
        ax.axhline(1.0, color="grey", ls=":", lw=2)
        ax.set_xscale("log")
        ax.set_xticks(ks, [f"{k:g}" for k in ks])
        ax.minorticks_off()
    g.set_axis_labels("k (% of ranked parameters)", "n_shared / expected_shared")
    g.set_titles("{col_name}")
    g.figure.suptitle(
        f"{title}: 1 (dotted) = two independent top-k sets with the observed size in every "
        "head slice / tensor",
        y=1.05,
    )
    return g.figure


def fig_concentration(conc: pd.DataFrame, k: float | None) -> plt.Figure:
    title = "Concentration of the shared set, next to each task's own top-k set"
    if conc.empty or k is None:
        return _empty(title, "no concentration table")
    conc, label = primary(conc)
    d = conc[(conc["k_percent"] == k) & conc["unit"].isin(["head", "neuron"])]
    g = sns.catplot(
        data=d,
        x="set",
        y="gini",
        hue="strategy",
        col="unit",
        row="model",
        kind="bar",
        order=["shared", "bio", "qa"],
        hue_order=[s for s in ("stage", "mix") if s in set(d["strategy"])],
        errorbar=("ci", 95) if d["seed"].nunique() > 1 else None,
        height=3.0,
        aspect=1.1,
    )
    g.set(ylim=(0, 1))
    g.set_axis_labels("top-k set", "Gini over units")
    g.set_titles("{row_name} · {col_name}s")
    g.figure.suptitle(f"{title}, k = {k:g}%, {label}", y=1.03)
    return g.figure


def fig_ablation(draws: pd.DataFrame) -> plt.Figure:
    title = "Accuracy drop when parameters are reset to θ0"
    if draws.empty:
        return _empty(title, "no ablation results")
    draws, label = primary(draws)
    none = draws[draws["condition"] == "none"].groupby(["model", "strategy", "seed", "split"])[
        "accuracy"
    ]
    base = none.first().rename("accuracy_none").reset_index()
    d = draws[draws["condition"] != "none"].merge(base, on=["model", "strategy", "seed", "split"])
    d["accuracy_drop"] = d["accuracy_none"] - d["accuracy"]
    d["run"] = d["model"] + " · " + d["strategy"]
    d["k"] = d["k_percent"].map(lambda k: f"k = {k:g}%")
    g = sns.catplot(
        data=d,
        x="condition",
        y="accuracy_drop",
        hue="split",
        col="k",
        row="run",
        kind="bar",
        order=[c for c in CONDITION_ORDER if c in set(d["condition"])],
        errorbar="sd",
        height=3.0,
        aspect=1.2,
    )
    g.set_axis_labels("reset set", "accuracy drop (θT − ablated)")
    g.set_titles("{row_name} · {col_name}")
    for ax in g.axes.flat:
        ax.axhline(0, color="k", lw=0.8)
        ax.tick_params(axis="x", rotation=20)
    g.figure.suptitle(
        f"{title} ({label}): shared vs matched controls (error bars: sd over draws and seeds)",
        y=1.03,
    )
    return g.figure


def _ci(df: pd.DataFrame):
    return ("ci", 95) if "seed" in df and df["seed"].nunique() > 1 else None


def fig_consistency_vs_step(cons: pd.DataFrame) -> plt.Figure:
    title = "Cosine of the BIO and QA gradients during training (probe batches)"
    if cons.empty:
        return _empty(title, "no consistency records")
    d = cons[cons["source"].isin(["probe_id", "probe_ood"])].copy()
    d["source"] = d["source"].map({"probe_id": "trained people", "probe_ood": "held-out people"})
    g = sns.relplot(
        data=d,
        x="run_step",
        y="cosine",
        hue="strategy",
        style="source",
        col="module",
        row="model",
        kind="line",
        errorbar=_ci(d),
        col_order=[m for m in MODULE_ORDER if m in set(d["module"])],
        hue_order=[s for s in ("stage", "mix") if s in set(d["strategy"])],
        height=2.6,
        aspect=1.1,
    )
    for ax in g.axes.flat:
        ax.axhline(0, color="k", lw=0.6)
    g.set_axis_labels("training step (stage: BIO, then QA)", "cos(g_BIO, g_QA)")
    g.set_titles("{row_name} · {col_name}")
    g.figure.suptitle(title, y=1.03)
    return g.figure


def fig_consistency_by_set(by_set: pd.DataFrame, k: float | None) -> plt.Figure:
    title = "BIO–QA gradient cosine on the shared set, a matched random set and all ranked"
    if by_set.empty or k is None:
        return _empty(title, "no consistency_by_set table")
    by_set, label = primary(by_set)
    d = by_set[by_set["k_percent"] == k]
    g = sns.catplot(
        data=d,
        x="set",
        y="cosine",
        hue="strategy",
        col="source",
        row="model",
        kind="bar",
        order=["shared", "random", "all"],
        hue_order=[s for s in ("stage", "mix") if s in set(d["strategy"])],
        errorbar=_ci(d),
        height=2.8,
        aspect=1.0,
    )
    for ax in g.axes.flat:
        ax.axhline(0, color="k", lw=0.6)
    g.set_titles("{row_name} · {col_name}")
    g.figure.suptitle(
        f"{title}, k = {k:g}%, {label} (trace: Δ over training; probe_*: gradients at θT)",
        y=1.03,
    )
    return g.figure


def fig_representation(rep: pd.DataFrame) -> plt.Figure:
    title = "Name-token representations in BIO and QA contexts, per layer"
    if rep.empty:
        return _empty(title, "no representation table")
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
    g = sns.relplot(
        data=d,
        x="layer",
        y="y",
        hue="strategy",
        style="pair",
        col="panel",
        row="model",
        kind="line",
        markers=True,
        errorbar=_ci(d),
        hue_order=[s for s in ("stage", "mix") if s in set(d["strategy"])],
        height=2.8,
        aspect=1.2,
        facet_kws={"sharey": False},
    )
    g.set_axis_labels("layer (0 = embeddings)", "")
    g.set_titles("{row_name} · {col_name}")
    g.figure.suptitle(f"{title} (held-out people)", y=1.03)
    return g.figure


def fig_token_dependence(td: pd.DataFrame) -> plt.Figure:
    title = "Change of log p(answer) when one prompt token is masked (held-out people)"
    if td.empty:
        return _empty(title, "no token_dependence table")
    d = td.groupby(["model", "strategy", "seed", "token_class"], as_index=False)["delta"].mean()
    g = sns.catplot(
        data=d,
        x="token_class",
        y="delta",
        hue="strategy",
        col="model",
        kind="bar",
        order=["name", "relation", "other"],
        hue_order=[s for s in ("stage", "mix") if s in set(d["strategy"])],
        errorbar=_ci(d),
        height=3.0,
        aspect=1.1,
    )
    g.set_axis_labels("masked token", "Δ log p(answer)")
    g.figure.suptitle(title, y=1.03)
    return g.figure


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
        "shared_by_layer_module": lambda: fig_shared_layer_module(t["shared_counts"], k),
        "shared_head_heatmap": lambda: fig_head_heatmap(t["shared_counts"], k),
        "overlap_vs_k": lambda: fig_overlap(t["overlap"]),
        "concentration": lambda: fig_concentration(t["concentration"], k),
        "ablation": lambda: fig_ablation(t["ablation_draws"]),
        "consistency_vs_step": lambda: fig_consistency_vs_step(t["consistency_by_module"]),
        "consistency_by_set": lambda: fig_consistency_by_set(t["consistency_by_set"], k),
        "representation": lambda: fig_representation(t["representation"]),
        "token_dependence": lambda: fig_token_dependence(t["token_dependence"]),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem in FIGURES:
        fig = builders[stem]()
        try:
            for fmt in formats:
                path = out_dir / f"{stem}.{fmt}"
                with atomic_file(path) as tmp:
                    fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
                paths.append(path)
        finally:
            plt.close(fig)
    return paths


def tables_to_csv(
    sources: dict[str, str | os.PathLike[str]], outputs: dict[str, str | os.PathLike[str]]
) -> None:
    """Write each Parquet table as CSV (floats to 4 significant digits), atomically."""
    for name, src in sources.items():
        df = pd.read_parquet(src)
        for col in df.columns:  # lists (query_heads) as text
            if df[col].dtype == object and df[col].map(lambda v: hasattr(v, "__len__")).any():
                df[col] = df[col].map(lambda v: v if isinstance(v, str) else list(v))
        with atomic_file(outputs[name]) as tmp:
            df.to_csv(tmp, index=False, float_format="%.4g")
