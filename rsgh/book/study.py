"""Hyperparameter studies with Optuna: the same budget for every arm, chosen on validation queries only.

Three arms answer two questions (``ARMS``):

- ``sgh``: SGH in any architecture, the published linear code's model and loss among them;
- ``sgh-arch``: SGH in R-SGH's architecture: R-SGH's search space with its tie and redundancy terms
  switched off (the same families, depths, widths, scalings, batch sizes and learning rates);
- ``rsgh``: R-SGH, its readings of the sources among the choices.

R-SGH against ``sgh-arch`` asks whether R-SGH's terms help a model; R-SGH against ``sgh`` whether the best
R-SGH beats the best SGH of any architecture.

A study searches one arm on one dataset at one code length (:func:`suggest`). Each trial trains one
model (seed 0) with the compiled step, evaluates the validation mAP after every epoch, keeps its best
epoch (stopping after the study's patience in evaluations without a better one) and reports each value to Optuna,
whose median pruner stops trials behind the median of earlier ones at the same epoch. The test
queries are never looked at here: a trial's value is its best validation mAP, and its run folder has no
test-query reports.

Storage: an Optuna journal (``journal.log``: one JSON line per event, append-only, so a study lives in
the repository's results store and survives the machine) and ``best.json`` in the study's folder;
the trials' run folders (models, checkpoints) in a scratch folder outside the store. An
interrupted study continues: trials left running by a killed process are marked failed and asked
again with the same parameters, resuming from their checkpoints where the scratch folder survived.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from ..config import Config, Runtime, make_config
from ..files import atomic_text
from .protocol import (PIXELS_PROTOCOL, PROTOCOL, PROTOCOLS, PRUNER, new_protocol,  # noqa: F401 (the
                       protocol, pruner)  # studies' names for them, as the pages and tests use them)
from .ranges import position
from .space import (ARMS, CHOICES, DATASETS, PATIENCE, RANGES, arm_method, known_params,  # noqa: F401 (the
                    suggest, trial_config)  # studies' names for the space, as the pages use them)

def study_name(arm: str, dataset: str, bits: int) -> str:
    arm_method(arm)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    return f"{dataset}-k{bits}-{arm}"


def journal_storage(folder: str | Path):
    """The Optuna storage of a study folder: its append-only journal file (several processes may write)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(folder) / "journal.log"
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_study(arm: str, dataset: str, bits: int, folder: str | Path, create: bool = True, seed: int = 0):
    """The study of ``arm`` on ``dataset`` at ``bits`` in ``folder`` (created or continued; ``create=False``:
    an existing one only, read)."""
    import optuna

    name, folder = study_name(arm, dataset, bits), Path(folder)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if not create:
        if not (folder / "journal.log").exists():
            raise FileNotFoundError(f"{folder / 'journal.log'} not found: the study {name} has not been run "
                                    f"(python -m rsgh study --arm {arm} --dataset {dataset} --bits {bits} ...)")
        return optuna.load_study(study_name=name, storage=journal_storage(folder))
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # multivariate, group and constant_liar are "experimental" (a line each)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    storage = journal_storage(folder)
    if name in optuna.study.get_all_study_names(storage):  # loaded, not created again (that appends a record)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    else:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler)
    study.pruner = pruner(study)
    return study


STUDY_FILES = {"journal.log", "best.json", "journal.log.lock", "journal.log.lock.lock"}


def check_study_folder(folder: str | Path, name: str) -> None:
    """Refuse (before anything is written) a study folder that rsgh did not make for this study: it must be
    new, empty, or hold only a study's journal and best configuration, of this study and no other (a second
    arm into the same folder would replace the first one's best.json). Never inside the published book."""
    import optuna

    from ..paths import check_outside_book

    folder = Path(folder)
    check_outside_book(folder, "study --out")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"study --out {folder} is a file, not a study folder; choose another --out")
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    foreign = sorted(names - STUDY_FILES)
    if foreign:
        raise ValueError(f"study --out {folder} holds files that are not a study's ({', '.join(foreign[:3])}); "
                         "choose a new or empty folder")
    if "journal.log" in names:
        try:  # every line an Optuna journal record (Optuna's reader skips lines it cannot read)
            with open(folder / "journal.log", encoding="utf-8") as fh:
                ok = all("op_code" in json.loads(line) for line in fh if line.strip())
            held = optuna.study.get_all_study_names(journal_storage(folder)) if ok else None
        except (ValueError, TypeError, UnicodeDecodeError, OSError):
            held = None
        if held is None:  # another program's file of the same name
            raise ValueError(f"{folder / 'journal.log'} is not an Optuna journal; choose a new or empty folder")
        others = [n for n in held if n != name]
        if others:
            raise ValueError(f"study --out {folder} holds the study {others[0]}, not {name}: each study needs a "
                             "folder of its own (e.g. results/studies/" + name + ")")
    elif "best.json" in names:
        raise ValueError(f"study --out {folder} holds a best.json without a journal: not a study rsgh made; "
                         "choose a new or empty folder")


def _report_hook(folder: str, study_name: str, trial_id: int):
    """A training hook that reports each validation mAP to Optuna and stops a pruned trial (by the pruner
    of the study's protocol) or one still at chance (its ``at_chance``)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=journal_storage(folder))
    study.pruner = pruner(study)
    trial = optuna.trial.Trial(study, trial_id)
    chance, best = protocol(study)["at_chance"], [float("-inf")]

    def hook(g, row):
        if "val_map" in row and row["iteration"] > 0:
            trial.report(row["val_map"], step=int(round(row["epoch"])))
            best[0] = max(best[0], row["val_map"])
            if chance and row["epoch"] >= chance["epochs"] and best[0] < chance["below"]:
                stop(f"at chance through epoch {row['epoch']:g}")
            if trial.should_prune():
                stop(f"pruned at epoch {row['epoch']:g}")

    def stop(why: str):
        """End the trial as pruned, with why in its journal (``stopped``, read by the study pages): the
        exception's message does not reach the journal."""
        trial.set_user_attr("stopped", why)
        raise optuna.TrialPruned(why)

    hook.pruner = study.pruner  # (for the tests: the pruner that decides)
    return hook


def run_trial(cfg: Config, out: str, data_root, folder: str, study_name: str, trial_id: int,
              runtime: Runtime | None = None) -> dict:
    """A Dask task: train one trial's model (resuming its run folder), reporting to the study.
    Returns its state, best validation mAP, its epoch, the epochs trained and the wall time, and
    ``times``: when it started and ended (``time.time()``), the seconds before its training loop
    began, and the seconds of each phase of its work (``rsgh.train.compiled.PHASES``; ``storage_open`` and
    ``storage_reports``: Optuna's journal, read and written for the trial's reports), for
    ``benchmarks/study_speed.py``."""
    import optuna

    from ..errors import DivergedError
    from ..train.rundir import RunDir
    from ..train.compiled import PHASES
    from ..train.task import run_group
    from .schedule import tune_worker_process

    started, t0, state = time.time(), time.perf_counter(), "complete"
    PHASES.take()  # this trial's phases only
    tune_worker_process(1)
    with PHASES.timed("storage_open"):
        hook = _report_hook(folder, study_name, trial_id)
    try:  # no test-query reports: a study looks at the validation queries only (they took 40 s of a trial)
        run_group([cfg], [out], data_root, runtime or Runtime(progress=False, compile_step=True), resume=True,
                  hooks=(hook,), test_reports=False)
    except optuna.TrialPruned:
        state = "pruned"
    except DivergedError:  # a step size too large for the problem: the trial ends as pruned, at its last value
        state = "diverged"
    metrics = RunDir(out).read_metrics()
    valid = metrics[(metrics["iteration"] > 0) & metrics["val_map"].notna()]
    best = valid.loc[valid["val_map"].idxmax()] if len(valid) else {"val_map": float("nan"), "epoch": 0.0}
    seconds = time.perf_counter() - t0
    phases, training_started = PHASES.take()
    phases["storage_reports"] = phases.pop("hooks", 0.0)
    times = {"started": started, "ended": time.time(), "seconds": seconds,
             "before_training": None if training_started is None else training_started - t0, **phases}
    return {"state": state, "value": float(best["val_map"]), "best_epoch": float(best["epoch"]),
            "epochs": float(metrics["epoch"].max()), "seconds": seconds, "times": times}


def counts(study) -> dict:
    from optuna.trial import TrialState

    states = [t.state for t in study.trials]
    return {"complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL), "running": states.count(TrialState.RUNNING)}


def _requeue_interrupted(study) -> None:
    """Trials left running by a killed process: failed, and asked again with the same parameters (once:
    not when such a trial is already waiting; Optuna's own ``skip_if_exists`` would find the failed trial
    itself and never ask again)."""
    from optuna.trial import TrialState

    waiting = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        if t.params not in waiting:
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
            waiting.append(t.params)


def _continue(arm: str, dataset: str, bits: int, folder: Path, max_epochs: int | None = None,
              patience: int | None = None, warmup: int | None = None, known_point: bool | None = None):
    """The study in ``folder`` (checked to be this study's, then created or continued) with its ranges
    recorded and the trials a killed process left running asked again. A new study records its protocol
    (:func:`new_protocol`: the dataset's, with the values given) and, with ``known_point``, asks its arm's
    known point first; a study continued keeps its protocol (a different one asked for is refused: the trials
    so far were judged by it)."""
    check_study_folder(folder, study_name(arm, dataset, bits))
    study = open_study(arm, dataset, bits, folder)
    if not study.trials:
        new = new_protocol(dataset, max_epochs=max_epochs, patience=patience, warmup=warmup, known_point=known_point)
        study.set_user_attr("max_epochs", new["max_epochs"])
        study.set_user_attr("patience", new["patience"])
        study.set_user_attr("pruner", dict(PRUNER, n_warmup_steps=new["warmup"]))
        if new["at_chance"]:
            study.set_user_attr("at_chance", new["at_chance"])
        study.pruner = pruner(study)
        if new["known_point"]:
            study.enqueue_trial(known_params(arm, dataset), user_attrs={"known_point": "the patents' settings"})
    else:
        now = protocol(study)
        held = {"max_epochs": now["max_epochs"], "patience": now["patience"], "warm-up": now["pruner"]["n_warmup_steps"]}
        asked = {"max_epochs": max_epochs, "patience": patience, "warm-up": warmup}
        for key, value in asked.items():
            if value is not None and value != held[key]:
                raise ValueError(f"{folder}: the study {study.study_name} runs with {key} {held[key]}, not {value}: "
                                 "a study keeps its protocol; start a new one in another folder")
        for key in ("max_epochs", "patience"):
            if key not in study.user_attrs:
                study.set_user_attr(key, now[key])
    record_ranges(study)
    _requeue_interrupted(study)
    return study


def run_study(arm: str, dataset: str, bits: int, trials: int, max_epochs: int | None, folder: str | Path,
              scratch: str | Path | None = None, data_root=None, scheduler: str | None = None,
              progress: bool = True, runtime: Runtime | None = None, timings: dict | None = None,
              trial_task=None, patience: int | None = None, warmup: int | None = None,
              known_point: bool | None = None, keep_trials: str | Path | None = None) -> dict:
    """Run the study until it has ``trials`` finished (complete or pruned) trials; write and return
    ``best.json``. A new study's protocol: :func:`new_protocol` (these arguments where not None). ``folder`` holds the journal and best.json; the trials' run folders go to
    ``scratch/<study name>/trials`` (default: ``studies/``); ``keep_trials`` (the store's ``results/trials/<study
    name>``) receives each trial's small files as it ends (:func:`_keep_trial`), so its curve outlives the scratch.

    For the benchmarks: ``timings`` receives ``trials`` (per trial finished here: its number, its result from
    :func:`run_trial`, when submitted and received) and this process's seconds in Optuna's storage and in
    submitting; ``trial_task`` replaces :func:`run_trial` as the task (same arguments)."""
    from distributed import as_completed
    from optuna.trial import TrialState

    from ..train.task import task_data
    from .schedule import get_client, n_workers

    folder, timings = Path(folder), ({} if timings is None else timings)
    timings.update(trials=[], storage_s=0.0, submit_s=0.0)
    clock = time.perf_counter()
    study = _continue(arm, dataset, bits, folder, max_epochs, patience, warmup, known_point)
    budget = {k: v for k, v in protocol(study).items() if k in ("max_epochs", "patience")}
    trials_dir = Path(scratch or "studies") / study.study_name / "trials"
    timings["storage_s"] += time.perf_counter() - clock
    client = get_client(scheduler)
    # the features computed (GIST) and cached once, here, not by every worker at once
    clock = time.perf_counter()
    task_data(make_config(None, dict(DATASETS[dataset], task="retrieval", method="sgh", bits=bits)), data_root,
              progress=progress)
    timings["data_s"] = time.perf_counter() - clock
    t0, wall_before = time.time(), float(study.user_attrs.get("wall_seconds", 0.0))
    running: dict = {}

    def submit():
        clock = time.perf_counter()
        trial = study.ask()
        cfg = trial_config(suggest(trial, arm), arm, dataset, bits, seed=0, **budget)
        run_out = str(trials_dir / cfg.run_name())
        trial.set_user_attr("run", cfg.run_name())
        submitted = time.perf_counter()
        timings["storage_s"] += submitted - clock
        # the worker reports to this trial through the journal: it needs the trial's storage id
        future = client.submit(trial_task or run_trial, cfg, run_out, data_root, str(folder), study.study_name,
                               trial._trial_id, runtime, pure=False)
        timings["submit_s"] += time.perf_counter() - submitted
        running[future] = (trial, time.time())

    def finished():
        c = counts(study)
        return c["complete"] + c["pruned"]

    for _ in range(max(0, min(n_workers(client), trials - finished()))):
        submit()
    pending = as_completed(list(running))
    for future in pending:
        trial, submitted = running.pop(future)
        result = future.result()  # a real error (a bad configuration) stops the study with its message
        received, clock = time.time(), time.perf_counter()
        _record_trial(trial, result, trials_dir / trial.user_attrs["run"], keep_trials)
        state = TrialState.COMPLETE if result["state"] == "complete" else TrialState.PRUNED
        study.tell(trial, None if state == TrialState.PRUNED else result["value"], state=state)
        study.set_user_attr("wall_seconds", wall_before + time.time() - t0)
        done = finished()
        timings["storage_s"] += time.perf_counter() - clock
        timings["trials"].append({"number": trial.number, "submitted": submitted, "received": received, **result})
        if progress:
            print(f"{study.study_name}: trial {trial.number} {result['state']} val mAP {result['value']:.4f} "
                  f"epoch {result['best_epoch']:g} of {result['epochs']:g} ({result['seconds']:.0f} s); "
                  f"{done} of {trials}", flush=True)
        if done + len(running) < trials:
            submit()
            pending.add(next(reversed(running)))
    clock = time.perf_counter()
    best = write_best(study, folder)
    timings["storage_s"] += time.perf_counter() - clock
    return best


def _record_trial(trial, result: dict, run: Path, keep) -> None:
    """A finished trial's numbers into its attributes, and its small files into ``keep`` (when given)."""
    for key in ("best_epoch", "epochs", "seconds", "state"):
        trial.set_user_attr(key, result[key])
    if keep is not None:
        _keep_trial(run, Path(keep))


def _keep_trial(run: Path, keep: Path) -> None:
    """A finished trial's small files into ``keep/<run name>`` (once: a trial asked again has the same name)."""
    from .store import export_run

    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run}: the trial's run folder is not on this machine (a Dask cluster without a "
                                "shared file system?); run the study without keep_trials / --keep-trials")
    if not (keep / run.name / "config.json").exists():  # written last: a complete copy (a pruned trial has no summary)
        export_run(run, keep / run.name, units=False)


def write_best(study, folder: Path) -> dict:
    best = study.best_trial
    doc = {"study": study.study_name, "params": best.params, "validation_map": best.value,
           "trial": best.number, "best_epoch": best.user_attrs.get("best_epoch"),
           "epochs": best.user_attrs.get("epochs"), "trials": counts(study),
           "wall_seconds": study.user_attrs.get("wall_seconds"), "run": best.user_attrs.get("run"),
           "edges": edge_values(study), **protocol(study)}
    atomic_text(Path(folder) / "best.json", json.dumps(doc, indent=2))
    return doc


def record_ranges(study) -> None:
    """Store today's ranges in the study (``ranges``); when they differ from the ones it ran with so far,
    append the change to its ``range_history`` (after how many finished trials, from what, to what): a
    study extended with a widened range says so on its page."""
    now = {k: list(v) for k, v in RANGES.items()}
    before = study.user_attrs.get("ranges")
    if before is not None and before != now:
        c = counts(study)
        changed = {k: {"from": before.get(k), "to": v} for k, v in now.items() if before.get(k) != v}
        study.set_user_attr("range_history", study.user_attrs.get("range_history", []) +
                            [{"after_trials": c["complete"] + c["pruned"], "changed": changed}])
    if before != now:
        study.set_user_attr("ranges", now)


def study_ranges(study) -> dict:
    """{parameter: (low, high, log)} of the ranges the study searched last (its ``ranges``; a widened range
    includes the earlier one), else today's :data:`RANGES`."""
    return {k: tuple(v) for k, v in (study.user_attrs.get("ranges") or RANGES).items()}


def edge_values(study, share: float = 0.1) -> dict:
    """The best trial's continuous parameters that lie within the outer ``share`` of the range the study
    searched (measured by :func:`position`): {name: [value, low, high]}; empty when the optimum lies inside."""
    from optuna.distributions import FloatDistribution

    best, out, ranges = study.best_trial, {}, study_ranges(study)
    for name, value in best.params.items():
        dist = best.distributions[name]
        if not isinstance(dist, FloatDistribution):
            continue
        low, high, log = ranges.get(name, (dist.low, dist.high, dist.log))
        where = position(name, value, low, high, log)
        if where < share or where > 1 - share:
            out[name] = [value, low, high]
    return out


def best_params(folder: str | Path, arm: str) -> dict:
    """The parameters of a finished study's best trial, as :func:`suggest` gives them (from best.json)."""
    import optuna

    path = Path(folder) / "best.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the study first (python -m rsgh study --arm {arm} ...)")
    params = json.loads(path.read_text())["params"]
    try:
        return suggest(optuna.trial.FixedTrial(params), arm)
    except ValueError as err:  # FixedTrial: a value outside today's search space
        raise ValueError(f"{path}: the best parameters ({err}) are outside the search space of this version of "
                         "rsgh; the study was run with another one: run it again in a new folder") from None


def best_budget(folder: str | Path) -> dict:
    """The training budget of the study whose best configuration is in ``folder`` (its best.json):
    ``max_epochs`` and ``patience``, with which a best configuration is retrained."""
    path = Path(folder) / "best.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the study first (python -m rsgh study ...)")
    doc = json.loads(path.read_text())
    if doc.get("max_epochs") is None or doc.get("patience") is None:
        raise ValueError(f"{path} does not say the study's max_epochs and patience (written by an older rsgh): "
                         "continue the study (python -m rsgh study ... --out " + str(folder) + ") to write it again")
    return {"max_epochs": int(doc["max_epochs"]), "patience": int(doc["patience"])}


def best_configs(folder: str | Path, arm: str, dataset: str, bits, seeds) -> dict:
    """The best configuration of the study in ``folder`` at every code length and seed, trained with the
    study's budget (:func:`best_budget`): {(bits, seed): Config}, best.json read once."""
    params, budget = best_params(folder, arm), best_budget(folder)
    return {(k, s): trial_config(params, arm, dataset, k, seed=s, **budget) for k in bits for s in seeds}
