"""Verdicts on the claims: effects with 95% intervals over seeds, paired by seed, and a family-wise
correction (Holm) over every row of the verdicts.

An effect is ``a - b`` in the direction of the claim (positive = the claim holds), per seed when both
sides have the same seeds (paired), else against the mean of a side with one value (a deterministic
baseline). Its interval is Student's t over the seeds and its p-value the two-sided t test of a zero
mean. The raw verdict is *supported* when the whole interval is above 0, *not supported* when it is
below 0 (the opposite holds), and *inconclusive* when it contains 0 or there are too few seeds to tell.
The Holm verdict is the same reading of the Holm-adjusted p-value at the family-wise level ``ALPHA``
(every row of the page is one family): with many rows, a raw interval that excludes 0 by chance
is expected now and then, and Holm keeps the chance of any false verdict among them below 5%.
"""

from __future__ import annotations

from collections.abc import Sequence

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

ALPHA = 0.05


@dataclass
class Effect:
    mean: float
    low: float
    high: float
    n: int
    sd: float = float("nan")  # of the paired differences (the seed spread a reproduction is judged by)
    p: float = float("nan")  # two-sided t test of a zero mean

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
    """``a - b`` with a 95% t interval and its p-value; ``a`` and ``b`` are values indexed by seed."""
    from scipy import stats

    a, b = a.dropna(), b.dropna()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("one side of the comparison has no values: nothing to compare")
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
    if sd > 0:
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    else:  # every seed gave the same difference
        p = 0.0 if mean != 0 else 1.0
    return Effect(mean, mean - half, mean + half, n, sd, p)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (a value NaN stays NaN and is not counted in the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def adjusted_verdict(e: Effect, p_adjusted: float, alpha: float = ALPHA) -> str:
    if e.n < 2 or not math.isfinite(p_adjusted) or p_adjusted >= alpha:
        return "inconclusive"
    return "supported" if e.mean > 0 else "not supported"


def by_seed(finals: pd.DataFrame, column: str, **where) -> pd.Series:
    """``column`` of the rows matching ``where``, indexed by seed."""
    rows = finals
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return rows.set_index("seed")[column]


def untrained(finals: pd.DataFrame) -> pd.Series:
    """Runs that never trained: no active code unit (activity above 0.01 for no bit), so their codes
    hardly depend on the image and their mAP is near chance."""
    return finals["active_units_001"] == 0


def without_untrained(a: pd.Series, b: pd.Series, dead_a: pd.Series, dead_b: pd.Series) -> tuple:
    """``a`` and ``b`` without the seeds at which either side never trained."""
    drop = set(dead_a[dead_a].index) | set(dead_b[dead_b].index)
    return a.drop(index=[s for s in drop if s in a.index]), b.drop(index=[s for s in drop if s in b.index])


@dataclass
class Row:
    """One comparison of the verdicts: a claim on some data, by some evidence."""
    claim: str
    data: str
    evidence: str
    effect: Effect
    clean: Effect | None = None  # the same without the seeds at which a run never trained
    decides: bool = True  # in the Holm family and the claim's verdict (else shown beside it)
    digits: int = 3


def compare(claim: str, data: str, evidence: str, a: pd.DataFrame, b: pd.DataFrame, column: str,
            decides: bool = True, digits: int = 3) -> Row:
    """A row from two sides' finals (one row per seed each): ``a[column] - b[column]`` paired by seed, and
    the same without untrained runs when a side has one."""
    sa, sb = a.set_index("seed")[column], b.set_index("seed")[column]
    e = effect(sa, sb)
    clean = None
    da = untrained(a).set_axis(a["seed"]) if "active_units_001" in a else pd.Series(False, index=sa.index)
    db = untrained(b).set_axis(b["seed"]) if "active_units_001" in b else pd.Series(False, index=sb.index)
    if da.any() or db.any():
        ca, cb = without_untrained(sa, sb, da, db)
        clean = effect(ca, cb) if len(ca) and len(cb) else None
    return Row(claim, data, evidence, e, clean, decides, digits)


def table(rows: list[Row], alpha: float = ALPHA) -> pd.DataFrame:
    """The rows with raw intervals and verdicts beside the Holm-adjusted p-values and verdicts (Holm over
    the deciding rows), and what dropping untrained runs does."""
    deciding = [i for i, r in enumerate(rows) if r.decides]
    adjusted = np.full(len(rows), np.nan)
    adjusted[deciding] = holm([rows[i].effect.p for i in deciding])
    out = []
    for r, p_adj in zip(rows, adjusted):
        e = r.effect
        untrained_note = "—"
        if r.clean is not None:
            same = r.clean.verdict == e.verdict
            untrained_note = f"{r.clean.text(r.digits)}: {'same verdict' if same else r.clean.verdict}"
        out.append({"claim": r.claim, "data": r.data, "evidence": r.evidence,
                    "effect [95% interval]": e.text(r.digits), "p": e.p, "verdict": e.verdict,
                    "Holm p": p_adj, "verdict (Holm)": adjusted_verdict(e, p_adj, alpha) if r.decides else "(not decisive)",
                    "without untrained runs": untrained_note})
    return pd.DataFrame(out)


def key_of(row: Row) -> str:
    """A stable name for a row's glued effect (the reproduction report reads it back)."""
    claim = row.claim.split(")")[0].strip("(")
    claim += "".join(re.findall(r"\(A > ([\d.]+)\)", row.claim))  # a claim at two thresholds: (a) at 0.01, 0.05
    return re.sub(r"[^a-z0-9]+", "_", f"{claim} {row.data} {row.evidence.split(',')[0].split(';')[0]}".lower()).strip("_")


MARKS = {"supported": "▲", "not supported": "▼", "inconclusive": "○"}
HEADLINE = {"(c)": "patents' settings", "(i)": "tuned, vs SGH in R-SGH's architecture",
            "(ii)": "tuned, vs the best SGH"}


def headline_table(rows: list[Row], table: pd.DataFrame, datasets, bits) -> pd.DataFrame:
    """R-SGH minus SGH in test mAP per dataset and code length: at the patents' settings, and tuned
    against both SGH arms; each interval with its Holm verdict's mark."""
    cells = {}
    for r, rec in zip(rows, table.to_dict("records")):
        tag = r.claim.split(" ")[0]
        if tag in HEADLINE:
            cells[(r.data, HEADLINE[tag])] = f"{r.effect.text(r.digits)} {MARKS.get(rec['verdict (Holm)'], '')}"
    out = []
    for d in datasets:
        for k in bits:
            data = f"{d}, K = {k}"
            out.append({"data": data, **{col: cells.get((data, col), "—") for col in HEADLINE.values()}})
    return pd.DataFrame(out)


def _count(table: pd.DataFrame, tag: str) -> dict:
    part = table[table["claim"].str.startswith(tag + " ")]["verdict (Holm)"]
    return {"supported": int((part == "supported").sum()), "not supported": int((part == "not supported").sum()),
            "inconclusive": int((part == "inconclusive").sum()), "total": int(len(part))}


def _raw_ahead(table: pd.DataFrame, tag: str) -> list[str]:
    """The data of a claim's rows whose raw 95% interval lies above 0 but whose Holm verdict is not decided."""
    part = table[table["claim"].str.startswith(tag + " ")]
    part = part[(part["verdict"] == "supported") & (part["verdict (Holm)"] != "supported")]
    return [f"{d} ({e.split(' [')[0]})" for d, e in zip(part["data"], part["effect [95% interval]"])]


def by_dataset(rows: list[Row], table: pd.DataFrame, tag: str, what: str) -> str:
    """One clause per dataset of a claim's rows (``tag``, e.g. "(ii)"): the range of ``what`` (e.g. "R-SGH minus
    the best SGH") over its code lengths and what the raw intervals and the Holm verdicts say of it."""
    parts, picked = [], [(r, rec) for r, rec in zip(rows, table.to_dict("records")) if r.claim.startswith(tag + " ")]
    for d in dict.fromkeys(r.data.split(",")[0] for r, _ in picked):
        mine = [(r, rec) for r, rec in picked if r.data.split(",")[0] == d]
        means = [r.effect.mean for r, _ in mine]
        low, high = f"{min(means):+.3f}", f"{max(means):+.3f}"
        span = low if low == high else f"{low} to {high}"
        t = len(mine)
        holm = [rec["verdict (Holm)"] for _, rec in mine]
        raw = [r.effect.verdict for r, _ in mine]

        def ahead(verdicts, where):
            n_for, n_against = verdicts.count("supported"), verdicts.count("not supported")
            return "; ".join(x for x in (f"R-SGH ahead {where.format(n_for, t)}" if n_for else "",
                                         f"SGH ahead {where.format(n_against, t)}" if n_against else "") if x)

        if ahead(holm, ""):
            said = ahead(holm, "at {} of {} code lengths") + " after Holm's correction"
        elif ahead(raw, ""):
            said = ahead(raw, "in {} of {} raw 95% intervals") + ", at no code length after Holm's correction"
        else:
            said = "every raw 95% interval includes 0"
        parts.append(f"{d} {span} ({said})")
    return f"{what} in test mAP, by dataset: " + "; ".join(parts) + "." if parts else ""


def headline_sentence(rows: list[Row], table: pd.DataFrame, caveats: Sequence[str] = (),
                      open_datasets: Sequence[str] = ()) -> str:
    """The answer in a few sentences, from the Holm verdicts of questions (ii) and (i) and of claim (c) (the
    patents' settings), the rows whose raw interval favours R-SGH without a Holm verdict, and ``caveats``
    (e.g. a search that missed a known configuration). ``open_datasets``: the datasets (as the rows name them)
    whose tuned comparison such a caveat leaves open; the answer's first words exclude them."""
    best, terms = _count(table, "(ii)"), _count(table, "(i)")
    s, n, t = best["supported"], best["not supported"], best["total"]
    tuned = table[table["claim"].str.startswith("(ii) ")]["data"]
    closed = [d for d in dict.fromkeys(x.split(",")[0] for x in tuned) if d not in open_datasets]
    if s == 0 and n > 0 and open_datasets:
        answer = (f"**No on {' and '.join(closed)}, open on {' and '.join(open_datasets)}: tuned with the same search "
                  f"budget, R-SGH does not beat SGH.** The best SGH is ahead in {n} of the {t} comparisons (datasets "
                  "times code lengths) and none favours R-SGH")
    elif s == 0 and n > 0:
        answer = (f"**No: tuned with the same search budget, R-SGH does not beat SGH.** The best SGH is ahead in {n} of "
                  f"the {t} comparisons (datasets times code lengths) and none favours R-SGH")
    elif s == 0:
        answer = (f"**Not shown: tuned with the same search budget, R-SGH does not beat SGH in any of the {t} "
                  "comparisons** (datasets times code lengths), and SGH is not ahead in any either")
    elif n == 0:
        answer = f"**In part: tuned with the same search budget, R-SGH beats the best SGH in {s} of {t} comparisons**"
    else:
        answer = (f"**Mixed: tuned with the same search budget, R-SGH beats the best SGH in {s} of {t} comparisons and "
                  f"SGH is ahead in {n}**")
    answer += f" ({t - s - n} undecided, after Holm's correction)." if t - s - n else " (after Holm's correction)."
    answer += " " + by_dataset(rows, table, "(ii)", "R-SGH minus the best SGH") if t else ""
    helps, hurts = terms["supported"], terms["not supported"]
    answer += (f" Against SGH in R-SGH's own architecture, adding R-SGH's terms helps in {helps} of "
               f"{terms['total']} comparisons, hurts in {hurts}, and leaves {terms['total'] - helps - hurts} undecided")
    raw_terms = _raw_ahead(table, "(i)")
    answer += (f"; its raw 95% interval lies above 0 in {len(raw_terms)}: {', '.join(raw_terms)}, not after Holm's "
               "correction." if raw_terms else ".")
    patents = _count(table, "(c)")
    if patents["total"]:
        answer += (f" At the patents' settings (the same network for both, trained for the patents' epochs), R-SGH "
                   f"beats SGH in {patents['supported']} of {patents['total']} comparisons and trails in "
                   f"{patents['not supported']} after Holm's correction")
        raw = _raw_ahead(table, "(c)")
        ns = sorted({r.effect.n for r in rows if r.claim.startswith("(c) ")}) or [0]
        seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]} to {ns[-1]}"
        answer += (f"; its raw 95% interval lies above 0 in {len(raw)}: {', '.join(raw)} in test mAP, which with "
                   f"{seeds} seeds does not survive Holm's correction over every row of the page." if raw else ".")
    return " ".join([answer, *[c for c in caveats if c]])


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def claim_table(part: pd.DataFrame) -> pd.DataFrame:
    """The rows of one claim as the verdicts page shows them."""
    out = part.drop(columns=["claim"]).copy()
    out["p"] = out["p"].map(_p)
    out["Holm p"] = out["Holm p"].map(_p)
    return out
