"""CSV score tables: one row per item, floats with four decimals, and an optional final mean row."""

from __future__ import annotations

import csv
import io

import numpy as np


def score_table(rows: list[dict], columns: list[str], *, mean_row: bool = False) -> str:
    """CSV text of `rows` under `columns` (the first one names the item); with `mean_row`, a last row
    `mean` holds each other column's mean over the rows. Floats are written with four decimals."""
    if mean_row and rows:
        rows = rows + [{columns[0]: "mean", **{c: float(np.mean([r[c] for r in rows])) for c in columns[1:]}}]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()
