"""What the retrieval pages of the book say and compute beyond the shared experiment code: the text
of each page served by the one retrieval notebook, its configurations, its tables and the numbers
it glues into its text.

One notebook (``notebooks/retrieval.ipynb``) serves embodiments 2 and 3 and the MNIST /
Fashion-MNIST pages; ``page`` selects the text below, everything else comes from ``plan.yml``.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..config import Config, make_config

_PROTOCOL = ("Exact expected mAP under a random order within Hamming ties, over the full ranking of the "
             "database; relevant = same label.")
_VALIDATION = ("{validation} validation queries per class are carved from the database side (disjoint from "
               "the test queries, and not trained on): the epoch to keep is chosen on them, and the test "
               "queries are measured once per kept model.")

RETRIEVAL_PAGES = {
    "e2": ("Embodiment 2: CIFAR-10 retrieval",
           "The patents' second embodiment: GIST-512 features of the 60,000 CIFAR-10 images; 100 test queries "
           "per class, the rest is the training set and the database; M = 4 hidden layers of width K on each "
           "side, K = 32, 64, 128, batch 32, 200 epochs, delta = eta = 0.01. The patents' table of mAP is not "
           "available to this project, so the tables below stand beside the classic baselines on the same "
           "features and split. Features are standardised with the database's mean and standard deviation "
           "(a choice the patents do not state); the baselines use the raw GIST features, as in the published "
           "calibration. Where the official `cifar-10-python.tar.gz` is absent, the JPEG copy "
           "is used and every result says \"CIFAR-10 (JPEG copy)\" (see {doc}`deviations`)."),
    "e3": ("Embodiment 3: Caltech-256 retrieval",
           "The patents' third embodiment: GIST-512 features of Caltech-256 images (resized to 128 x 128 here, "
           "a parameter), 1,000 random test queries, the rest is the training set and the database (without the "
           "`257.clutter` category by default), M = 4, K = 32, 64, 128, batch 32, 200 epochs. The official "
           "archive `256_ObjectCategories.tar` (md5 67b4f42ca05d46448c6bb8ecd2220f6d) is needed; this page shows "
           "results only when it is present in the data root, and it was not on the machine that built the book "
           "(see {doc}`deviations`)."),
    "mnist-pixels": ("MNIST, pixels", "The retrieval protocol of embodiment 2 on MNIST (70,000 images, train and "
                     "test together) with raw pixels in [0, 1] as features; network as in embodiment 2."),
    "mnist-gist": ("MNIST, GIST", "The retrieval protocol of embodiment 2 on MNIST with GIST-512 of the 28 x 28 "
                   "images as features (standardised); network as in embodiment 2."),
    "fashion-pixels": ("Fashion-MNIST, pixels", "The retrieval protocol of embodiment 2 on Fashion-MNIST (70,000 "
                       "images) with raw pixels in [0, 1] as features; network as in embodiment 2."),
    "fashion-gist": ("Fashion-MNIST, GIST", "The retrieval protocol of embodiment 2 on Fashion-MNIST with "
                     "GIST-512 of the 28 x 28 images as features (standardised); network as in embodiment 2."),
}


def retrieval_text(page: str, validation: int, epochs: int | None = None) -> tuple[str, str]:
    """(title, introduction) of a retrieval page; ``epochs``: what this page trains, said where it is not
    the patents' 200."""
    if page not in RETRIEVAL_PAGES:
        raise ValueError(f"page={page!r} is not one of {', '.join(RETRIEVAL_PAGES)}")
    title, intro = RETRIEVAL_PAGES[page]
    intro += " " + _PROTOCOL
    if validation:
        intro += " " + _VALIDATION.format(validation=validation)
    if epochs is not None and page in ("e2", "e3") and epochs != 200:
        intro += (f" **This page trains {epochs} epochs, not the patents' 200.** The model kept is the one of the "
                  "best validation evaluation either way, and the curves below show where that falls.")
    intro += (" Both the model after the last epoch (the patents' protocol) and the model of the best validation "
              "epoch are measured on the test queries ({doc}`deviations` lists where this book departs from the "
              "sources).")
    return title, intro


def with_validation(overrides: dict, preset: str, validation: int) -> dict:
    """``overrides`` plus the validation queries, drawn like the preset's test queries."""
    n_queries = overrides.get("n_queries", make_config(preset).n_queries)
    key = "n_validation" if n_queries else "validation_per_class"
    return dict(overrides, **{key: validation})


def retrieval_configs(presets: Sequence[str], bits: Sequence[int], seeds: Sequence[int], epochs: int,
                      validation: int, overrides: dict) -> list[tuple[str, Config]]:
    """SGH and R-SGH (the two presets) at every code length and seed."""
    if len(seeds) == 0 or len(bits) == 0:
        raise ValueError("seeds and bits must not be empty: give at least one of each")
    return [("default", make_config(p, dict(with_validation(overrides, p, validation), bits=b, seed=s,
                                           epochs=epochs)))
            for b in bits for p in presets for s in seeds]


def kept_models(finals: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """Each run twice, as the final model (after ``epochs``) and as the model of its best validation
    epoch (when there is one), labelled in ``method`` for the mAP table; ``map`` is the test mAP."""
    final = finals.assign(method=finals["method"] + f", epoch {epochs}")
    if "map_best" not in finals or finals["map_best"].isna().all():
        return final
    best = finals.assign(method=finals["method"] + ", best validation epoch", map=finals["map_best"])
    return pd.concat([final, best], ignore_index=True)


def glue_retrieval_numbers(page: str, finals: pd.DataFrame, baselines: pd.DataFrame) -> None:
    """Glue the headline numbers: test mAP of every method and code length (final and best-validation
    models), active units, and the baselines' mAP."""
    from .notebook import glue_means

    key = page.replace("-", "_")
    glue_means(f"{key}_map", finals, ["method", "bits"], "map")
    if "map_best" in finals and finals["map_best"].notna().all():
        glue_means(f"{key}_mapbest", finals, ["method", "bits"], "map_best")
        glue_means(f"{key}_bestepoch", finals, ["method", "bits"], "best_epoch")
    glue_means(f"{key}_active", finals, ["method", "bits"], "active_units_001")
    glue_means(f"{key}_map", baselines, ["method", "bits"], "map")


def findings(page: str, finals: pd.DataFrame, baselines: pd.DataFrame) -> str:
    """A paragraph that reads the table: R-SGH against SGH and the best baseline at each code length,
    with the seed spreads (computed, never typed)."""
    mean = finals.groupby(["method", "bits"])["map"].agg(["mean", "std", "count"])
    base = baselines.groupby(["method", "bits"])["map"].mean()
    parts = []
    for k in sorted(finals["bits"].unique()):
        r, s = mean.loc[("R-SGH", k)], mean.loc[("SGH", k)]
        best_name = base.xs(k, level="bits").idxmax()
        spread = max(r["std"], s["std"]) if r["count"] > 1 else float("nan")
        diff = r["mean"] - s["mean"]
        within = "within one seed spread" if abs(diff) <= spread else "beyond one seed spread"
        parts.append(f"at K = {k}, R-SGH {r['mean']:.3f} against SGH {s['mean']:.3f} (difference {diff:+.3f}, "
                     f"{within if spread == spread else 'one seed'}), best baseline {best_name} "
                     f"{base.loc[(best_name, k)]:.3f}")
    text = "Test mAP of the models after the last epoch: " + "; ".join(parts) + "."
    return text + untrained_runs(finals)


def untrained_runs(finals: pd.DataFrame, included_in: str = "the means above") -> str:
    """A sentence naming the runs that ended with no active code unit (activity A > 0.01 for no bit:
    their codes hardly depend on the image), with their test mAP; empty when there are none. The
    page's numbers (``included_in``) include them, so a reader must know."""
    dead = finals[finals["active_units_001"] == 0].sort_values(["bits", "seed", "method"])
    if dead.empty:
        return ""
    runs = ", ".join(f"{r.method} at K = {r.bits}, seed {r.seed} (test mAP {r.map:.3f})" for r in dead.itertuples())
    return (f" **{len(dead)} of {len(finals)} runs ended with no active code unit** (activity above 0.01 for no "
            f"bit): {runs}. They are in {included_in}.")


def dead_units(dirs, finals: pd.DataFrame, best: bool = False) -> pd.DataFrame:
    """Per run: the fraction of its encoder's ReLU units that are dead (silent on every database image),
    layer by layer, beside whether the run trained (some active code unit); from its retrieval report."""
    from ..train.rundir import RunDir

    rows = []
    for d, run in zip(dirs, finals.to_dict("records")):
        report = RunDir(d).read_retrieval(best=best) or {}
        layers = report.get("dead_units")
        if layers is None:
            continue
        rows.append({"method": run["method"], "K": run["bits"], "seed": run["seed"],
                     "trained": "yes" if run["active_units_001"] > 0 else "no",
                     **{f"layer {i + 1} dead": v for i, v in enumerate(layers)}})
    return pd.DataFrame(rows)


def dead_units_sentence(table: pd.DataFrame) -> str:
    """What the dead units say about the runs that never trained ('' when every run trained)."""
    if table.empty or (table["trained"] == "yes").all():
        return ""
    last = [c for c in table.columns if c.endswith(" dead")][-1]
    dead, alive = table[table["trained"] == "no"], table[table["trained"] == "yes"]
    text = (f"The {len(dead)} run(s) that never trained have on average {dead[last].mean():.0%} of the encoder's last "
            f"hidden layer dead (units silent on every database image)")
    if len(alive):
        text += f", against {alive[last].mean():.0%} for the runs that trained"
    return text + ": with that layer dead, the codes no longer depend on the image."
