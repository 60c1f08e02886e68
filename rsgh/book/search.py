"""What the studies' searches did, read from their journals: the budget each arm spent, each
continuous range with the best value inside it (or on an edge), and every trial across each range.

These are the checks a referee makes of a tuned comparison: equal budgets, searches whose optimum
lies inside the range searched (:func:`rsgh.book.study.edge_values`), and training that finished
(the best trial's best epoch before its last). And one check a range cannot make: a known configuration of
an arm's own search space (the patents' settings, trained for the patents' epochs) must not reach a higher
validation mAP than the search's best (:func:`known_point_table`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import study as st
from .ranges import position, position_inverse


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


# The arm whose search space holds each method's configuration at the patents' settings (embodiment 2's
# network: a 4-layer MLP; SGH's is in both SGH arms, and the second is the like-for-like one).
KNOWN_POINT_ARMS = {"sgh": "SGH", "sgh-arch": "SGH", "rsgh": "R-SGH"}


def protocol_text(studies: dict) -> str:
    """How the studies' trials were stopped and pruned, from their recorded protocol
    (:func:`rsgh.book.study.protocol`), in words; one sentence per arm where the arms differ."""
    def words(study) -> str:
        p = st.protocol(study)
        warm = p["pruner"]["n_warmup_steps"]
        first = any(t.user_attrs.get("known_point") for t in study.trials[:1])
        return (f"once {p['pruner']['n_startup_trials']} trials have finished, a trial whose validation mAP at an "
                f"epoch is below the median of the earlier complete trials' at that epoch is stopped, "
                + ("from its first epoch on" if not warm else f"from epoch {warm} on") +
                f"; a trial trains until its validation mAP has not improved for {p['patience']} epochs"
                + (f"; a trial whose validation mAP stays below {p['at_chance']['below']:g} through epoch "
                   f"{p['at_chance']['epochs']} stops there, warm-up or not (it is at chance)" if p["at_chance"] else "")
                + (", and the first trial asked is the arm's method at the patents' settings (a point of the "
                   "space; stopped like any trial)" if first else ""))

    said = {arm: words(study) for arm, study in studies.items()}
    if len(set(said.values())) == 1:
        return "In every study, " + next(iter(said.values())) + "."
    return " ".join(f"{st.ARMS[arm]}: {w}." for arm, w in said.items())


def stopped_at_chance(study) -> int:
    """How many of the study's trials its protocol's stop at chance ended: as the trial's journal says
    (``stopped``, written by the worker's hook since 2026-12-08), else read from its reports (the published
    Fashion-MNIST journals were written before: a pruned trial whose reports end by the rule's epoch, all
    below its level)."""
    rule = st.protocol(study)["at_chance"]
    if not rule:
        return 0

    def at_chance(t) -> bool:
        if "stopped" in t.user_attrs:
            return t.user_attrs["stopped"].startswith("at chance")
        return (t.state.name == "PRUNED" and bool(t.intermediate_values) and max(t.intermediate_values) <= rule["epochs"]
                and max(t.intermediate_values.values()) < rule["below"])

    return sum(1 for t in study.trials if at_chance(t))


def chance_text(studies: dict) -> str:
    """The trials each study stopped at chance, in a sentence ('' where no study has the rule)."""
    ruled = {arm: s for arm, s in studies.items() if st.protocol(s)["at_chance"]}
    if not ruled:
        return ""
    warm = min(st.protocol(s)["pruner"]["n_warmup_steps"] for s in ruled.values())
    counts = ", ".join(f"{st.ARMS[arm]} {stopped_at_chance(s)} of {len(s.trials)}" for arm, s in ruled.items())
    return (f"Trials stopped at chance: {counts}; the warm-up alone would have kept each of them to epoch {warm}.")


def protocol_short(study) -> str:
    """A study's protocol in a few words: its maximum epochs, patience and first epoch of pruning."""
    p = st.protocol(study)
    return (f"at most {p['max_epochs']} epochs, patience {p['patience']}, pruning from epoch "
            f"{max(1, p['pruner']['n_warmup_steps'])}"
            + (f", stopped at chance after epoch {p['at_chance']['epochs']}" if p["at_chance"] else ""))


def superseded_table(old: list, now: dict) -> pd.DataFrame:
    """Earlier searches of the same arms, superseded (``old``: [(arm, folder, study)], each folder with a
    ``why.md``), beside the searches that replaced them (``now``: arm -> study): trials, protocol, best
    validation mAP then and now, and why each was superseded."""
    rows = []
    for arm, folder, study in old:
        c = st.counts(study)
        why = (folder / "why.md").read_text(encoding="utf-8").strip()
        rows.append({"arm": st.ARMS[arm], "trials": c["complete"] + c["pruned"], "protocol": protocol_short(study),
                     "best validation mAP": study.best_value, "now": now[arm].best_value, "why superseded": why})
    return pd.DataFrame(rows)


def known_point_trial(study) -> str:
    """What became of the study's trial of its known point: its value, or where it was pruned ('' without)."""
    for t in study.trials:
        if t.user_attrs.get("known_point"):
            if t.state.name == "COMPLETE":
                return f"{t.value:.4f} (best epoch {t.user_attrs.get('best_epoch', float('nan')):.0f})"
            if t.state.name == "PRUNED":
                return f"pruned at epoch {t.user_attrs.get('epochs', float('nan')):.0f}"
            return t.state.name.lower()
    return ""


def with_evaluation_noise(results) -> pd.DataFrame:
    """The finals of ``results`` (:class:`~rsgh.book.experiments.Results`) with ``val_noise``: each run's
    evaluation noise of the validation mAP, the standard deviation of the differences between consecutive
    evaluations of its second half (where the curve is flat) over the square root of 2. The best of many
    noisy evaluations lies above the curve by a few such deviations."""
    noise = {}
    for run, part in results.curves.groupby("run"):
        values = part[(part["iteration"] > 0) & part["val_map"].notna()].sort_values("epoch")["val_map"].to_numpy()
        late = values[len(values) // 2:]
        noise[run] = float(np.std(np.diff(late), ddof=1) / np.sqrt(2)) if len(late) > 2 else np.nan
    return results.finals.assign(val_noise=results.finals["run"].map(noise))


NOISE_ALLOWANCE = 2  # a search within this many evaluation deviations below a known point's best matches it


def known_point_table(studies: dict, patents_finals: pd.DataFrame, bits: int, seed: int = 0) -> pd.DataFrame:
    """Each arm's best validation mAP in its search beside that of its method at the patents' settings (a
    point of the arm's search space, trained for the patents' epochs without early stopping), at the
    studies' code length ``bits``. The known point is compared at the trials' ``seed`` (every trial of a
    study trains with it; another seed's luck is not the search's to beat), or as the mean over the seeds
    run where that seed was not; the mean over seeds is shown beside it. Where the finals carry ``val_noise``
    (:func:`with_evaluation_noise`), a search below the known point's best by less than NOISE_ALLOWANCE times
    that noise is "within noise": the known point's best is the highest of up to a hundred noisy evaluations.
    Empty without such runs."""
    rows = []
    at = patents_finals[patents_finals["bits"] == bits] if len(patents_finals) else patents_finals
    for arm, study in studies.items():
        runs = at[at["method"] == KNOWN_POINT_ARMS[arm]] if len(at) else at
        if not len(runs):
            continue
        same = runs[runs["seed"] == seed] if "seed" in runs else runs.iloc[:0]
        bar = same if len(same) else runs
        known = float(bar["best_val_map"].mean())
        noise = float(bar["val_noise"].mean()) if "val_noise" in bar else np.nan
        found = ("yes" if study.best_value >= known else
                 "within noise" if study.best_value >= known - NOISE_ALLOWANCE * noise else "no")
        rows.append({"arm": st.ARMS[arm], "search's best validation mAP": study.best_value,
                     "its best epoch": study.best_trial.user_attrs.get("best_epoch"),
                     "known point: best validation mAP": known, "at epoch": float(bar["best_epoch"].mean()),
                     "compared at": f"seed {seed}" if len(same) else f"mean of {len(runs)} seeds",
                     "mean over seeds": float(runs["best_val_map"].mean()), "seeds": len(runs),
                     "evaluation noise (sd)": noise, "the search found better": found,
                     "its trial in the search": known_point_trial(study) or "not asked"})
    return pd.DataFrame(rows)


def known_point_text(table: pd.DataFrame, dataset_name: str, short: bool = False, studies: dict | None = None) -> str:
    """What :func:`known_point_table` says, in words ('' without known points; ``short``: one clause for the
    Verdicts page's answer, '' when no search missed its known point); ``studies``: the arm's studies, whose
    protocol the long form describes."""
    if table.empty:
        return ""
    known, found = "known point: best validation mAP", "search's best validation mAP"
    missed = table[table["the search found better"] == "no"]
    close = table[table["the search found better"] == "within noise"]
    close_text = "".join(
        f" {r['arm']}'s search ({r[found]:.3f}) lies below its known point ({r[known]:.3f} at epoch {r['at epoch']:.0f}, "
        f"{r['compared at']}) by less than {NOISE_ALLOWANCE} times the validation mAP's evaluation noise (sd "
        f"{r['evaluation noise (sd)']:.3f}): the best of that many evaluations is inflated by their noise, so the two match."
        for r in close.to_dict("records"))
    if missed.empty:
        return "" if short else (f"On {dataset_name} every search found a configuration as good on the validation "
                                 "queries as its method's configuration at the patents' settings." + close_text)
    parts = [f"{r['arm']} ({r[known]:.3f} at epoch {r['at epoch']:.0f}, {r['compared at']}, against the search's "
             f"{r[found]:.3f})" for r in missed.to_dict("records")]
    if short:
        return (f"On {dataset_name} the searches missed slow-learning configurations of their own spaces (the patents' "
                f"configuration of {'; of '.join(parts)} on the validation queries), so the tuned comparison there is "
                "not conclusive.")
    return (f"**The searches did not find their spaces' optimum on {dataset_name}.** The patents' configuration, "
            f"a point of the search space, reached a higher validation mAP than the best trial for "
            f"{'; for '.join(parts)}, by more than {NOISE_ALLOWANCE} times its evaluation noise. "
            + (protocol_text(studies) + " " if studies else "") +
            "Pruning at an early epoch against the median of the earlier trials favours "
            "configurations that learn fast; the patents' configurations learn slowly and peak late. The tuned "
            f"comparison on {dataset_name} is therefore not conclusive on its own." + close_text)


def seed_luck_table(studies: dict, tuned_finals: pd.DataFrame, bits: int, seed: int = 0) -> pd.DataFrame:
    """Each arm's best trial beside its configuration retrained with the other seeds, on the validation queries
    at the studies' code length ``bits``: every trial trains with one seed (``seed``), so a search's best value is
    partly that seed's luck. ``tuned_finals``: the retrained runs (``method`` the arm's label, ``best_val_map``).
    "its seed's margin" is the trial's seed's value minus the other seeds' mean, in their standard deviations."""
    rows = []
    at = tuned_finals[tuned_finals["bits"] == bits]
    for arm, study in studies.items():
        runs = at[at["method"] == st.ARMS[arm]]
        others = runs[runs["seed"] != seed]["best_val_map"]
        if not len(others):
            continue
        same = runs[runs["seed"] == seed]["best_val_map"]
        sd = float(others.std(ddof=1)) if len(others) > 1 else np.nan
        rows.append({"arm": st.ARMS[arm], "search's best validation mAP": study.best_value,
                     f"retrained, seed {seed}": float(same.mean()) if len(same) else np.nan,
                     "other seeds: mean": float(others.mean()), "sd": sd, "min": float(others.min()),
                     "max": float(others.max()), "seeds": len(others),
                     "its seed's margin (sd)": (study.best_value - float(others.mean())) / sd if sd > 0 else np.nan})
    return pd.DataFrame(rows)


LUCK_MARGIN = 3  # a best trial above every other seed by more than this many of their deviations: its seed's luck


def seed_luck_text(table: pd.DataFrame) -> str:
    """What :func:`seed_luck_table` says, in words ('' when it is empty)."""
    if table.empty:
        return ""
    found = "search's best validation mAP"
    lucky = table[(table[found] > table["max"]) & (table["its seed's margin (sd)"] > LUCK_MARGIN)]
    text = ("**The search's seed.** Every trial trains with one seed, so a search's best value is partly that seed's "
            "luck; the table gives each best configuration's validation mAP with the other seeds.")
    if lucky.empty:
        return text + (" For every arm the other seeds reach the search's best value within "
                       f"{LUCK_MARGIN} of their standard deviations or above it: no best trial owes its rank to its seed alone.")
    parts = [f"{r['arm']} ({r[found]:.3f} with the trials' seed against {r['other seeds: mean']:.3f} ± {r['sd']:.3f} "
             f"over {r['seeds']} other seeds, at most {r['max']:.3f})" for r in lucky.to_dict("records")]
    return text + (" The best configuration of " + "; of ".join(parts) + f" lies above what it reaches with any other "
                   f"seed, by more than {LUCK_MARGIN} of their standard deviations: the search picked it partly for its "
                   "seed's luck, and the tuned means over every seed above are what the configuration gives.")


def ranges_table(studies: dict) -> pd.DataFrame:
    """One row per continuous parameter: the range searched and its scale (widened ranges: from what), and
    each arm's best value with where it lies in the range (0 = low end, 1 = high end; in log scale for a log
    range, in log-odds for a probability; a best value in the outer tenth is marked "edge")."""
    rows = []
    for name in st.RANGES:
        row, used = {"parameter": name}, False
        for arm, study in studies.items():
            low, high, log = st.study_ranges(study).get(name, st.RANGES[name])
            row["range"], row["scale"] = f"{low:g} to {high:g}", "log" if log else "linear"
            widened = [h["changed"][name]["from"] for h in study.user_attrs.get("range_history", [])
                       if name in h["changed"]]
            if widened:
                row["range"] += f" (widened from {widened[0][0]:g} to {widened[0][1]:g})"
            value = study.best_trial.params.get(name)
            if value is None:
                row[st.ARMS[arm]] = "—"
                continue
            used = True
            where = position(name, value, low, high, log)
            row[st.ARMS[arm]] = f"{value:.3g} ({where:.2f}{', edge' if where < 0.1 or where > 0.9 else ''})"
        if used:
            rows.append(row)
    return pd.DataFrame(rows)


def history_text(studies: dict) -> str:
    """A sentence per study whose range was widened during the search: after how many trials, which range."""
    out = []
    for arm, study in studies.items():
        for h in study.user_attrs.get("range_history", []):
            what = ", ".join(f"`{k}` from [{v['from'][0]:g}, {v['from'][1]:g}] to [{v['to'][0]:g}, {v['to'][1]:g}]"
                             for k, v in h["changed"].items())
            out.append(f"{st.ARMS[arm]}: after {h['after_trials']} trials, {what}")
    if not out:
        return ""
    return ("**Extended searches.** A best value fell in the outer tenth of a range, so the range was widened and "
            "the studies continued (every arm of this dataset, with the same number of further trials): "
            + "; ".join(out) + ".")


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
        low, high, log = max((st.study_ranges(s).get(name, st.RANGES[name]) for s in studies.values()),
                             key=lambda r: r[1] / r[0] if r[2] else r[1] - r[0])
        for arm, part in frame.dropna(subset=[name, "value"]).groupby("arm", sort=False):
            look = looks[arm]
            ax.scatter(part[name], part["value"], s=10, alpha=0.55, color=look["color"], marker=look["marker"],
                       label=arm)
            best = part.loc[part["value"].idxmax()]
            ax.scatter([best[name]], [best["value"]], s=130, marker="*", color=look["color"], edgecolor="black",
                       linewidth=0.8, zorder=3)
        if log:
            ax.set_xscale("log")
        spans = [(low, position_inverse(name, 0.1, low, high, log)),
                 (position_inverse(name, 0.9, low, high, log), high)]
        for a, b in spans:
            ax.axvspan(a, b, color="0.88", zorder=0)
        ax.set_xlim(low, high)
        ax.set_xlabel(name)
        ax.set_ylabel("validation mAP")
    handles, labels = axes[0].get_legend_handles_labels()
    style.legend_below(fig, handles, labels, ncol=3)
    return fig
