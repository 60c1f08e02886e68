"""What the book's notebooks call besides experiments: parameter checks, the visible parameter line,
and myst-nb's ``glue`` for every number a page states (so that the reproduction report can read the
numbers back from the executed notebooks)."""

from __future__ import annotations

import math

import pandas as pd


def check_parameters(**params: tuple) -> None:
    """Notebook parameters as ``name=(value, type)``: a clear error when papermill passed a value
    of the wrong type (e.g. ``-p epochs ten``), instead of a failure deep inside training. A list must
    not be empty, unless its entry is ``(value, list, "may be empty")`` (e.g. seeds of an optional part)."""
    for name, (value, kind, *empty) in params.items():
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise TypeError(f"notebook parameter {name}={value!r} should be of type {names}, "
                            f"not {type(value).__name__}")
        if isinstance(value, list) and not value and empty != ["may be empty"]:
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


class _Text:
    """Markdown as myst-nb glues it: MyST markdown for its own page, HTML for another page (myst-nb pastes
    only HTML, text and images across pages)."""

    def __init__(self, markdown: str):
        self.markdown = markdown

    def _repr_markdown_(self) -> str:
        return self.markdown

    def _repr_html_(self) -> str:
        from markdown_it import MarkdownIt  # myst-parser's own Markdown parser

        return MarkdownIt("commonmark", {"html": False}).render(self.markdown)  # raw HTML shown as text

    def __repr__(self) -> str:
        return self.markdown


def glue_markdown(name: str, markdown: str) -> None:
    """Glue a sentence or paragraph under ``name``: ``{glue:md}`NAME``` on its own page, and on another page
    a ``{glue} NAME`` directive with ``:doc: PAGE.ipynb`` (the landing page shows the Verdicts page's answer)."""
    from myst_nb import glue

    glue(name, _Text(markdown), display=False)


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
    """What a page says when its data is not on the machine that executed it (the machine's own folders
    said as the settings that name them)."""
    from ..paths import cache_dir, data_root
    from .store import default_store

    text = str(err)
    for folder, name in ((default_store(), "the results store"), (cache_dir(), "$RSGH_CACHE"),
                         (data_root(), "$RSGH_DATA")):
        text = text.replace(str(folder), name)
    text = text.replace("*", r"\*")
    return (f"**The data of this page is not available on the machine that executed it, so there are no results "
            f"here.** {text}\n\nTo produce them: put the data in the data root and run "
            f"`python -m rsgh reproduce --only {page}`.")


# ---------------------------------------------------------------------------------------------- on every page
# The core files behind each source notebook (shown in its pages' rerun box); every page also names
# its notebook. Paths relative to the repository root.
SOURCES = {
    "e1_mnist_reconstruction": ["rsgh/book/experiments.py", "rsgh/method/objective.py", "rsgh/method/measures.py",
                                "rsgh/train/loop.py"],
    "retrieval": ["rsgh/book/pages.py", "rsgh/book/experiments.py", "rsgh/eval/retrieval.py",
                  "rsgh/eval/baselines.py", "rsgh/eval/metrics.py"],
    "study": ["rsgh/book/study.py", "rsgh/book/comparison.py", "rsgh/book/search.py", "rsgh/eval/retrieval.py"],
    "euclidean": ["rsgh/book/euclidean.py", "rsgh/book/comparison.py", "rsgh/eval/neighbours.py"],
    "verdicts": ["rsgh/book/verdicts.py", "rsgh/book/comparison.py", "rsgh/book/pages.py"],
    "ablation": ["rsgh/book/experiments.py", "rsgh/method/objective.py", "rsgh/config.py"],
    "using_the_hash": ["rsgh/book/demo.py", "rsgh/index/encoder.py", "rsgh/index/store.py", "rsgh/index/query.py"],
}
ALWAYS = ["rsgh/book/figures.py", "rsgh/book/tables.py"]


def rerun_markdown(page: str, sources: list[str] | None = None, plan=None) -> str:
    """The MyST admonition of :func:`rerun_box` (``page``: the page's name in ``notebooks/plan.yml``;
    an unknown name is an error, so a page never shows a command that fails)."""
    from .reproduce import PLAN, load_plan

    notebooks = load_plan(plan or PLAN)["notebooks"]
    if page not in notebooks:
        raise ValueError(f"rerun_box: no page {page!r} in the plan; it has {', '.join(notebooks)}")
    source = notebooks[page].get("notebook", page)
    files = [f"notebooks/{source}.ipynb", *(sources if sources is not None else SOURCES.get(source, [])), *ALWAYS]
    listed = ", ".join(f"`{f}`" for f in dict.fromkeys(files))
    return (f"````{{admonition}} Rerun this page\n:class: tip\n\n"
            f"From the stored results, training nothing (minutes):\n\n"
            f"```bash\npython -m rsgh reproduce --only {page} --profile render\n```\n\n"
            f"Retraining its models, one seed each (the *Reproducibility* page gives the budgets):\n\n"
            f"```bash\npython -m rsgh reproduce --only {page}\n```\n\n"
            f"The page is made by {listed}.\n````\n")


def rerun_box(page: str, sources: list[str] | None = None) -> None:
    """Show a "Rerun this page" box: the exact commands that re-execute this page (from the results
    store, or retraining) and the source files that made it. ``sources``: the core files, if not the
    default of the page's notebook (``SOURCES``)."""
    from IPython.display import Markdown, display

    display(Markdown(rerun_markdown(page, sources)))


DATE_KEYS = ("finished_at", "end_time", "date", "finished", "started_at", "start_time")


def provenance_text(runs) -> str:
    """One line on the runs a page shows: how many, their commit(s), date range, CPU model(s), torch
    version(s) and their total wall time (each lock-step group counted once). ``runs``: run folders,
    summaries (``summary.json`` read as dicts) or an object with ``dirs`` (an experiment's results).
    The date range is given only when the summaries hold a date (``finished_at`` or ``started_at``):
    a file's modification time is not a reproducible record."""
    from pathlib import Path

    items = list(getattr(runs, "dirs", runs))
    summaries = []
    for item in items:
        if isinstance(item, dict):
            summaries.append(item)
        else:
            from ..train.rundir import RunDir

            summaries.append(RunDir(Path(item)).read_summary())
    if not summaries:
        return "*Runs shown:* none."
    commits = sorted({str(s.get("git_commit") or "unknown")[:10] + ("-dirty" if str(s.get("git_commit", "")).endswith(
        "-dirty") else "") for s in summaries})
    cpus = sorted({str(s.get("versions", {}).get("cpu") or "unknown CPU") for s in summaries})
    torches = sorted({str(s.get("versions", {}).get("torch") or "unknown") for s in summaries})
    groups, seconds = set(), 0.0
    for i, s in enumerate(summaries):
        key = tuple(s.get("group_runs") or [i])
        if key not in groups:
            groups.add(key)
            seconds += float(s.get("wall_time_s") or 0.0)
    dates = sorted(str(s[k])[:10] for s in summaries for k in DATE_KEYS if s.get(k))
    parts = [f"{len(summaries)} run{'s' if len(summaries) != 1 else ''}",
             f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}"]
    if dates:
        parts.append(dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}")
    parts += [", ".join(cpus), f"torch {', '.join(torches)}", f"{_duration(seconds)} of training in all"]
    return "*Runs shown:* " + "; ".join(parts) + "."


def provenance_line(runs) -> None:
    """Show :func:`provenance_text` as a line of the page."""
    from IPython.display import Markdown, display

    display(Markdown(provenance_text(runs)))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} hours"


def strip_stderr(notebook_path) -> int:
    """Remove every stderr stream output (warnings, progress bars, log lines with machine paths) from an
    executed notebook, in place; returns how many were removed. Called after papermill, so that the
    downloadable notebook holds what the page shows."""
    import nbformat

    from ..files import atomic_text

    nb = nbformat.read(str(notebook_path), as_version=4)
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        removed += len(cell.get("outputs", [])) - len(kept)
        cell.outputs = kept
    if removed:
        atomic_text(notebook_path, nbformat.writes(nb))
    return removed
