"""Mixed minus two-stage training, paired within seed: the primary contrast with its interval,
the others corrected for multiplicity (Holm).

The per-seed pairs come from ``sql/contrast_pairs.sql``; for each model and contrast this
module computes the mean difference, its 95 % Student-t interval and the two-sided p-value of
the paired t-test (H0: no difference; df = seeds − 1). The primary contrast (the held-out
recall that resetting the shared set removes beyond a stratum-matched random set, at
``analysis.primary_k``) is one test per model, reported as it is; Holm's step-down correction
runs over every other row (all models together), whose ``p_holm`` is the adjusted p-value.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ["model", "contrast", "is_primary", "n_seeds", "mix", "stage", "difference",
           "ci_low", "ci_high", "p_value", "p_holm"]  # fmt: skip


def paired(differences: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, 95 % t-interval and two-sided p of paired differences (NaN with one seed)."""
    n = len(differences)
    mean = float(np.mean(differences))
    if n < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = float(np.std(differences, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / np.sqrt(n)
    p = 1.0 if sd == 0 and mean == 0 else float(stats.ttest_1samp(differences, 0.0).pvalue)
    return mean, mean - half, mean + half, p


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN)."""
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def contrast_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per model and contrast from the per-seed pairs."""
    rows = []
    for (model, contrast), part in pairs.groupby(["model", "contrast"], sort=True):
        mean, low, high, p = paired(part["difference"].to_numpy(dtype=float))
        rows.append((model, contrast, bool(part["is_primary"].iloc[0]), len(part),
                     float(part["mix"].mean()), float(part["stage"].mean()), mean, low, high,
                     p, np.nan))  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS)
    others = ~table["is_primary"]
    table.loc[others, "p_holm"] = holm(table.loc[others, "p_value"].to_numpy(dtype=float))
    return table.sort_values(["is_primary", "model", "contrast"], ascending=[False, True, True])


def build_contrasts(con: duckdb.DuckDBPyConnection) -> None:
    """Create the table ``contrasts`` from ``contrast_pairs`` in the open database."""
    frame = contrast_table(con.table("contrast_pairs").df())
    con.register("contrasts_in", frame)
    con.execute("CREATE TABLE contrasts AS SELECT * FROM contrasts_in")
    con.unregister("contrasts_in")
