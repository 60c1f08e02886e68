"""The training loop: a group of models in lock-step, seeded and deterministic, with evaluation
points, checkpoints, early stopping on the validation mAP, and resume.

A group is one model or several that share the architecture, data and batch stream but may differ
in method, seed and the R-SGH readings (``objective.PER_MODEL``); they are trained as one batched
computation, and each model gets exactly the run folder a lone run would produce (``rundir``).

Randomness: ``data_seed`` drives the batch order (shared by the group), each model's ``seed`` its
initialisation and its noise xi. With ``patience``, a model stops after that many evaluations
without a better validation mAP: its final model and summary are written then, and the rest of the
group goes on without it, so a model ends where it would end alone.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config, Runtime
from ..data.task import TaskData
from ..errors import DivergedError
from ..method.measures import evaluate
from ..method.model import HashModel
from ..method.objective import PARTS, GroupSpec, check_group
from .rundir import DamagedRunError, RunDir, check_state, finished_runs, git_commit, versions
from .compiled import PHASES
from .step import make_step, pick_device


def build_model(configs: Sequence[Config], train_x: torch.Tensor) -> HashModel:
    cfg = configs[0]
    mean = var = None
    if cfg.arch == "reference":
        mean, var = train_x.mean(0), train_x.var(0, unbiased=False)
    return HashModel(train_x.shape[1], cfg.bits, cfg.hidden_layers, cfg.arch, [c.seed for c in configs],
                     mean, var, cfg.hidden_width)


def _check_array(x: np.ndarray, what: str) -> None:
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array (n, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: {int((~np.isfinite(x)).any(1).sum())} rows contain NaN or infinite values")


def _check_data(data: TaskData, cfg: Config) -> None:
    _check_array(data.train_x, "training data")
    _check_array(data.eval_x, "evaluation data")
    if data.train_x.shape[1] != data.eval_x.shape[1]:
        raise ValueError(f"training data has {data.train_x.shape[1]} dimensions, evaluation data "
                         f"{data.eval_x.shape[1]}")
    if len(data.train_x) < cfg.batch_size:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the training set ({len(data.train_x)})")


def _plain(value):
    """Python numbers for the log (a checkpoint holds plain data only)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


@dataclass
class _Member:
    """One model of the group: its run folder, log, best validation evaluation and whether it stopped."""
    cfg: Config
    run: RunDir
    rows: list = field(default_factory=list)
    units: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"best_val_map": -math.inf, "best_iteration": -1,
                                                "best_epoch": float("nan"), "evals_since_best": 0})
    stopped: bool = False


def _member_optimizer_state(opt_state: dict, g: int) -> dict:
    state = {i: {k: (v[g].clone() if k != "step" else v.clone()) for k, v in s.items()}
             for i, s in opt_state["state"].items()}
    return {"state": state, "param_groups": opt_state["param_groups"]}


def _stack_optimizer_states(states: Sequence[dict]) -> dict:
    first = states[0]
    stacked = {i: {k: (torch.stack([s["state"][i][k] for s in states]) if k != "step" else v)
                   for k, v in entry.items()} for i, entry in first["state"].items()}
    return {"state": stacked, "param_groups": first["param_groups"]}


def _common_checkpoints(runs: Sequence[RunDir], device) -> list[dict] | None:
    """Each member's latest checkpoint at an iteration that all members have (a kill between the
    members' writes leaves some one evaluation ahead: their previous checkpoint is used)."""
    found = [r.checkpoints(device) for r in runs]
    if not any(found):
        return None
    common = set.intersection(*(set(f) for f in found))
    if not common:
        raise ValueError("the checkpoints of these runs are at different iterations "
                         f"({[sorted(f) for f in found]}); resume each run on its own")
    return [f[max(common)] for f in found]


def _check_checkpoint(ckpt: dict, cfg: Config, model: HashModel, data: TaskData) -> None:
    """Refuse a checkpoint of another run (another configuration, other shapes) and a resume on
    other data than the run started with (another folder, or a file changed since)."""
    path = ckpt["path"]
    if ckpt.get("identity", cfg.identity()) != cfg.identity():
        raise DamagedRunError(f"{path} does not belong to this run (it was written by a run of another "
                              "configuration); put back this run's own checkpoint, or train it anew in another --out")
    try:
        check_state(model, ckpt["model"], path)
    except DamagedRunError as err:
        raise DamagedRunError(f"{err}; put back this run's own checkpoint, or train it anew in another --out") from None
    saved, now = ckpt.get("data_checksums"), data.checksums
    if saved is not None and saved != now:
        diff = "; ".join(f"{k}: saved {saved.get(k)} vs now {now.get(k)}" for k in sorted(set(saved) | set(now))
                         if saved.get(k) != now.get(k))
        raise ValueError(f"{path.parent}: the training data differ from those the run started on ({diff}); resume "
                         "with the same data, or train anew in another --out")


def _prepare(configs: Sequence[Config], runs: Sequence[RunDir], resume: bool, stack: contextlib.ExitStack) -> None:
    """Check every run folder before creating any (a bad second folder leaves no first one behind),
    then create them, holding their locks (a second training into the same folder is refused)."""
    for c, r in zip(configs, runs):
        r.check(c, resume)
    for c, r in zip(configs, runs):
        r.path.mkdir(parents=True, exist_ok=True)
        stack.enter_context(r.lock())
        r.check(c, resume, holding_lock=True)  # again: another process may have written it meanwhile
        r.create(c)


def train_group(configs: Sequence[Config], data: TaskData, outs: Sequence[str | Path],
                runtime: Runtime = Runtime(progress=False),
                resume: bool = False, hooks: tuple[Callable[[int, dict], None], ...] = (),
                extra_eval: Callable[[HashModel], list[dict]] | None = None) -> list[dict]:
    """Train a group of models in lock-step, model g into run folder ``outs[g]``; returns the summaries.

    ``hooks`` are called as ``hook(g, row)`` with each model's metrics row after it is saved (an
    exception stops the training, e.g. a pruned study trial; the run can be resumed);
    ``extra_eval(model)`` adds per-model scalars (e.g. the validation mAP) to each row.
    """
    configs = [c.validate() for c in configs]
    runtime = runtime.validate()
    check_group(configs)
    runs = [RunDir(o) for o in outs]
    if len(runs) != len(configs) or len({r.path for r in runs}) != len(runs):
        raise ValueError("give one distinct run directory per model")
    _check_data(data, configs[0])
    if resume and (done := finished_runs(configs, outs)) is not None:
        return done
    with contextlib.ExitStack() as stack:
        _prepare(configs, runs, resume, stack)
        pending = [g for g, r in enumerate(runs) if not r.is_finished()]
        if pending:
            _Training([configs[g] for g in pending], data, [runs[g] for g in pending], runtime,
                      tuple((lambda i, row, h=h: h(pending[i], row)) for h in hooks), extra_eval).run(resume)
        return [r.read_summary() for r in runs]


class _Training:
    """The state of one group's training: model, optimiser, adversary, random streams, logs."""

    DRAW_AHEAD = 8  # steps whose batches and noise are drawn at once (_draw_ahead; measured best of 1-64)

    def __init__(self, configs, data: TaskData, runs, runtime: Runtime, hooks, extra_eval):
        self.cfg, self.hooks, self.extra_eval, self.runtime = configs[0], hooks, extra_eval, runtime
        self.members = [_Member(c, r) for c, r in zip(configs, runs)]
        self.data, self.commit = data, git_commit()  # the code that trains (a checkout may move on)
        torch.set_num_threads(runtime.threads)
        self.device = device = pick_device(runtime.device)
        self.train_x = torch.as_tensor(data.train_x, dtype=torch.float32).to(device).contiguous()
        self.eval_x = torch.as_tensor(data.eval_x, dtype=torch.float32).to(device).contiguous()
        cfg, G = self.cfg, len(configs)
        self.per_epoch = len(self.train_x) // cfg.batch_size
        self.total = cfg.iterations if cfg.iterations > 0 else cfg.epochs * self.per_epoch
        self.eval_every = cfg.eval_every or self.per_epoch * cfg.eval_epochs
        self.spec = GroupSpec.from_configs(configs, device)
        self.model = build_model(configs, self.train_x).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.model_lr, fused=True)
        self.lam = torch.zeros(G, cfg.bits, device=device)
        self.data_gen = torch.Generator(device=device).manual_seed(cfg.data_seed)
        self.noise_gens = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]
        self.shared = {"iteration": 0, "perm": None, "elapsed": 0.0}

    def restore(self) -> None:
        ckpts = _common_checkpoints([m.run for m in self.members], self.device)
        if not ckpts:
            return
        for m, c in zip(self.members, ckpts):
            _check_checkpoint(c, m.cfg, self.model, self.data)
        self.model.load_members([c["model"] for c in ckpts])
        self.opt.load_state_dict(_stack_optimizer_states([c["optimizer"] for c in ckpts]))
        self.lam.copy_(torch.stack([c["lambda"] for c in ckpts]))
        self.data_gen.set_state(ckpts[0]["data_generator"])
        for gen, c in zip(self.noise_gens, ckpts):
            gen.set_state(c["noise_generator"])
        self.shared = dict(ckpts[0]["state"])
        for m, c in zip(self.members, ckpts):
            m.rows, m.units, m.best = c["log"]["rows"], c["log"]["units"], dict(c["log"]["best"])

    def save_checkpoints(self) -> None:
        opt_state = self.opt.state_dict()
        for g, m in enumerate(self.members):
            if not m.stopped:
                m.run.save_checkpoint({
                    "model": self.model.member_state(g), "optimizer": _member_optimizer_state(opt_state, g),
                    "lambda": self.lam[g].clone(), "data_generator": self.data_gen.get_state(),
                    "noise_generator": self.noise_gens[g].get_state(), "state": dict(self.shared),
                    "log": {"rows": m.rows, "units": m.units, "best": m.best}, "identity": m.cfg.identity(),
                    "data_checksums": dict(self.data.checksums)})

    def record(self, sums: torch.Tensor | None, count: int) -> None:
        """Evaluate every running model, log, keep the best, checkpoint, stop the patient ones, run hooks."""
        with PHASES.timed("eval_measures"):
            results = evaluate(self.model, self.eval_x, [c.prior for c in self.spec.configs])
        with PHASES.timed("eval_map"):
            extra = self.extra_eval(self.model) if self.extra_eval else [{} for _ in self.members]
        with PHASES.timed("eval_files"):
            done = self._log(results, extra, sums, count)
        with PHASES.timed("hooks"):
            for hook in self.hooks:
                for g, row in done:
                    hook(g, row)

    def _log(self, results, extra, sums: torch.Tensor | None, count: int) -> list[tuple[int, dict]]:
        """The rows of this evaluation logged, the best kept, checkpoints written, the patient models
        finished; returns (model, row) of each model that was running."""
        it = self.shared["iteration"]
        means = (sums / count).tolist() if count else [[float("nan")] * len(PARTS)] * len(self.members)
        if count:
            self._check_finite(means, it)
        done = []
        for g, m in enumerate(self.members):
            if m.stopped:
                continue
            scalars, per_bit = results[g]
            row = {"epoch": it / self.per_epoch, "iteration": it, **{f"train_{k}": v for k, v in zip(PARTS, means[g])},
                   **scalars, **extra[g], "lambda_mean": float(self.lam[g].mean()),
                   "lambda_max": float(self.lam[g].max()), "elapsed_s": self.shared["elapsed"]}
            row = {k: _plain(v) for k, v in row.items()}
            m.rows.append(row)
            m.units.append({"iteration": [it] * self.cfg.bits, "epoch": [it / self.per_epoch] * self.cfg.bits,
                            "bit": list(range(self.cfg.bits)), **{k: [float(x) for x in v] for k, v in per_bit.items()}})
            m.run.write_log(m.rows, m.units)
            self._track_best(g, m, row)
            done.append((g, row))
        self.save_checkpoints()
        for g, m in enumerate(self.members):
            if not m.stopped and m.cfg.patience and m.best["evals_since_best"] >= m.cfg.patience:
                self.finish(g)
        return done

    def _check_finite(self, means: list, it: int) -> None:
        """Stop when a running model's training losses became NaN or infinite, before anything of this
        evaluation is written: its folder keeps the last good checkpoint, and the run fails clearly."""
        for m, values in zip(self.members, means):
            bad = [(k, v) for k, v in zip(PARTS, values) if not math.isfinite(v)]
            if bad and not m.stopped:
                raise DivergedError(f"{m.run.path}: the training diverged: its train_{bad[0][0]} became {bad[0][1]} "
                                    f"by epoch {it / self.per_epoch:.4g} (iteration {it}); lower lr (now "
                                    f"{m.cfg.model_lr:g}) and train anew in another --out")

    def _track_best(self, g: int, m: _Member, row: dict) -> None:
        if "val_map" not in row:
            return
        if row["val_map"] > m.best["best_val_map"]:
            m.best.update(best_val_map=row["val_map"], best_iteration=row["iteration"], best_epoch=row["epoch"],
                          evals_since_best=0)
            m.run.save_model(m.cfg, self.model.member_state(g), self.train_x.shape[1], name="best.pt",
                             epoch=row["epoch"], iteration=row["iteration"], val_map=row["val_map"])
        else:
            m.best["evals_since_best"] += 1

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.ahead:
            self.ahead = self._draw_ahead()
        return self.ahead.pop()

    def _draw_ahead(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The next steps' batches and noise, drawn together (one call per stream, not one per step
        and model: a third less time for it at E2's shape): the values and the generators' states at
        every evaluation are those of drawing step by step, as the lone path does, since no draw
        crosses an evaluation or an epoch and the CPU generators fill a tensor in order. On CUDA the
        noise is drawn step by step (its generator's offsets depend on the tensor's size). Returned
        last step first."""
        cfg, device, it, B = self.cfg, self.device, self.shared["iteration"], self.cfg.batch_size
        n = min(self.draw_ahead, self.eval_every - it % self.eval_every, self.total - it)
        if cfg.sampling == "replacement":
            n = 1
            x = self.train_x.index_select(0, torch.randint(len(self.train_x), (B,), generator=self.data_gen,
                                                            device=device))
        else:
            pos = it % self.per_epoch
            n = min(n, self.per_epoch - pos)
            if pos == 0 or self.shared["perm"] is None:
                self.shared["perm"] = torch.randperm(len(self.train_x), generator=self.data_gen, device=device)
            x = self.train_x.index_select(0, self.shared["perm"][pos * B:(pos + n) * B])  # 3x faster than [idx]
        if cfg.train_noise == "half":
            xi = [self.half] * n
        elif device.type == "cpu":
            xi = torch.stack([torch.rand((n, B, cfg.bits), generator=g_, device=device) for g_ in self.noise_gens], 1)
        else:
            xi = [torch.stack([torch.rand((B, cfg.bits), generator=g_, device=device) for g_ in self.noise_gens])
                  for _ in range(n)]
        return [(x[i * B:(i + 1) * B], xi[i]) for i in reversed(range(n))]

    def run(self, resume: bool) -> None:
        if PHASES.training_started is None:
            PHASES.training_started = time.perf_counter()
        if resume:
            with PHASES.timed("restore"):
                self.restore()
        if self.shared["iteration"] == 0 and not self.members[0].rows:
            self.record(None, 0)
        G = len(self.members)
        bar = tqdm(total=self.total, initial=self.shared["iteration"], disable=not self.runtime.progress, unit="step",
                   desc=self.members[0].run.path.name if G == 1 else f"{G} models")
        sums = torch.zeros(G, len(PARTS), device=self.device)
        count, t0 = 0, time.perf_counter()
        self.half = torch.full((G, self.cfg.batch_size, self.cfg.bits), 0.5, device=self.device)
        # steps drawn at once: up to DRAW_AHEAD, and 1 MiB of batches or noise (larger draws leave the cache)
        self.ahead, self.draw_ahead = [], max(1, min(self.DRAW_AHEAD, (1 << 18) // (self.cfg.batch_size * max(
            self.train_x.shape[1], G * self.cfg.bits))))
        step = make_step(self.model, self.opt, self.spec, self.lam, self.runtime.compile_step)
        flush = self.runtime.flushes_subnormals(self.device)
        try:
            while self.shared["iteration"] < self.total and not all(m.stopped for m in self.members):
                torch.set_flush_denormal(flush)  # the steps only: 0.06 microseconds a call
                sums += step(*self.next_batch())
                count += 1
                self.shared["iteration"] += 1
                bar.update(1)
                if self.shared["iteration"] % self.eval_every == 0 or self.shared["iteration"] == self.total:
                    torch.set_flush_denormal(False)
                    self.shared["elapsed"] += time.perf_counter() - t0
                    PHASES.add("steps", time.perf_counter() - t0)  # with the compiled step's first calls
                    self.record(sums, count)
                    sums.zero_()
                    count, t0 = 0, time.perf_counter()
        finally:
            torch.set_flush_denormal(False)
        bar.close()
        running = [g for g, m in enumerate(self.members) if not m.stopped]
        if running:
            with PHASES.timed("finish"):
                train_evals = self.train_evaluation()  # once for the group, not once per model
                for g in running:
                    self.finish(g, train_evals[g][0])

    def train_evaluation(self) -> list[tuple[dict, dict]]:
        return evaluate(self.model, self.train_x, [c.prior for c in self.spec.configs])

    def finish(self, g: int, train_eval: dict | None = None) -> None:
        """Write model g's final model and summary (``train_eval``: its measures on the training set, if
        already taken); it takes no further part in the group's log."""
        m, cfg = self.members[g], self.members[g].cfg
        train_eval = train_eval or self.train_evaluation()[g][0]
        m.run.save_model(cfg, self.model.member_state(g), self.train_x.shape[1])
        steps, elapsed = self.shared["iteration"], self.shared["elapsed"]
        best = {k: v for k, v in m.best.items() if k != "evals_since_best"} if m.best["best_iteration"] >= 0 else {}
        m.run.write_summary({
            "config": cfg.to_dict(), "final": m.rows[-1], "best": best,
            "stopped_early": steps < self.total, "train_recon_half_sse": train_eval["recon_half_sse"],
            "train_recon_mse": train_eval["recon_mse"], "iterations": steps, "epochs": steps / self.per_epoch,
            "group_size": len(self.members), "group_runs": [x.run.path.name for x in self.members],
            "wall_time_s": elapsed, "seconds_per_epoch": elapsed / (steps / self.per_epoch) if steps else None,
            "steps_per_second": steps / elapsed if elapsed else None, "device": str(self.device),
            "threads": self.runtime.threads, "runtime": self.runtime.to_dict(), "data_source": self.data.source,
            "data_checksums": self.data.checksums, "versions": versions(), "git_commit": self.commit,
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        m.run.drop_checkpoints()
        m.stopped = True


def train(cfg: Config, data: TaskData, out: str | Path, runtime: Runtime = Runtime(progress=False),
          resume: bool = False, hooks: tuple[Callable[[dict], None], ...] = (),
          extra_eval: Callable[[HashModel], list[dict]] | None = None) -> dict:
    """Train one model (a group of one) on the arrays of ``data`` into the run folder ``out``; returns
    its summary. ``hooks`` are called with each metrics row."""
    return train_group([cfg], data, [out], runtime, resume, tuple((lambda g, row, h=h: h(row)) for h in hooks),
                       extra_eval)[0]
