"""Figures of the book's pages (matplotlib / seaborn), and the provenance table.

Nothing here changes a number: it only draws what the experiments and the run folders hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..train.rundir import RunDir

PALETTE = {"SGH": "#1f77b4", "R-SGH": "#d62728"}


def curves_over_epochs(curves: pd.DataFrame, columns: Sequence[str], titles: Sequence[str],
                       hue: str = "method", palette=None, start_epoch: float = 0.0, shared_legend: bool = False,
                       ncols: int | None = None):
    """One panel per column: mean over seeds with a band of one standard deviation.

    ``shared_legend``: one legend below the panels instead of one in each (for many lines);
    ``ncols``: panels per row (default: all in one row)."""
    ncols = ncols or len(columns)
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    axes = axes.ravel()
    spare = list(axes[len(columns):])
    for ax in spare:
        ax.axis("off")
    data = curves[curves["epoch"] >= start_epoch]
    for ax, col, title in zip(axes, columns, titles):
        sns.lineplot(data=data, x="epoch", y=col, hue=hue, errorbar="sd", ax=ax,
                     palette=palette or (PALETTE if hue == "method" else None))
        ax.set_title(title)
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    if shared_legend:
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[:len(columns)]:
            ax.get_legend().remove()
        if spare:  # in the first unused panel
            spare[0].legend(handles, labels, loc="center", frameon=False, title=hue)
            fig.tight_layout()
        else:  # below the panels
            rows = -(-len(labels) // 3)
            fig.tight_layout(rect=(0, (0.05 + 0.05 * rows) / nrows, 1, 1))
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), frameon=False, title=hue)
    else:
        fig.tight_layout()
    return fig


def kl_heatmaps(run_dirs: Sequence[str | Path], labels: Sequence[str], value: str = "kl"):
    """Per-bit KL (or activity) over epochs, bits sorted by their final value, one panel per run."""
    fig, axes = plt.subplots(1, len(run_dirs), figsize=(5.2 * len(run_dirs), 3.8), squeeze=False)
    vmax = 0.0
    tables = []
    for d in run_dirs:
        u = RunDir(d).read_units()
        t = u.pivot(index="bit", columns="epoch", values=value)
        t = t.loc[t.iloc[:, -1].sort_values(ascending=False).index]
        tables.append(t)
        vmax = max(vmax, float(np.nanmax(t.values)))
    for ax, t, label in zip(axes[0], tables, labels):
        sns.heatmap(t.values, ax=ax, cmap="viridis", vmin=0, vmax=vmax, cbar_kws={"label": value})
        ticks = np.linspace(0, t.shape[1] - 1, min(6, t.shape[1])).astype(int)
        ax.set_xticks(ticks + 0.5, [f"{t.columns[i]:g}" for i in ticks], rotation=0)
        ax.set_yticks([])
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{t.shape[0]} bits, sorted by final {value}")
        ax.set_title(label)
    fig.tight_layout()
    return fig


def pr_and_precision_at_k(run_dirs: Sequence[str | Path], labels: Sequence[str]):
    """Precision-recall points by Hamming radius, and precision@k, of the final codes."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.4, 3.8))
    for d, label in zip(run_dirs, labels):
        r = RunDir(d).read_retrieval()
        pr = pd.DataFrame(r["pr_curve"])
        ax1.plot(pr["recall"], pr["precision"], marker=".", label=label)
        ks = sorted(int(k) for k in r["precision_at_k"])
        ax2.plot(ks, [r["precision_at_k"][str(k)] for k in ks], marker="o", label=label)
    ax1.set(xlabel="recall", ylabel="precision", title="precision-recall (Hamming radius 0..K)")
    ax2.set(xlabel="k", ylabel="precision@k", title="precision@k (exact under random tie order)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def provenance(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Data source with checksum, code commit, package versions, device and wall time per run."""
    rows = []
    for d in map(Path, run_dirs):
        s = RunDir(d).read_summary()
        v = s["versions"]
        rows.append({"run": f"{d.parent.name}/{d.name}", "data": s["data_source"],
                     "md5 of the data": " ".join(str(c)[:8] for c in s["data_checksums"].values()),
                     "commit": s["git_commit"][:10], "versions": f"torch {v['torch']}, python {v['python']}",
                     "device": f"{s['device']}, {s['threads']} thread, group of {s.get('group_size', 1)}",
                     "epochs": round(s["epochs"], 2), "wall (s)": round(s["wall_time_s"])})
    return pd.DataFrame(rows).set_index("run")


def validation_curves(curves: pd.DataFrame, finals: pd.DataFrame, column: str = "val_map"):
    """Validation mAP against epoch from epoch 0, one panel per code length (mean over seeds, band = one
    standard deviation), with a dotted line at each run's best validation epoch (the model kept)."""
    ks = sorted(curves["bits"].unique())
    fig, axes = plt.subplots(1, len(ks), figsize=(5.2 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks):
        sns.lineplot(data=curves[curves["bits"] == k], x="epoch", y=column, hue="method", errorbar="sd", ax=ax,
                     palette=PALETTE)
        for _, run in finals[finals["bits"] == k].iterrows():
            if np.isfinite(run.get("best_epoch", np.nan)):
                ax.axvline(run["best_epoch"], color=PALETTE.get(run["method"], "grey"), ls=":", lw=1, alpha=0.8)
        ax.set(title=f"K = {k}", ylabel="validation mAP" if column == "val_map" else column)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def recall_curves(table: pd.DataFrame):
    """Recall10@N against N (log scale), one panel per dataset and code length, one line per method
    (mean over seeds)."""
    datasets, ks = list(dict.fromkeys(table["dataset"])), sorted(table["bits"].unique())
    fig, axes = plt.subplots(len(datasets), len(ks), figsize=(4.4 * len(ks), 3.4 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for ax, k in zip(row, ks):
            part = table[(table["dataset"] == dataset) & (table["bits"] == k)]
            sns.lineplot(data=part, x="N", y="recall", hue="method", errorbar=None, ax=ax, legend=ax is axes[0][-1])
            ax.set(xscale="log", title=f"{dataset}, K = {k}", ylabel="Recall10@N")
            ax.grid(alpha=0.3, which="both")
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8, title=None)
    fig.tight_layout()
    return fig


def study_figures(studies: dict):
    """Each study's optimisation history (the validation mAP of every trial, pruned ones at their last
    reported value, and the best so far) and Optuna's parameter importances (fANOVA), side by side."""
    import optuna
    from optuna.trial import TrialState

    fig, axes = plt.subplots(2, len(studies), figsize=(6.5 * len(studies), 8.5), squeeze=False)
    for col, (label, study) in enumerate(studies.items()):
        ax = axes[0][col]
        done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        value = {t.number: t.value if t.state == TrialState.COMPLETE else
                 (list(t.intermediate_values.values())[-1] if t.intermediate_values else np.nan) for t in done}
        for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
            xs = [t.number for t in done if t.state == state]
            ax.scatter(xs, [value[x] for x in xs], marker=marker, s=18, label=state.name.lower())
        complete = sorted((t.number, t.value) for t in done if t.state == TrialState.COMPLETE)
        if complete:
            ax.step([n for n, _ in complete], np.maximum.accumulate([v for _, v in complete]), where="post",
                    color="black", lw=1, label="best so far")
        ax.set(title=f"{label}: trials", xlabel="trial", ylabel="validation mAP")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        importance = optuna.importance.get_param_importances(study)
        ax = axes[1][col]
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names], color="tab:blue")
        ax.set(title=f"{label}: parameter importance (fANOVA)", xlabel="share of the variance of validation mAP")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
