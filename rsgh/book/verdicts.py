"""Verdicts on the claims: effects with 95% intervals over seeds, paired by seed.

An effect is ``a - b`` in the direction of the claim (positive = the claim holds), per seed when both
sides have the same seeds (paired), else against the mean of a side with one value (a deterministic
baseline). Its interval is Student's t over the seeds. The verdict is *supported* when the whole
interval is above 0, *not supported* when the whole interval is below 0 (the opposite holds), and
*inconclusive* when it contains 0 or there are too few seeds to tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Effect:
    mean: float
    low: float
    high: float
    n: int
    sd: float = float("nan")  # of the paired differences (the seed spread a reproduction is judged by)

    @property
    def verdict(self) -> str:
        if self.n < 2 or not math.isfinite(self.low):
            return "inconclusive"
        if self.low > 0:
            return "supported"
        if self.high < 0:
            return "not supported"
        return "inconclusive"

    def text(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (one seed)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def effect(a: pd.Series, b: pd.Series) -> Effect:
    """``a - b`` with a 95% t interval; ``a`` and ``b`` are values indexed by seed."""
    from scipy import stats

    a, b = a.dropna(), b.dropna()
    if len(b) == 1 or len(a) == 1:
        diffs = (a - b.mean()).to_numpy() if len(b) == 1 else (a.mean() - b).to_numpy()
    else:
        common = a.index.intersection(b.index)
        if len(common) == 0:
            raise ValueError("the two sides share no seed: cannot pair them")
        diffs = (a.loc[common] - b.loc[common]).to_numpy()
    n = len(diffs)
    mean = float(np.mean(diffs))
    if n < 2:
        return Effect(mean, float("nan"), float("nan"), n)
    sd = float(np.std(diffs, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    return Effect(mean, mean - half, mean + half, n, sd)


def by_seed(finals: pd.DataFrame, column: str, **where) -> pd.Series:
    """``column`` of the rows matching ``where``, indexed by seed."""
    rows = finals
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return rows.set_index("seed")[column]


def overall(sources: Effect | None, tuned: Effect | None, decide: str = "tuned") -> str:
    """The claim's verdict. ``decide="tuned"``: the tuned (fair) comparison decides, without one the
    sources' settings. ``decide="sources"``: the sources' settings decide; for a claim measured under a
    protocol the studies did not tune for (they select on class-label mAP), such as SGH's own claim in
    Euclidean neighbour search, whose sources' settings are the SGH code's."""
    if decide not in ("tuned", "sources"):
        raise ValueError(f"decide must be 'tuned' or 'sources', got {decide!r}")
    first, second = (tuned, sources) if decide == "tuned" else (sources, tuned)
    decisive = first if first is not None else second
    return decisive.verdict if decisive is not None else "not testable here"


def row(claim: str, sources: Effect | None, tuned: Effect | None, pages: str, digits: int = 3,
        decide: str = "tuned") -> dict:
    cell = (lambda e: "—" if e is None else f"{e.text(digits)}: {e.verdict}")
    return {"claim": claim, "sources' settings": cell(sources), "tuned settings": cell(tuned),
            "verdict": overall(sources, tuned, decide), "decided by": decide, "pages": pages}
