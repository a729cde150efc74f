"""The contrasts of mixed and two-stage training: paired t statistics and Holm's correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from crosstrace.contrasts import contrast_table, holm, paired


def test_paired_interval_and_p_match_the_t_test() -> None:
    d = np.array([0.10, 0.05, 0.12])
    mean, low, high, p = paired(d)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert mean == pytest.approx(d.mean())
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert p == pytest.approx(stats.ttest_rel(d + 1, np.ones(3)).pvalue)
    assert np.isnan(paired(np.array([0.3]))[3])  # one seed: no test


def test_holm_steps_down_and_stays_monotone() -> None:
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    adjusted = holm(p)
    # sorted 0.01, 0.03, 0.04, 0.5 with m = 4: 0.04, 0.09, max(0.09, 0.08), max(.., 0.5)
    assert adjusted[[0, 2, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert np.isnan(adjusted[3])
    assert np.all(adjusted[~np.isnan(p)] >= p[~np.isnan(p)])


def test_primary_stays_uncorrected_and_the_others_are_corrected() -> None:
    rows = []
    for seed, (mix, stage) in enumerate([(0.30, 0.05), (0.25, 0.02), (0.33, 0.04)]):
        rows.append(("llama", "ablation excess, ood, k = 1 %", True, seed, mix, stage, mix - stage))
        rows.append(("llama", "accuracy, ood", False, seed, mix, stage + 0.2, mix - stage - 0.2))
        rows.append(("llama", "accuracy, bio_ood", False, seed, mix, mix, 0.0))
    pairs = pd.DataFrame(rows, columns=["model", "contrast", "is_primary", "seed", "mix", "stage",
                                        "difference"])  # fmt: skip
    table = contrast_table(pairs).set_index("contrast")
    primary = table.loc["ablation excess, ood, k = 1 %"]
    assert bool(primary["is_primary"]) and np.isnan(primary["p_holm"])
    assert primary["ci_low"] > 0  # the three seeds agree
    others = table[~table["is_primary"]]
    assert np.all(others["p_holm"] >= others["p_value"])
    assert table.loc["accuracy, bio_ood", "p_value"] == 1.0  # no difference at all
