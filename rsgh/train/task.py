"""A training task end to end: load the data a group of configurations needs, train the group in
lock-step, and write the task's results into each run folder.

Retrieval runs get ``split.json`` (the test query, validation and database indices),
``feature_scaling.npz`` (what ``encode`` applies to new images' features), ``retrieval.json`` (mAP,
precision@k, precision within Hamming radius 2 and precision-recall points of the final model on the
test queries) and, with a validation set, ``retrieval_best.json`` (the same for the model at its best
validation mAP). The test queries are looked at here only, once per kept model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import Config, Runtime
from ..data.task import TaskData, data_key, load_task_data
from ..eval.retrieval import map_evaluator, model_codes, retrieval_report
from .loop import train_group
from .rundir import BEST, RunDir, finished_runs
from .step import PHASES, pick_device

_LOADED: dict[tuple, TaskData] = {}  # in this process: the data of the tasks run so far (a worker reuses it)


def task_data(cfg: Config, data_root=None, progress: bool = True) -> TaskData:
    """The task's data, loaded once per process."""
    key = (data_key(cfg), str(data_root))
    if key not in _LOADED:
        if len(_LOADED) >= 4:  # a worker that serves many datasets keeps the latest few
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load_task_data(cfg, data_root, progress)
    return _LOADED[key]


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
        extra = map_evaluator(data.retrieval, pick_device(runtime.device)) if data.retrieval is not None else None
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
        if best:
            report["epoch"] = run.read_summary().get("best", {}).get("best_epoch")
        run.write_retrieval(report, best=best)


def train_model(cfg: Config, out: str | Path, data_root=None, runtime: Runtime | None = None,
                resume: bool = False) -> dict:
    """Train one model of ``cfg`` into the run folder ``out`` (its data loaded as the configuration
    says); returns its summary. ``resume`` continues an interrupted run or returns a finished one."""
    return run_group([cfg], [out], data_root, runtime or Runtime(progress=False), resume=resume)[0]
