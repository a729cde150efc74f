"""The analysis tables as CSV, for the HTML report (``snakemake --report``) beside the figures."""

from __future__ import annotations

import os

import pandas as pd

from crosstrace.atomic import atomic_file


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
