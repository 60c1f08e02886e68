"""A training task end to end: load the data a group of configurations needs, train the group in
lock-step, and write the task's results into each run folder.

Retrieval runs get ``split.json`` (the test query, validation and database indices),
``feature_scaling.npz`` (what ``encode`` applies to new images' features), ``retrieval.json`` (mAP,
precision@k, precision within Hamming radius 2 and precision-recall points of the final model on the
test queries) and, with a validation set, ``retrieval_best.json`` (the same for the model at its best
validation mAP). The test queries are looked at here only, once per kept model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from ..config import Config, Runtime
from ..data.features import apply_scaling, fit_scaling
from ..data.task import RetrievalData, TaskData, data_key, load_task_data
from ..eval.retrieval import map_evaluator, model_codes, retrieval_report
from ..method.measures import dead_units
from .loop import train_group
from .rundir import BEST, RunDir, finished_runs
from .compiled import PHASES
from .step import pick_device

_LOADED: dict[tuple, TaskData] = {}  # in this process: the data of the tasks run so far (a worker reuses it)


def task_data(cfg: Config, data_root=None, progress: bool = True) -> TaskData:
    """The task's data, loaded once per process. A retrieval task's collection (images, features and
    split) is loaded once whatever its feature scaling, and each scaling is fitted and applied to it
    (:func:`_rescaled`): a study's worker gets trials of four scalings, and loading MNIST's images again
    for each took 4 to 6 s of a 6 s load."""
    key = (data_key(cfg), str(data_root))
    if key not in _LOADED:
        if cfg.task == "retrieval" and cfg.feature_scaling != "none":
            unscaled = task_data(dataclasses.replace(cfg, feature_scaling="none"), data_root, progress)
            data = _rescaled(unscaled, cfg.feature_scaling)
        else:
            data = load_task_data(cfg, data_root, progress)
        if len(_LOADED) >= 4:  # a worker that serves many datasets keeps the latest few
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = data
    _LOADED[key] = _LOADED.pop(key)  # the latest used last: the first is the one to drop
    return _LOADED[key]


def _rescaled(unscaled: TaskData, kind: str) -> TaskData:
    """The data of ``unscaled`` (a retrieval task without feature scaling) with the scaling ``kind``
    fitted on its database and applied, exactly as ``rsgh.data.task.load_task_data`` does; the raw
    features and labels are the same arrays, and so is what is derived from the raw features (the
    Euclidean neighbours of the test queries)."""
    r = unscaled.retrieval
    scaling = fit_scaling(r.raw_features[r.split.database], kind)
    scaled = RetrievalData(apply_scaling(r.raw_features, scaling), r.raw_features, r.labels, r.split, scaling, r.source,
                           r.names, r.class_names, r.derived)
    return TaskData(scaled.x("database"), scaled.x(scaled.selection_part), scaled.source, unscaled.checksums, scaled)


def run_group(configs: Sequence[Config], outs: Sequence[str | Path], data_root=None,
              runtime: Runtime = Runtime(progress=False),
              resume: bool = False, prepared: TaskData | None = None, hooks=(), test_reports: bool = True) -> list[dict]:
    """Train ``configs`` together (one model per run folder in ``outs``); returns their summaries.
    ``test_reports=False``: no test-query results (``retrieval.json``), for a study's trials, which look
    at the validation queries only."""
    configs = [c.validate() for c in configs]
    runtime = runtime.validate()
    also = ("retrieval.json",) if configs[0].task == "retrieval" and test_reports else ()
    if resume and (done := finished_runs(configs, outs, also)) is not None:
        return done
    if any(data_key(c) != data_key(configs[0]) for c in configs[1:]):
        raise ValueError("models of one group must use the same data, features and split")
    with PHASES.timed("data"):
        data = prepared or task_data(configs[0], data_root, runtime.progress)
        extra = None
    if data.retrieval is not None:  # this process's data: its training and evaluation arrays are the database's
        # and the selection queries' features (no copy of either for each task)
        same = {} if prepared is not None else {"queries": data.eval_x, "database": data.train_x}
        extra = map_evaluator(data.retrieval, pick_device(runtime.device), **same)
    summaries = train_group(configs, data, outs, runtime, resume=resume, hooks=hooks, extra_eval=extra)
    if data.retrieval is not None and test_reports:
        with PHASES.timed("test_reports"):
            for out in outs:
                write_retrieval_results(RunDir(out), data)
    return summaries


def write_retrieval_results(run: RunDir, data: TaskData) -> None:
    """The split, the scaling and the test-query results of the final (and best) model of a run."""
    r = data.retrieval
    run.save_split(r.split)
    run.save_scaling(r.scaling)
    for best in (True, False):  # retrieval.json last: its presence marks the run complete
        if best and not run.file(BEST).exists():
            continue
        model, _ = run.load_model(name=BEST if best else "model.pt")
        report = retrieval_report(model_codes(model, r, "query"), model_codes(model, r, "database"), r)
        # the fraction of dead ReLU units per encoder layer, on the database (why a run never trained, if it did not)
        report["dead_units"] = dead_units(model, torch.as_tensor(r.x("database")))[0]
        if best:
            report["epoch"] = run.read_summary().get("best", {}).get("best_epoch")
        run.write_retrieval(report, best=best)


def train_model(cfg: Config, out: str | Path, data_root=None, runtime: Runtime | None = None,
                resume: bool = False) -> dict:
    """Train one model of ``cfg`` into the run folder ``out`` (its data loaded as the configuration
    says); returns its summary. ``resume`` continues an interrupted run or returns a finished one."""
    return run_group([cfg], [out], data_root, runtime or Runtime(progress=False), resume=resume)[0]
