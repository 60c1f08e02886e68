"""Figures of the book's pages, all in the one style of :mod:`rsgh.book.style` (a method's colour and
marker on every page, human axis labels, integer epoch ticks, at most two panels per row).

Nothing here changes a number: it only draws what the experiments and the run folders hold. A figure
function returns a matplotlib figure, or, when there is nothing to draw, a :class:`NothingToShow`
(falsy; displayed as the sentence that says why). Panels that would show nothing (every line flat at
the same value) are left out and said in ``fig.notes``, which :func:`rsgh.book.style.glue_figure`
appends to the caption. Show a figure on a page with ``style.glue_figure(name, fig, caption, alt)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..train.rundir import RunDir
from . import style

PALETTE = {name: look.color for name, look in style.METHODS.items()}  # kept for older callers


class NothingToShow:
    """What a figure function returns when it has nothing to draw: falsy, shown as its sentence."""

    def __init__(self, text: str):
        self.text = text

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        return self.text


def _flat(lines: dict[str, np.ndarray]) -> float | None:
    """The value every line holds at every point, if they all hold one (a panel that shows nothing);
    NaN when there are no values at all."""
    values = np.concatenate([np.asarray(v, dtype=float) for v in lines.values()]) if lines else np.array([])
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return np.nan
    return float(values[0]) if np.allclose(values, values[0], rtol=0, atol=1e-9) else None


def _mean_sd(data: pd.DataFrame, hue: str, column: str) -> dict[str, pd.DataFrame]:
    """Per label: the mean and standard deviation over seeds of ``column`` at each epoch."""
    out = {}
    for label, part in data.groupby(hue, sort=False):
        stats = part.groupby("epoch")[column].agg(["mean", "std", "count"]).dropna(subset=["mean"])
        out[label] = stats
    return out


def _line(ax, x, y, look: dict, label: str, sd=None, points: int = 8) -> None:
    """A mean line with sparse markers and, with several seeds, a band of one standard deviation."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ax.plot(x, y, label=label, color=look["color"], linestyle=look["linestyle"], marker=look["marker"],
            markevery=max(1, len(x) // points))
    if sd is not None and np.isfinite(np.asarray(sd, dtype=float)).any():
        sd = np.nan_to_num(np.asarray(sd, dtype=float))
        ax.fill_between(x, y - sd, y + sd, color=look["color"], alpha=0.15, linewidth=0)


def curves_over_epochs(curves: pd.DataFrame, columns: Sequence[str], titles: Sequence[str] | None = None,
                       hue: str = "method", palette=None, start_epoch: float = 0.0, shared_legend: bool = False,
                       ncols: int | None = None):
    """One panel per column (at most two per row): the mean over seeds against epoch, with a band of
    one standard deviation. ``titles``: the panels' titles (the y axis always has the column's human
    label). A column whose every line is flat at one value (e.g. 64 of 64 units active for every
    model) is left out and said in ``fig.notes``; if every column is, a :class:`NothingToShow`.
    ``shared_legend``: one legend for the figure (in a spare panel, else below the panels)."""
    titles = list(titles) if titles is not None else [style.axis_label(c) for c in columns]
    data = curves[curves["epoch"] >= start_epoch]
    labels = list(dict.fromkeys(data[hue])) if len(data) else []
    looks = style.looks(labels)
    if palette:
        looks = {k: dict(v, color=palette.get(k, v["color"])) for k, v in looks.items()}
    panels, notes = [], []
    for col, title in zip(columns, titles):
        stats = _mean_sd(data, hue, col) if col in data else {}
        value = _flat({"all": data[col].to_numpy()}) if col in data else np.nan  # every seed's value, not the means
        if value is None:
            panels.append((col, title, stats))
        elif np.isnan(value):
            notes.append(f"{title}: not measured in these runs.")
        else:
            notes.append(f"{title}: {value:g} for every run at every epoch shown, so its panel is left out.")
    if not panels:
        return NothingToShow(" ".join(notes) or "No curves to show.")
    fig, axes, spare = style.subplots(len(panels), ncols)
    for ax, (col, title, stats) in zip(axes, panels):
        for label, s in stats.items():
            _line(ax, s.index, s["mean"], looks[label], str(label), s["std"] if (s["count"] > 1).any() else None)
        ax.set_title(title)
        style.label_axes(ax, "epoch", col)
    handles, names = axes[0].get_legend_handles_labels()
    if shared_legend or len(panels) > 1:
        if spare:  # in the first unused panel
            spare[0].legend(handles, names, loc="center", title=None if hue == "method" else hue)
            fig.tight_layout()
        else:
            style.legend_below(fig, handles, names, title=None if hue == "method" else hue)
    else:
        axes[0].legend()
        fig.tight_layout()
    fig.notes = notes
    return fig


def kl_heatmaps(run_dirs: Sequence[str | Path], labels: Sequence[str], value: str = "kl"):
    """Per-bit KL (or activity) over epochs, bits sorted by their final value, one panel per run (at most
    two per row), on one colour scale."""
    tables = []
    for d in run_dirs:
        u = RunDir(d).read_units()
        t = u.pivot(index="bit", columns="epoch", values=value)
        tables.append(t.loc[t.iloc[:, -1].sort_values(ascending=False).index])
    if not tables:
        return NothingToShow("No runs to show.")
    vmax = max(float(np.nanmax(t.values)) for t in tables) or 1.0
    fig, axes, _ = style.subplots(len(tables), height=3.0)
    name = style.axis_label(value)
    for ax, t, label in zip(axes, tables, labels):
        epochs = np.asarray(t.columns, dtype=float)
        image = ax.imshow(t.values, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest",
                          extent=(epochs.min() - 0.5, epochs.max() + 0.5, t.shape[0], 0))
        style.integer_ticks(ax, "x")
        ax.grid(False)
        ax.set_yticks([])
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{t.shape[0]} bits, sorted")
        ax.set_title(str(label))
    fig.tight_layout()
    fig.colorbar(image, ax=axes, label=name, shrink=0.9)
    return fig


def pr_table(run_dirs: Sequence[str | Path], labels: Sequence[str], best: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The precision-recall points (``method, seed, radius, precision, recall``) and precision@k
    (``method, seed, k, precision``) of the runs' test codes (``best``: of the best-validation model)."""
    pr, pk = [], []
    for i, (d, label) in enumerate(zip(run_dirs, labels)):
        r = RunDir(d).read_retrieval(best=best)
        if not r:
            continue
        seed = r.get("seed", i)
        pr.append(pd.DataFrame(r["pr_curve"]).assign(method=label, seed=seed))
        pk += [{"method": label, "seed": seed, "k": int(k), "precision": v} for k, v in r["precision_at_k"].items()]
    return (pd.concat(pr, ignore_index=True) if pr else pd.DataFrame(columns=["method", "seed", "radius", "precision",
                                                                              "recall"]),
            pd.DataFrame(pk, columns=["method", "seed", "k", "precision"]))


MIN_RECALL = 1e-3  # precision-recall points below this recall are left out (see pooled_pr)


def pooled_pr(points: pd.DataFrame) -> pd.DataFrame:
    """Precision-recall pooled over seeds: per method and Hamming radius, the mean of the seeds' precision
    and recall. Points with a mean recall under ``MIN_RECALL`` are left out: at radius 0 or 1 most
    queries retrieve nothing, and their precision (counted as 0) made the curve spike to 0 at recall 0."""
    pooled = points.groupby(["method", "radius"], sort=False)[["precision", "recall"]].mean().reset_index()
    return pooled[pooled["recall"] >= MIN_RECALL]


def pr_and_precision_at_k(run_dirs: Sequence[str | Path] = (), labels: Sequence[str] = (),
                          extra_pr: pd.DataFrame | None = None, extra_pk: pd.DataFrame | None = None,
                          best: bool = False):
    """Precision-recall by Hamming radius (pooled over seeds: give every seed's run, labelled by its
    method) and precision@k, side by side. ``extra_pr`` / ``extra_pk``: more methods (the baselines) as
    tables of the same columns as :func:`pr_table` gives."""
    pr, pk = pr_table(run_dirs, labels, best)
    if extra_pr is not None:
        pr = pd.concat([pr, extra_pr[["method", "seed", "radius", "precision", "recall"]]], ignore_index=True)
    if extra_pk is not None:
        pk = pd.concat([pk, extra_pk[["method", "seed", "k", "precision"]]], ignore_index=True)
    if pr.empty and pk.empty:
        return NothingToShow("No retrieval results to show.")
    looks = style.looks(list(dict.fromkeys(list(pr["method"]) + list(pk["method"]))))
    fig, (ax1, ax2), _ = style.subplots(2, height=3.2)
    for method, part in pooled_pr(pr).groupby("method", sort=False):
        part = part.sort_values("radius")
        _line(ax1, part["recall"], part["precision"], looks[method], str(method), points=12)
    ax1.set(xlabel="recall", ylabel="precision", title="precision-recall by Hamming radius")
    ax1.set_xlim(0, 1.02)
    for method, part in pk.groupby("method", sort=False):
        s = part.groupby("k")["precision"].agg(["mean", "std", "count"])
        _line(ax2, s.index, s["mean"], looks[method], str(method), s["std"] if (s["count"] > 1).any() else None)
    ax2.set(xlabel=style.axis_label("k"), ylabel="precision@k", title="precision@k")
    handles, names = ax2.get_legend_handles_labels() if len(pk) else ax1.get_legend_handles_labels()
    style.legend_below(fig, handles, names)
    fig.notes = []
    return fig


def provenance(run_dirs: Sequence[str | Path]):
    """The runs' provenance as a table that reads (see :func:`rsgh.book.tables.provenance_table`)."""
    from .tables import provenance_table

    return provenance_table(run_dirs)


def validation_curves(curves: pd.DataFrame, finals: pd.DataFrame, column: str = "val_map"):
    """Validation mAP against epoch from epoch 0, one panel per code length (two per row; mean over
    seeds, band = one standard deviation), with a dotted line at each run's best validation epoch (the
    model kept)."""
    ks = sorted(curves["bits"].unique())
    if not ks or column not in curves:
        return NothingToShow("No validation curves: these runs were not validated during training.")
    looks = style.looks(list(dict.fromkeys(curves["method"])))
    fig, axes, _ = style.subplots(len(ks))
    for ax, k in zip(axes, ks):
        for label, s in _mean_sd(curves[curves["bits"] == k], "method", column).items():
            _line(ax, s.index, s["mean"], looks[label], str(label), s["std"] if (s["count"] > 1).any() else None)
        for _, run in finals[finals["bits"] == k].iterrows():
            if np.isfinite(run.get("best_epoch", np.nan)):
                ax.axvline(run["best_epoch"], color=looks.get(run["method"], {"color": "grey"})["color"], ls=":",
                           lw=1, alpha=0.8)
        ax.set_title(f"K = {k}")
        style.label_axes(ax, "epoch", column)
    handles, names = axes[0].get_legend_handles_labels()
    style.legend_below(fig, handles, names)
    fig.notes = ["Dotted lines: each run's best validation epoch, the model kept."]
    return fig


def recall_curves(table: pd.DataFrame):
    """Recall10@N against N (log scale), one panel per dataset and code length (two per row), one line
    per method (mean over seeds), one legend below."""
    datasets, ks = list(dict.fromkeys(table["dataset"])), sorted(table["bits"].unique())
    cells = [(d, k) for d in datasets for k in ks if len(table[(table["dataset"] == d) & (table["bits"] == k)])]
    if not cells:
        return NothingToShow("No Recall@N results to show.")
    looks = style.looks(list(dict.fromkeys(table["method"])))
    fig, axes, spare = style.subplots(len(cells), height=2.8)
    for ax, (dataset, k) in zip(axes, cells):
        part = table[(table["dataset"] == dataset) & (table["bits"] == k)]
        for method, p in part.groupby("method", sort=False):
            s = p.groupby("N")["recall"].mean()
            _line(ax, s.index, s.to_numpy(), looks[method], str(method))
        ax.set(xscale="log", title=f"{style.DATASET_NAMES.get(dataset, dataset)}, K = {k}")
        style.label_axes(ax, "N", "recall")
        ax.grid(alpha=0.3, which="both")
    handles, names = [], []
    for ax in axes:  # every method, even one missing from the first panel
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if spare:
        spare[0].legend(handles, names, loc="center")
        fig.tight_layout()
    else:
        style.legend_below(fig, handles, names, ncol=2)
    fig.notes = []
    return fig


def study_figures(studies: dict):
    """Each study's optimisation history (the validation mAP of every trial, pruned ones at their last
    reported value, and the best so far), two studies per row, and Optuna's parameter importances
    (fANOVA) below them. The history's points have the study's method colour."""
    import optuna
    from optuna.trial import TrialState

    if not studies:
        return NothingToShow("No studies to show.")
    n = len(studies)
    fig, axes, _ = style.subplots(2 * n, height=3.0)
    for col, (label, study) in enumerate(studies.items()):
        ax = axes[col]  # histories first, then the importances
        color = style.looks([label])[label]["color"]
        done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        value = {t.number: t.value if t.state == TrialState.COMPLETE else
                 (list(t.intermediate_values.values())[-1] if t.intermediate_values else np.nan) for t in done}
        for state, marker, fill in ((TrialState.COMPLETE, "o", color), (TrialState.PRUNED, "x", color)):
            xs = [t.number for t in done if t.state == state]
            ax.scatter(xs, [value[x] for x in xs], marker=marker, s=16, color=fill, label=state.name.lower(),
                       alpha=1.0 if state == TrialState.COMPLETE else 0.6)
        complete = sorted((t.number, t.value) for t in done if t.state == TrialState.COMPLETE)
        if complete:
            ax.step([c for c, _ in complete], np.maximum.accumulate([v for _, v in complete]), where="post",
                    color="black", lw=1, label="best so far")
        ax.set(title=f"{label}: trials", xlabel="trial", ylabel="validation mAP")
        style.integer_ticks(ax, "x")
        ax.legend(loc="lower right")
        ax = axes[n + col]
        try:
            importance = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):  # too few finished trials
            importance = {}
        names = list(importance)[::-1]
        ax.barh(names, [importance[k] for k in names], color=color)
        ax.set(title=f"{label}: parameter importance", xlabel="share of the variance of validation mAP")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.notes = ["Importances: fANOVA over the finished trials; pruned trials at their last reported value."]
    return fig


# ---------------------------------------------------------------------------------------------- benchmarks
def benchmark_file(name: str) -> Path:
    """``results/benchmarks/<name>.json`` of the checkout (``$RSGH_RESULTS/benchmarks`` when set), the file
    the benchmark script ``benchmarks/<name>.py`` appends a record to at every run."""
    import os

    env = os.environ.get("RSGH_RESULTS")
    root = Path(env).expanduser() if env else Path(__file__).resolve().parent.parent.parent / "results"
    return root / "benchmarks" / f"{name}.json"


def benchmark(name: str) -> pd.DataFrame:
    """A benchmark's records, oldest first, one row each: ``n`` (1, 2, ...), ``label``, ``date``, ``cpu``,
    ``commit``, ``source`` ("measured", or where a transcribed number came from), ``note``, and one column
    per value it recorded."""
    import json

    doc = json.loads(benchmark_file(name).read_text())
    rows = []
    for n, r in enumerate(doc["records"], 1):
        rows.append({"n": n, "label": r.get("label") or f"{n}", "date": r.get("date"), "cpu": r.get("cpu"),
                     "commit": r.get("commit"), "source": r.get("source"), "note": r.get("note", ""),
                     **r.get("values", {})})
    frame = pd.DataFrame(rows)
    frame.attrs.update(script=doc.get("script"), description=doc.get("description", ""))
    return frame


def benchmark_history(frame: pd.DataFrame, panels: dict, aims: dict | None = None, x_label: str = "run",
                      y_labels: dict | None = None):
    """Ratios over a benchmark's records: one panel per entry of ``panels`` (title -> [(column, label), ...]),
    two per row; each column a line style, each CPU model its colour and marker; ``aims``: a dotted
    horizontal line per panel title; ``y_labels``: the y axis's label per panel title."""
    aims, y_labels = aims or {}, y_labels or {}
    cpus = list(dict.fromkeys(frame["cpu"]))
    cpu_look = {c: {"color": style.EXTRA[i % len(style.EXTRA)], "marker": style.EXTRA_MARKERS[i % 8]}
                for i, c in enumerate(cpus)}
    styles = ["-", "--", ":", "-."]
    line = {lab: styles[j % 4] for ser in panels.values() for j, (_, lab) in enumerate(ser)}  # by place in its panel
    fig, axes, _ = style.subplots(len(panels), height=3.0)
    for ax, (title, series) in zip(axes, panels.items()):
        for column, label in series:
            if column not in frame:
                continue
            for cpu, part in frame.groupby("cpu", sort=False):
                part = part[np.isfinite(part[column].astype(float))]
                ax.plot(part["n"], part[column].astype(float), linestyle=line[label], marker=cpu_look[cpu]["marker"],
                        color=cpu_look[cpu]["color"])
        if title in aims:
            ax.axhline(aims[title], color="black", lw=1, ls=":")
        ax.set(title=title, xlabel=x_label, ylabel=y_labels.get(title, ""))
        style.integer_ticks(ax, "x")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.3", linestyle=ls, label=label) for label, ls in line.items()]  # per series
    handles += [Line2D([], [], color=look["color"], marker=look["marker"], linestyle="", label=cpu)
                for cpu, look in cpu_look.items()]  # a colour and marker per CPU
    handles += [Line2D([], [], color="black", lw=1, ls=":", label="aim")] if aims else []
    style.legend_below(fig, handles, [h.get_label() for h in handles], ncol=2)
    fig.notes = []
    return fig


def seed_points(finals: pd.DataFrame, column: str = "map", hue: str = "method"):
    """Every seed's value of ``column`` (one point each) and the mean over seeds (a bar) per code length,
    one colour per method: the spread a table's mean ± sd summarises, and any run that never trained
    (no active code unit), which is ringed."""
    labels = list(dict.fromkeys(finals[hue]))
    looks = style.looks(labels)
    bits = sorted(finals["bits"].unique())
    fig, axes, _ = style.subplots(1, 1, height=3.4, width=style.WIDTH)
    ax = axes[0]
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        part = finals[finals[hue] == label]
        look = looks[label]
        for j, k in enumerate(bits):
            values = part[part["bits"] == k]
            x = j - 0.4 + width * (i + 0.5)
            jitter = np.linspace(-width * 0.25, width * 0.25, max(len(values), 1))
            hollow = look["linestyle"] != "-"  # a variant of a method (e.g. its patents' settings): open markers
            ax.scatter(x + jitter[:len(values)], values[column], marker=look["marker"], s=22,
                       facecolors="none" if hollow else look["color"], edgecolors=look["color"],
                       label=label if j == 0 else None, zorder=3)
            if "active_units_001" in values and (values["active_units_001"] == 0).any():
                dead = values[values["active_units_001"] == 0]
                ax.scatter(x + jitter[:len(values)][(values["active_units_001"] == 0).to_numpy()], dead[column],
                           s=90, facecolors="none", edgecolors="black", linewidths=1.0, zorder=4)
            if len(values):
                ax.hlines(values[column].mean(), x - width * 0.4, x + width * 0.4, color=look["color"], linewidth=2,
                          linestyle=look["linestyle"])
    ax.set_xticks(range(len(bits)), [f"K = {k}" for k in bits])
    ax.set_ylabel(style.axis_label(column))
    handles, names = ax.get_legend_handles_labels()
    style.legend_below(fig, handles, names, ncol=2)
    return fig
