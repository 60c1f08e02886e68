"""Tables of a results page: mean ± spread over seeds, the compact mAP table, and tables as a reader sees
them (markdown, formatted numbers, split to fit the content column; the runs' provenance)."""

from __future__ import annotations

from pathlib import Path
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


# ---------------------------------------------------------------------------------------------- display
CONTENT_CHARS = 90  # characters of table text that fit the book's content column (about 700 px)


def format_number(value, decimals: int | None = None, unit: str = "") -> str:
    """A number for a table cell: integers without decimals (``50.0`` -> ``50``), else ``decimals``
    fixed decimals (default: 3 significant digits, at most 4 decimals); a missing value is empty."""
    if value is None or isinstance(value, str):
        return "" if value is None else value
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    v = float(value)
    if not np.isfinite(v):
        return ""
    if decimals is None:
        if v == round(v) and abs(v) < 1e15:
            return f"{int(round(v)):,}".replace(",", "\u2009") + (f" {unit}" if unit else "")  # thin space
        decimals = min(4, max(0, 2 - int(np.floor(np.log10(abs(v))))) if v else 1)
    return f"{v:.{decimals}f}" + (f" {unit}" if unit else "")


def mean_sd(values, decimals: int | None = None, unit: str = "") -> str:
    """``mean ± sd`` of the values (sample sd; one value: the value alone), ``decimals`` fixed or chosen
    so that the sd keeps two significant digits."""
    s = pd.Series(values, dtype=float).dropna()
    if len(s) == 0:
        return ""
    mean, sd = float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else float("nan")
    d = _decimals(sd, mean) if decimals is None else decimals
    cell = f"{mean:.{d}f} ± {sd:.{d}f}" if len(s) > 1 else f"{mean:.{d}f}"
    return cell + (f" {unit}" if unit else "")


def hours(seconds: float) -> str:
    """Seconds as hours with two decimals (``6504`` -> ``1.81``)."""
    return format_number(float(seconds) / 3600, 2)


# decimals of columns by name: epochs as integers, hours with two decimals
COLUMN_DECIMALS = {"epoch": 0, "epochs": 0, "best_epoch": 0, "bits": 0, "seed": 0, "hours": 2, "h": 2}


def _column_decimals(name) -> int | None:
    text = str(name).lower()
    for key, d in COLUMN_DECIMALS.items():
        if text == key or text.endswith(f"({key})") or text.startswith(f"{key} "):
            return d
    return None


class Table:
    """A table as a reader sees it: MyST markdown (a real table of the book, no pandas index clutter,
    no "rows x columns" line), numbers formatted per column, and split into parts that fit the content
    column when too wide (the ``key`` columns repeated in each part). Display it (last expression of
    a cell, or ``display(table)``); ``str(table)`` is the same markdown."""

    def __init__(self, frame: pd.DataFrame, caption: str | None = None, note: str | None = None,
                 index: bool | None = None, decimals: dict | None = None, width: int = CONTENT_CHARS):
        frame = frame.copy()
        if index is None:  # a named or non-range index is a column of the table
            index = frame.index.name is not None or any(frame.index.names) or not isinstance(frame.index,
                                                                                           pd.RangeIndex)
        if index:
            frame = frame.reset_index()
        self.key = list(frame.columns[:max(1, len(frame.index.names) if index else 1)]) if len(frame.columns) else []
        self.frame = frame
        self.caption, self.note, self.width = caption, note, width
        self.decimals = decimals or {}

    def cells(self) -> pd.DataFrame:
        """Every cell as the text shown."""
        out = pd.DataFrame(index=self.frame.index)
        for col in self.frame.columns:
            d = self.decimals.get(col, _column_decimals(col))
            out[str(col)] = [format_number(v, d) if not isinstance(v, str) else v for v in self.frame[col]]
        return out

    def parts(self) -> list[pd.DataFrame]:
        """The table split into column groups that fit ``width`` characters, the key columns in each;
        a table with few rows and too many columns is transposed instead when that fits."""
        cells = self.cells()
        widths = {c: _width(c, cells[c]) for c in cells.columns}
        if sum(widths.values()) <= self.width or len(cells.columns) <= len(self.key) + 1:
            return [cells]
        if len(cells) <= 4:  # transposed: one row per column, one column per row of the table
            t = cells.set_index([str(k) for k in self.key]).T
            t.columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in t.columns]
            t = t.reset_index().rename(columns={"index": ""})
            if sum(_width(c, t[c]) for c in t.columns) <= self.width:
                return [t]
        key = [str(k) for k in self.key]
        rest = [c for c in cells.columns if c not in key]
        parts, current, used = [], [], sum(widths[k] for k in key)
        for c in rest:
            if current and used + widths[c] > self.width:
                parts.append(cells[key + current])
                current, used = [], sum(widths[k] for k in key)
            current.append(c)
            used += widths[c]
        parts.append(cells[key + current])
        return parts

    def to_markdown(self) -> str:
        blocks = []
        if self.caption:
            blocks.append(self.caption)
        for part in self.parts():
            header = "| " + " | ".join(_escape(c) for c in part.columns) + " |"
            align = "| " + " | ".join("---:" if _numeric(part[c]) else "---" for c in part.columns) + " |"
            rows = ["| " + " | ".join(_escape(v) for v in row) + " |" for row in part.itertuples(index=False)]
            blocks.append("\n".join([header, align, *rows]))
        if self.note:
            blocks.append(self.note)
        return "\n\n".join(blocks) + "\n"

    def to_html(self) -> str:
        """The same table(s) as HTML (for a page that pastes it from another page)."""
        from html import escape

        out = [f"<p>{escape(self.caption)}</p>"] if self.caption else []
        for part in self.parts():
            numeric = {c: _numeric(part[c]) for c in part.columns}
            head = "".join(f'<th class="{_align(numeric[c])}">{escape(str(c))}</th>' for c in part.columns)
            rows = "".join("<tr>" + "".join(f'<td class="{_align(numeric[c])}">{escape(str(v)).replace(" ± ", "&nbsp;±&nbsp;")}'
                                            f"</td>" for c, v in zip(part.columns, row)) + "</tr>"
                           for row in part.itertuples(index=False))
            out.append(f'<table class="table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
        if self.note:
            out.append(f"<p>{escape(self.note)}</p>")
        return "\n".join(out)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        return self.to_markdown()

    __repr__ = __str__


def show(frame: pd.DataFrame, caption: str | None = None, note: str | None = None, **kw) -> Table:
    """A DataFrame as a :class:`Table` (markdown, formatted, split to fit)."""
    return Table(frame, caption=caption, note=note, **kw)


def glue_table(name: str, table, display: bool = True) -> Table:
    """Glue a table (a :class:`Table` or a DataFrame) under ``name`` and show it. The same page pastes it
    again with a ``{glue:md} NAME`` directive (``:format: myst``); another page, e.g. the landing page
    showing the Verdicts page's headline table, with a ``{glue} NAME`` directive and the option
    ``:doc: verdicts.ipynb`` (myst-nb pastes across pages only HTML, text and images, so the glued value
    carries an HTML table as well)."""
    from IPython.display import Markdown
    from IPython.display import display as show_output
    from myst_nb import glue

    table = table if isinstance(table, Table) else Table(table)
    glue(name, _Glued(table), display=False)
    if display:
        show_output(Markdown(table.to_markdown()))
    return table


class _Glued:
    """A table as myst-nb glues it: MyST markdown for its own page, HTML for another page."""

    def __init__(self, table: Table):
        self.table = table

    def _repr_markdown_(self) -> str:
        return self.table.to_markdown()

    def _repr_html_(self) -> str:
        return self.table.to_html()

    def __repr__(self) -> str:
        return self.table.to_markdown()


def _width(header, cells) -> int:
    """Characters a column takes: its longest cell (numbers do not wrap), the longest word of its header
    or of a text cell (they wrap), and 3 for the padding."""
    longest = 0
    for v in cells:
        text = str(v)
        longest = max(longest, len(text) if _is_number_like(text) else max((len(w) for w in text.split()), default=0))
    head = max((len(w) for w in str(header).split()), default=0)
    return max(longest, head) + 3


def _align(numeric: bool) -> str:
    return "text-right" if numeric else "text-left"


def _is_number_like(text: str) -> bool:
    return bool(text) and not any(ch.isalpha() for ch in text.replace("e-", "").replace("h", ""))


def _numeric(cells) -> bool:
    values = [str(v) for v in cells if str(v)]
    return bool(values) and all(_is_number_like(v) for v in values)


def _escape(value) -> str:
    text = str(value).replace("\n", " ")
    for ch in ("|", "*", "$", "`"):
        text = text.replace(ch, "\\" + ch)
    return text.replace(" ± ", "\u00a0±\u00a0")  # a mean and its spread stay on one line


# ---------------------------------------------------------------------------------------------- provenance
def _summary(item) -> tuple[str, dict]:
    """(a run's name, its summary.json) from a run folder or a summary already read."""
    if isinstance(item, dict):
        return str(item.get("name") or item.get("run") or "run"), item
    from ..train.rundir import RunDir

    d = Path(item)
    return f"{d.parent.name}/{d.name}", RunDir(d).read_summary()


def provenance_table(runs: Sequence) -> Table:
    """The runs' provenance, one row per run: its method, code length and seed, what it was trained
    with (the lock-step group of models that trained as one computation), its epochs, the group's wall
    time and the run's share of it (the group's time over its size). What all rows share (data and
    its md5, commit, CPU, torch) is said once below the table."""
    rows, common = [], {}
    for item in runs:
        name, s = _summary(item)
        cfg, v = s.get("config", {}), s.get("versions", {})
        group = s.get("group_runs") or [name.rsplit("/", 1)[-1]]
        size = int(s.get("group_size", len(group)) or 1)
        others = [_short(g) for g in group if g != name.rsplit("/", 1)[-1]]
        wall = float(s.get("wall_time_s", float("nan")))
        rows.append({
            "run": name.rsplit("/", 1)[-1],
            "method": cfg.get("method", ""), "K": cfg.get("bits", ""), "seed": cfg.get("seed", ""),
            "trained in one group with": (", ".join(others) if len(others) <= 2 else f"{len(others)} other models")
            if size > 1 else "alone",
            "epochs": s.get("epochs", float("nan")),
            "group's time (min)": wall / 60, "per run (min)": wall / 60 / size,
        })
        commit = str(s.get("git_commit") or "")
        for key, value in (("data", s.get("data_source")),
                           ("commit", commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")),
                           ("CPU", v.get("cpu")), ("torch", v.get("torch")), ("device", s.get("device"))):
            common.setdefault(key, set()).add(value)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return Table(frame, note="No runs.")
    frame["method"] = frame["method"].map(lambda m: {"sgh": "SGH", "rsgh": "R-SGH"}.get(m, m))
    same = [f"{k} {', '.join(sorted(map(str, vals)))}" for k, vals in common.items() if vals and None not in vals]
    note = (f"All {len(frame)} runs: " + "; ".join(same) + ". A group's models train as one batched computation, "
            "so a run's time is its share of its group's wall time.")
    return Table(frame, note=note, decimals={"group's time (min)": 1, "per run (min)": 1, "epochs": 0}, index=False)


def _short(run_name: str) -> str:
    """A run's folder name without its identity hash: ``sgh-k64-s0-9927573ec8`` -> ``sgh-k64-s0``."""
    head, _, tail = run_name.rpartition("-")
    return head if head and len(tail) == 10 and all(c in "0123456789abcdef" for c in tail) else run_name
