"""Hyperparameter studies with Optuna: the same budget for SGH and R-SGH, chosen on validation queries only.

A study searches the choices the sources leave open and the ordinary hyperparameters (see
:func:`suggest`) for one method, dataset and code length. Each trial trains one model (seed 0) on
the training set, evaluates the validation mAP after every epoch, keeps its best epoch (patience
``PATIENCE`` evaluations) and reports each value to Optuna, whose median pruner stops trials that are
behind the median of earlier ones at the same epoch. The test queries are never looked at here:
a trial's value is its best validation mAP.

Storage: a SQLite file ``DIR/study.db`` by default (any database URL with ``storage=``, for trials on
many machines); a trial's run folder is ``DIR/trials/<run name>``. Trials are Dask tasks (two at a
time on a two-core machine; TPE's constant liar keeps parallel trials apart). An interrupted study
continues: trials left running by a killed process are marked failed and asked again with the same
parameters, and their run folders resume from their checkpoints. ``DIR/best.json`` holds the best
parameters, their validation mAP, the trial counts and the wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import Config, Runtime, make_config
from ..files import atomic_text

PATIENCE = 3  # evaluations (epochs) without a better validation mAP before a trial stops
DATASETS = {  # the data of a study: dataset, features and their split (the test queries of the pages)
    "cifar10": dict(dataset="cifar10", features="gist", queries_per_class=100, validation_per_class=100),
    "mnist": dict(dataset="mnist", features="pixels", queries_per_class=100, validation_per_class=100),
    "fashion-mnist": dict(dataset="fashion-mnist", features="pixels", queries_per_class=100,
                          validation_per_class=100),
}


def suggest(trial, method: str) -> dict:
    """The search space: Optuna suggestions for one trial of ``method`` ("sgh" or "rsgh"), as
    parameters that :func:`trial_config` turns into a configuration.

    Left out: the distributional estimator. It decodes 2K variants of every code, 4.6x slower per step
    than the approximate one at K = 64, M = 4, batch 32 (measured on the development machine) and more
    at larger batches, so one trial of 30 CIFAR-10 epochs would take up to an hour."""
    p = {"feature_scaling": trial.suggest_categorical("feature_scaling", ["none", "center", "standardize", "whiten"]),
         "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
         "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256, 512]),
         "train_noise": trial.suggest_categorical("train_noise", ["uniform", "half"])}
    family = trial.suggest_categorical("family", ["mlp", "linear-reference"] if method == "sgh" else ["mlp"])
    p["family"] = family
    if family == "linear-reference":  # the published SGH code: linear, its own loss (SPEC section 2)
        return p
    p["hidden_layers"] = trial.suggest_categorical("hidden_layers", [0, 1, 2, 4] if method == "sgh" else [1, 2, 4])
    if p["hidden_layers"] >= 2:
        p["width_factor"] = trial.suggest_categorical("width_factor", [1, 2])
    p["recon_sigma"] = trial.suggest_float("recon_sigma", 0.1, 10.0, log=True)
    p["prior"] = trial.suggest_float("prior", 0.1, 0.5)
    if method == "rsgh":
        p["coupling"] = trial.suggest_categorical("coupling", ["weights", "step_sizes"])
        if p["coupling"] == "weights":
            p["delta"] = trial.suggest_float("delta", 1e-3, 1.0, log=True)
            p["eta"] = trial.suggest_float("eta", 1e-3, 1.0, log=True)
            p["adv_lr"] = trial.suggest_float("adv_lr", 1e-3, 1e-1, log=True)
        else:  # delta and eta are the step sizes of the model and of the adversary
            p["delta"] = trial.suggest_float("delta_step", 1e-4, 1e-2, log=True)
            p["eta"] = trial.suggest_float("eta_step", 1e-3, 1e-1, log=True)
        p["tau"] = trial.suggest_float("tau", 0.01, 0.2, log=True)
        p["tie_target"] = trial.suggest_categorical("tie_target", ["decoder", "encoder"])
        p["redundancy"] = trial.suggest_categorical("redundancy", ["activity", "kl", "correlation"])
    return p


def trial_config(params: dict, method: str, dataset: str, bits: int, max_epochs: int, seed: int = 0) -> Config:
    """The configuration of a trial's parameters at ``bits`` (a best configuration retrained at other code
    lengths keeps its width factor), trained up to ``max_epochs`` with early stopping."""
    p = dict(params)
    family, factor = p.pop("family", "mlp"), p.pop("width_factor", 1)
    base = dict(DATASETS[dataset], task="retrieval", method=method, bits=bits, seed=seed, epochs=max_epochs,
                eval_epochs=1, patience=PATIENCE)
    if family == "linear-reference":
        base.update(arch="reference", objective="reference", hidden_layers=0)
    else:
        base["hidden_width"] = bits * factor if factor != 1 else 0
    return make_config(None, dict(base, **p))


def _report_hook(storage: str, study_name: str, trial_id: int):
    """A training hook that reports each validation mAP to Optuna and stops a pruned trial."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trial = optuna.trial.Trial(study, trial_id)

    def hook(g, row):
        if "val_map" in row and row["iteration"] > 0:
            trial.report(row["val_map"], step=int(round(row["epoch"])))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {row['epoch']:g}")

    return hook


def run_trial(cfg: Config, out: str, data_root, storage: str, study_name: str, trial_id: int) -> dict:
    """A Dask task: train one trial's model (resuming its run folder), reporting to the study.
    Returns its state, best validation mAP, epochs trained and wall time."""
    import optuna

    from ..train.rundir import RunDir
    from ..train.task import run_group
    from .schedule import tune_worker_process

    tune_worker_process(1)
    t0, state = time.perf_counter(), "complete"
    try:
        run_group([cfg], [out], data_root, Runtime(progress=False), resume=True,
                  hooks=(_report_hook(storage, study_name, trial_id),))
    except optuna.TrialPruned:
        state = "pruned"
    metrics = RunDir(out).read_metrics()
    return {"state": state, "value": float(metrics["val_map"].max()), "epochs": float(metrics["epoch"].max()),
            "seconds": time.perf_counter() - t0}


def _storage(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


def counts(study) -> dict:
    from optuna.trial import TrialState

    states = [t.state for t in study.trials]
    return {"complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL), "running": states.count(TrialState.RUNNING)}


def open_study(method: str, dataset: str, bits: int, out: str | Path, storage: str | None = None, seed: int = 0):
    """The study of ``method`` on ``dataset`` at ``bits`` in folder ``out`` (created or continued)."""
    import optuna

    if method not in ("sgh", "rsgh") or dataset not in DATASETS:
        raise ValueError(f"method must be sgh or rsgh and dataset one of {', '.join(DATASETS)}; got {method}, {dataset}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=f"{method}-{dataset}-k{bits}", storage=_storage(out, storage), direction="maximize",
        load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=6, n_warmup_steps=2))


def _requeue_interrupted(study) -> None:
    """Trials left running by a killed process: failed, and asked again with the same parameters."""
    from optuna.trial import TrialState

    for t in study.trials:
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number}, skip_if_exists=True)


def run_study(method: str, dataset: str, bits: int, trials: int, max_epochs: int, out: str | Path,
              storage: str | None = None, data_root=None, scheduler: str | None = None, progress: bool = True) -> dict:
    """Run the study until it has ``trials`` finished (complete or pruned) trials; write and return
    ``best.json``."""
    from distributed import as_completed
    from optuna.trial import TrialState

    from .schedule import get_client, n_workers

    out = Path(out)
    study = open_study(method, dataset, bits, out, storage)
    storage_url = _storage(out, storage)
    _requeue_interrupted(study)
    client = get_client(scheduler)
    t0, wall_before = time.time(), float(study.user_attrs.get("wall_seconds", 0.0))
    running: dict = {}

    def submit():
        trial = study.ask()
        cfg = trial_config(suggest(trial, method), method, dataset, bits, max_epochs)
        run_out = str(out / "trials" / cfg.run_name())
        trial.set_user_attr("run", run_out)
        # the worker reports to this trial through the storage: it needs the trial's storage id
        future = client.submit(run_trial, cfg, run_out, data_root, storage_url, study.study_name, trial._trial_id,
                               pure=False)
        running[future] = trial

    def finished():
        c = counts(study)
        return c["complete"] + c["pruned"]

    for _ in range(max(0, min(n_workers(client), trials - finished()))):
        submit()
    pending = as_completed(list(running))
    for future in pending:
        trial = running.pop(future)
        result = future.result()  # a real error (a bad configuration) stops the study with its message
        for key in ("epochs", "seconds"):
            trial.set_user_attr(key, result[key])
        state = TrialState.PRUNED if result["state"] == "pruned" else TrialState.COMPLETE
        study.tell(trial, None if state == TrialState.PRUNED else result["value"], state=state)
        study.set_user_attr("wall_seconds", wall_before + time.time() - t0)
        if progress:
            print(f"{study.study_name}: trial {trial.number} {result['state']} val mAP {result['value']:.4f} "
                  f"({result['seconds']:.0f} s); {finished()} of {trials}", flush=True)
        if finished() + len(running) < trials:
            submit()
            pending.add(next(reversed(running)))
    return write_best(study, out)


def write_best(study, out: Path) -> dict:
    best = study.best_trial
    doc = {"study": study.study_name, "params": best.params, "validation_map": best.value,
           "trial": best.number, "trials": counts(study), "wall_seconds": study.user_attrs.get("wall_seconds"),
           "run": best.user_attrs.get("run")}
    atomic_text(out / "best.json", json.dumps(doc, indent=2))
    return doc


def best_params(study_dir: str | Path, method: str) -> dict:
    """The parameters of a finished study's best trial, as :func:`suggest` gives them (from best.json)."""
    import optuna

    path = Path(study_dir) / "best.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the study first (python -m rsgh study ... --out {study_dir})")
    params = json.loads(path.read_text())["params"]
    try:
        return suggest(optuna.trial.FixedTrial(params), method)
    except ValueError as err:  # FixedTrial: a value outside today's search space
        raise ValueError(f"{path}: the best parameters ({err}) are outside the search space of this version of "
                         "rsgh; the study was run with another one: run it again in a new folder") from None


def tuned_configs(study_dirs: dict, dataset: str, bits, seeds, max_epochs: int) -> list[tuple[str, Config]]:
    """Each method's best configuration (``study_dirs``: method -> study folder) at every code length and
    seed: the final comparison, measured once on the test queries."""
    return [("tuned", trial_config(best_params(study_dirs[m], m), m, dataset, k, max_epochs, seed=s))
            for k in bits for m in ("sgh", "rsgh") for s in seeds]
