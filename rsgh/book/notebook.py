"""What the book's notebooks call besides experiments: parameter checks, the visible parameter line,
and myst-nb's ``glue`` for every number a page states (so that the reproduction report can read the
numbers back from the executed notebooks)."""

from __future__ import annotations

import math

import pandas as pd


def check_parameters(**params: tuple) -> None:
    """Notebook parameters as ``name=(value, type)``: a clear error when papermill passed a value
    of the wrong type (e.g. ``-p epochs ten``), instead of a failure deep inside training."""
    for name, (value, kind) in params.items():
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise TypeError(f"notebook parameter {name}={value!r} should be of type {names}, "
                            f"not {type(value).__name__}")
        if isinstance(value, list) and not value:
            raise ValueError(f"notebook parameter {name} is an empty list: give at least one value")


def show_parameters(**params) -> None:
    """A visible line on a book page with the parameters its notebook was executed with."""
    from IPython.display import Markdown, display

    display(Markdown("*Executed with* " + ", ".join(f"`{k} = {v!r}`" for k, v in params.items())))


def glue_number(name: str, value: float, spread: float | None = None, n: int = 1) -> None:
    """Glue a headline number (and, for a mean over seeds, its standard deviation and the number of
    seeds) into the executed notebook: ``{glue:text}`NAME:.3f``` shows it in the page's text, and
    ``rsgh.book.reproduce`` reads it back. NaN and None are refused: a page never shows them."""
    from myst_nb import glue

    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: the number to show is {value}; the experiment did not produce it")
    glue(name, value, display=False)
    glue(f"{name}__n", int(n), display=False)
    if spread is not None and n > 1:
        glue(f"{name}__sd", float(spread), display=False)


def glue_means(prefix: str, finals: pd.DataFrame, by: list[str], column: str) -> pd.DataFrame:
    """Glue ``column``'s mean over seeds for every group of ``by``, as ``PREFIX_<group>...``; returns
    the table of (mean, sd, n) that was glued."""
    table = finals.groupby(by)[column].agg(["mean", "std", "count"])
    for key, row in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        glue_number("_".join([prefix, *map(_name_part, key)]), row["mean"],
                    row["std"] if row["count"] > 1 else None, int(row["count"]))
    return table


def glue_ratio(name: str, finals: pd.DataFrame, column: str, top: str = "R-SGH", bottom: str = "SGH") -> float:
    """Glue the ratio of ``column``'s means over seeds, ``top`` over ``bottom`` (rows of ``finals`` by
    ``method``), with the standard deviation of the same ratio seed by seed (the runs paired by seed)
    as its spread, so that a reproduction judges it by the seeds rather than by 1% of its value.
    Returns the ratio."""
    by_seed = finals.pivot_table(index="seed", columns="method", values=column)
    means = finals.groupby("method")[column].mean()
    ratio = float(means[top] / means[bottom])
    paired = (by_seed[top] / by_seed[bottom]).dropna()
    glue_number(name, ratio, float(paired.std()) if len(paired) > 1 else None, len(paired))
    return ratio


def _name_part(value) -> str:
    return str(value).lower().replace("-", "").replace(" ", "_")


def missing_data_note(err: Exception, page: str) -> str:
    """What a page says when its data is not on the machine that executed it."""
    text = str(err).replace("*", r"\*")
    return (f"**The data of this page is not available on the machine that executed it, so there are no results "
            f"here.** {text}\n\nTo produce them: put the data in the data root and run "
            f"`python -m rsgh reproduce --only {page}`.")
