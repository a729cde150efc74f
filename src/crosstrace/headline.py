"""The study's headline numbers as Markdown tables, from ``results/crosstrace.duckdb``.

Each query is one file of ``sql/headline/`` (run in name order); its first line, a ``--``
comment, is the table's caption. The queries read only the ``*_summary`` tables and the
per-run tables they summarise, so the numbers are those of the database and its figures.
``crosstrace summary`` prints them.
"""

from __future__ import annotations

import math
import os
from importlib import resources

import duckdb
import pandas as pd

from crosstrace.database import connect

# The interval as text: "0.312 [0.281, 0.343]", or the mean alone with one seed (no interval).
_MACROS = """
CREATE OR REPLACE TEMP MACRO interval_text(m, lo, hi, d) AS
    CASE WHEN m IS NULL THEN NULL
         WHEN lo IS NULL OR hi IS NULL THEN printf('%.' || d || 'f', m)
         ELSE printf('%.' || d || 'f [%.' || d || 'f, %.' || d || 'f]', m, lo, hi) END;
"""


def headline_queries() -> list[tuple[str, str]]:
    """(caption, SQL) of every headline query, in file-name order."""
    folder = resources.files("crosstrace") / "sql" / "headline"
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            text = entry.read_text()
            caption = text.splitlines()[0].removeprefix("--").strip()
            out.append((caption, text))
    return out


def without_interval(caption: str, df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Caption and headers that say there is no interval when every row has one seed (the
    cells then hold the value alone); other tables are returned as they are."""
    if "seeds" not in df or df.empty or df["seeds"].max() > 1:
        return caption, df
    caption = caption.replace("mean over seeds [95 % interval]", "one seed, so no interval")
    caption = caption.replace("[95 % interval]", "(one seed, so no interval)")
    return caption, df.rename(columns=lambda c: c.replace("[95 % CI]", "(one seed, no interval)"))


def headline_tables(con: duckdb.DuckDBPyConnection) -> list[tuple[str, pd.DataFrame]]:
    """Run every headline query on an open database: (caption, table) pairs."""
    con.execute(_MACROS)
    return [without_interval(caption, con.sql(sql).df()) for caption, sql in headline_queries()]


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (missing values as an en dash)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def headline_markdown(db_path: str | os.PathLike[str]) -> str:
    """Every headline table of a database, captioned, as one Markdown text."""
    con = connect(db_path)
    try:
        parts = [f"**{caption}**\n\n{markdown_table(df)}" for caption, df in headline_tables(con)]
    finally:
        con.close()
    return "\n\n".join(parts) + "\n"
