"""The experiments of the book, as functions that notebooks call: each trains what it needs
(or reuses the finished run directories, so rebuilding a figure never retrains) and returns
tidy pandas tables.

Run directories are named ``<runs>/<experiment>/<method>-k<bits>-s<seed>[-<variant>]``. A
run directory whose configuration differs from the one asked for is never overwritten: the
call stops with the difference (see ``train._prepare_dir``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .config import Config, make_config
from .runner import data_key, load_task_data, run_group


def run_dir_name(cfg: Config, variant: str = "") -> str:
    return f"{cfg.method}-k{cfg.bits}-s{cfg.seed}" + (f"-{variant}" if variant else "")


def train_variants(experiment: str, variants: Sequence[tuple[str, Config]], runs: str | Path = "runs",
                   data_root=None, progress: bool = True, prepared=None, workers: int | None = None) -> list[Path]:
    """Train named configurations, grouped by what must be shared, and return their run dirs.

    ``variants``: (variant name, config) pairs. Configurations that can share a group (same
    architecture, data, learning rate) are trained together in lock-step.

    ``workers`` (default: the environment variable ``RSGH_WORKERS``, else 1): with more than one,
    each group is dealt out into that many smaller groups trained at the same time, each in a
    process of its own (one thread each), so that every core works. A model ends where it ends in
    any other group (``tests/test_group.py``), so the results do not depend on ``workers``.
    """
    from .objective import PER_MODEL
    from .train import pick_device

    workers = int(os.environ.get("RSGH_WORKERS", "1")) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers}; set RSGH_WORKERS to a positive integer)")
    if workers > 1 and any(pick_device(c.device).type == "cuda" for _, c in variants):
        workers = 1  # one accelerator: one lock-step group on it at a time
    root = Path(runs) / experiment
    groups: dict[tuple, list[tuple[Path, Config]]] = {}
    for name, cfg in variants:
        shared = tuple((k, v) for k, v in cfg.to_dict().items() if k not in PER_MODEL) + (cfg.model_lr,)
        groups.setdefault(shared, []).append((root / run_dir_name(cfg, name), cfg))
    outs = [d for members in groups.values() for d, _ in members]
    if workers == 1:
        for members in groups.values():
            run_group([c for _, c in members], [d for d, _ in members], data_root, resume=True, progress=progress,
                      prepared=prepared)
        return outs
    # spawn, not fork: a forked child of a process that has run torch (threads, compiled code) can hang
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for members in groups.values():
            # interleaved, so that each part mixes the methods and seeds (their costs differ a little)
            parts = [members[i::workers] for i in range(min(workers, len(members)))]
            futures = [pool.submit(_train_part, [c for _, c in part], [d for d, _ in part], data_root)
                       for part in parts]
            for part, future in zip(parts, futures):
                future.result()  # re-raises a worker's error here
                if progress:
                    print(f"{experiment}: trained {', '.join(d.name for d, _ in part)}", flush=True)
    return outs


_WORKER_DATA: dict[tuple, tuple] = {}  # in a worker process: the task data of the groups it trained so far


def _train_part(configs: list[Config], outs: list[Path], data_root) -> None:
    """A worker's share of a group. The worker loads each task's data once and keeps it for its next groups."""
    key = data_key(configs[0])
    if key not in _WORKER_DATA:
        _WORKER_DATA[key] = load_task_data(configs[0], data_root, progress=False)
    run_group(configs, outs, data_root, resume=True, progress=False, prepared=_WORKER_DATA[key])


def read_runs(dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, finals): every metrics row of every run, and one row per run with its summary,
    both with the run's method, bits, seed, variant and configuration readings as columns."""
    curves, finals = [], []
    for d in map(Path, dirs):
        summary = json.loads((d / "summary.json").read_text())
        cfg = summary["config"]
        variant = d.name.split("-", 3)[3] if d.name.count("-") >= 3 else "default"
        tags = {"run": d.name, "method": cfg["method"].upper().replace("RSGH", "R-SGH"), "bits": cfg["bits"],
                "seed": cfg["seed"], "variant": variant}
        m = pd.read_csv(d / "metrics.csv")
        curves.append(m.assign(**tags))
        row = dict(tags, **summary["final"], wall_time_s=summary["wall_time_s"],
                   seconds_per_epoch=summary["seconds_per_epoch"], group_size=summary.get("group_size", 1),
                   source=summary["data_source"], git_commit=summary["git_commit"])
        if (d / "retrieval.json").exists():
            r = json.loads((d / "retrieval.json").read_text())
            row.update({"map": r["map"], "precision_radius2": r["precision_radius2"],
                        **{f"p@{k}": v for k, v in r["precision_at_k"].items()}})
        finals.append(row)
    return pd.concat(curves, ignore_index=True), pd.DataFrame(finals)


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


def e1_configs(seeds: Sequence[int], epochs: int, **overrides) -> list[tuple[str, Config]]:
    return [("", make_config(name, dict(overrides, seed=s, epochs=epochs)))
            for name in ("e1-sgh", "e1-rsgh") for s in seeds]


def retrieval_configs(presets: tuple[str, str], bits: Sequence[int], seeds: Sequence[int], epochs: int,
                      **overrides) -> list[tuple[str, Config]]:
    return [("", make_config(name, dict(overrides, bits=b, seed=s, epochs=epochs)))
            for b in bits for name in presets for s in seeds]


def ablation_configs(base: str, seeds: Sequence[int], epochs: int, **overrides) -> list[tuple[str, Config]]:
    """SGH, R-SGH with the default readings, and R-SGH with each alternative reading of SPEC 3."""
    readings = {"default": {}, "tie-encoder": {"tie_target": "encoder"}, "redundancy-kl": {"redundancy": "kl"},
                "redundancy-correlation": {"redundancy": "correlation"},
                "step-sizes": {"coupling": "step_sizes"}}
    out = [("default", make_config(base.replace("rsgh", "sgh"), dict(overrides, seed=s, epochs=epochs)))
           for s in seeds]
    for name, reading in readings.items():
        out += [(name, make_config(base, dict(overrides, **reading, seed=s, epochs=epochs))) for s in seeds]
    return out


def baselines_table(cfg: Config, bits: Sequence[int], seeds: Sequence[int] = (0,), data_root=None,
                    prepared=None, names: Sequence[str] = ("LSH", "PCAH", "ITQ", "SH"),
                    cache: bool = True) -> pd.DataFrame:
    """The classic baselines on the same features and split as a retrieval configuration (on the
    features before ``feature_scaling``, as in the published calibration).

    With ``cache`` the table is saved under ``cache_dir()/baselines``, keyed by the features,
    labels, split, code lengths, seeds, methods and the source of the code that computes it; the
    ``seconds`` column then tells how long each fit took when it was computed."""
    from . import baselines, metrics, retrieval
    from .baselines import fit_baseline
    from .features import array_digest, cache_key, code_digest
    from .files import atomic_text
    from .paths import cache_dir
    from .retrieval import retrieval_report

    _, rdata = prepared or load_task_data(cfg, data_root)
    path = None
    if cache:
        key = cache_key(array_digest(rdata.raw_features, rdata.labels, rdata.query, rdata.database),
                        repr(list(bits)), repr(list(seeds)), repr(list(names)),
                        code_digest(baselines, metrics, retrieval))
        path = cache_dir() / "baselines" / f"{key}.csv"
        if path.exists():
            return pd.read_csv(path)
    rows = []
    db, q = rdata.raw_features[rdata.database], rdata.raw_features[rdata.query]
    for name in names:
        for k in bits:
            # PCAH and SH are deterministic: one seed is enough
            for s in (seeds if name in ("LSH", "ITQ") else seeds[:1]):
                t0 = time.perf_counter()
                model = fit_baseline(name.lower(), db, k, seed=s)
                rep = retrieval_report(model.encode(q), model.encode(db), rdata)
                rows.append({"method": name, "bits": k, "seed": s, "map": rep["map"],
                             "precision_radius2": rep["precision_radius2"],
                             **{f"p@{kk}": v for kk, v in rep["precision_at_k"].items()},
                             "seconds": time.perf_counter() - t0, "source": rdata.source})
    table = pd.DataFrame(rows)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_text(path, table.to_csv(index=False))
    return table


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


def show_parameters(**params) -> None:
    """A visible line on a book page with the parameters its notebook was executed with."""
    from IPython.display import Markdown, display

    display(Markdown("*Executed with* " + ", ".join(f"`{k} = {v!r}`" for k, v in params.items())))
