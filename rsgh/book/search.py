"""What the studies' searches did, read from their journals: the budget each arm spent, each
continuous range with the best value inside it (or on an edge), and every trial across each range.

These are the checks a referee makes of a tuned comparison: equal budgets, searches whose optimum
lies inside the range searched (:func:`rsgh.book.study.edge_values`), and training that finished
(the best trial's best epoch before its last).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import study as st


def budget_table(studies: dict) -> pd.DataFrame:
    """One row per arm (``studies``: arm -> Optuna study): finished trials, complete and pruned (failed
    trials were interrupted and asked again), hours, the best validation mAP, its trial's best epoch
    and the epochs that trial ran."""
    rows = []
    for arm, study in studies.items():
        c, best = st.counts(study), study.best_trial
        rows.append({"arm": st.ARMS[arm], "trials": c["complete"] + c["pruned"], "complete": c["complete"],
                     "pruned": c["pruned"], "hours": study.user_attrs.get("wall_seconds", 0.0) / 3600,
                     "best validation mAP": best.value, "best epoch": best.user_attrs.get("best_epoch"),
                     "epochs run": best.user_attrs.get("epochs"),
                     "max epochs": study.user_attrs.get("max_epochs")})
    return pd.DataFrame(rows)


def ranges_table(studies: dict) -> pd.DataFrame:
    """One row per continuous parameter: its range and scale, and each arm's best value with where it lies
    in the range (0 = low end, 1 = high end; in log scale for a log range; a best value in the outer tenth
    is marked "edge")."""
    rows = []
    for name, (low, high, log) in st.RANGES.items():
        row = {"parameter": name, "range": f"{low:g} to {high:g}", "scale": "log" if log else "linear"}
        used = False
        for arm, study in studies.items():
            value = study.best_trial.params.get(name)
            if value is None:
                row[st.ARMS[arm]] = "—"
                continue
            used = True
            dist = study.best_trial.distributions[name]
            where = position(value, dist.low, dist.high, dist.log)
            row[st.ARMS[arm]] = f"{value:.3g} ({where:.2f}{', edge' if where < 0.1 or where > 0.9 else ''})"
        if used:
            rows.append(row)
    return pd.DataFrame(rows)


def position(value: float, low: float, high: float, log: bool) -> float:
    """Where ``value`` lies in [low, high]: 0 at low, 1 at high (in log scale for a log range)."""
    f = math.log if log else (lambda v: v)
    return (f(value) - f(low)) / (f(high) - f(low))


def trials_frame(studies: dict) -> pd.DataFrame:
    """Every finished trial of every arm: arm, number, state, value (pruned trials: their last reported
    value), best epoch, epochs, seconds and parameters (one column each)."""
    from optuna.trial import TrialState

    rows = []
    for arm, study in studies.items():
        for t in study.trials:
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                continue
            value = t.value if t.value is not None else (
                max(t.intermediate_values.values()) if t.intermediate_values else np.nan)
            rows.append({"arm": st.ARMS[arm], "number": t.number, "state": t.state.name.lower(), "value": value,
                         "best_epoch": t.user_attrs.get("best_epoch"), "epochs": t.user_attrs.get("epochs"),
                         "seconds": t.user_attrs.get("seconds"), **t.params})
    return pd.DataFrame(rows)


def ranges_figure(studies: dict):
    """One panel per continuous parameter that some arm searched (two panels a row): every finished trial's
    validation mAP against the parameter's value, one colour per arm, each arm's best trial as a star, the
    outer tenth of the range shaded (a best value there would mean the search stopped at an edge)."""
    from . import style

    frame = trials_frame(studies)
    names = [n for n in st.RANGES if n in frame.columns and frame[n].notna().any()]
    looks = style.looks(list(dict.fromkeys(frame["arm"])))
    fig, axes, _ = style.subplots(len(names), 2)
    for ax, name in zip(axes, names):
        low, high, log = st.RANGES[name]
        for arm, part in frame.dropna(subset=[name, "value"]).groupby("arm", sort=False):
            look = looks[arm]
            ax.scatter(part[name], part["value"], s=10, alpha=0.55, color=look["color"], marker=look["marker"],
                       label=arm)
            best = part.loc[part["value"].idxmax()]
            ax.scatter([best[name]], [best["value"]], s=130, marker="*", color=look["color"], edgecolor="black",
                       linewidth=0.8, zorder=3)
        if log:
            ax.set_xscale("log")
            edge = (high / low) ** 0.1
            spans = [(low, low * edge), (high / edge, high)]
        else:
            edge = (high - low) * 0.1
            spans = [(low, low + edge), (high - edge, high)]
        for a, b in spans:
            ax.axvspan(a, b, color="0.88", zorder=0)
        ax.set_xlim(low, high)
        ax.set_xlabel(name)
        ax.set_ylabel("validation mAP")
    handles, labels = axes[0].get_legend_handles_labels()
    style.legend_below(fig, handles, labels, ncol=3)
    return fig
