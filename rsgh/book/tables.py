"""Tables of a results page: mean ± spread over seeds, and the compact mAP table (pandas only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def mean_and_spread(finals: pd.DataFrame, by: Sequence[str], columns: Sequence[str],
                    compact: bool = False) -> pd.DataFrame:
    """``mean ± std (n)`` over seeds, one row per group of ``by``.

    ``compact``: each cell rounded so that its standard deviation keeps two significant digits
    (at most 4 decimals), and the number of seeds in a column ``seeds`` instead of every cell.
    """
    def fmt(s):
        s = s.dropna()
        if len(s) == 0:
            return "n/a"
        mean, sd = s.mean(), s.std(ddof=1)  # sd is NaN for one seed
        d = _decimals(sd, mean) if compact else 4
        cell = f"{mean:.{d}f} ± {sd:.{d}f}" if len(s) > 1 else f"{mean:.{d}f}"
        return cell if compact else f"{cell} (n={len(s)})"
    groups = finals.groupby(list(by))
    table = groups[list(columns)].agg(fmt)
    if compact:
        table["seeds"] = groups.size()
    return table


def map_table(finals: pd.DataFrame, baselines: pd.DataFrame | None = None, column: str = "map") -> pd.DataFrame:
    """The retrieval table of a results page: one row per method (the learned ones first, then
    the baselines, each in the order met), one column ``K = <bits>`` per code length holding the
    compact ``mean ± sd`` over seeds of ``column``, and ``seeds``, the most seeds of any cell."""
    parts = [finals] + ([baselines] if baselines is not None else [])
    rows = pd.concat([p[["method", "bits", "seed", column]] for p in parts], ignore_index=True)
    long = mean_and_spread(rows, ["method", "bits"], [column], compact=True)
    table = long[column].unstack("bits")
    table.columns = [f"K = {b}" for b in table.columns]
    table["seeds"] = long["seeds"].groupby(level="method").max()
    table = table.reindex(list(dict.fromkeys(rows["method"])))
    table.index.name = "method"
    return table.fillna("")


def _decimals(sd: float, mean: float) -> int:
    """Decimals that show two significant digits of ``sd``, or three of ``mean`` when sd is 0 or unknown."""
    spread = np.isfinite(sd) and sd > 0
    ref = sd if spread else abs(mean)
    if not np.isfinite(ref) or ref == 0:
        return 1
    exponent = int(f"{ref:.1e}".split("e")[1])  # after rounding to two digits: 0.00999 -> 1.0e-02
    return min(4, max(0, 1 - exponent + (0 if spread else 1)))
