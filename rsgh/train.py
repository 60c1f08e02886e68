"""Training: a group of models in lock-step, seeded and deterministic, with evaluation points,
atomic checkpoints and resume.

A group is one model or several that share the architecture, data and batch stream but may
differ in method, seed and the R-SGH readings (see ``objective.PER_MODEL``). They are trained as
one batched computation. Each model gets exactly the run directory a lone run would produce:
``config.json`` (the resolved configuration), ``metrics.csv`` (one row per evaluation),
``units.csv`` (per-bit activity, KL and balance at each evaluation), ``checkpoint.pt``
(everything needed to continue) and, at the end, ``model.pt`` and ``summary.json``.

Randomness: ``data_seed`` drives the batch order (shared by the group), each model's ``seed``
its initialisation and its noise xi. Files are replaced atomically, so a run killed at any
moment leaves the previous complete version of each.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import __version__
from .config import Config
from .files import atomic_text, atomic_write
from .measures import evaluate
from .model import HashModel
from .objective import PARTS, GroupSpec, adversary_step, check_group, compute_loss


class RunExistsError(RuntimeError):
    pass


@dataclass
class TrainData:
    """Training and evaluation inputs as float32 (n, D) arrays, with provenance."""
    train_x: np.ndarray
    eval_x: np.ndarray
    source: str = ""
    checksums: dict = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        # "-dirty" when the package itself differs from the commit (not the book a run is writing)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def versions() -> dict:
    return {"rsgh": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "platform": platform.platform()}


def build_model(configs: Sequence[Config], train_x: torch.Tensor) -> HashModel:
    cfg = configs[0]
    mean = var = None
    if cfg.arch == "reference":
        mean, var = train_x.mean(0), train_x.var(0, unbiased=False)
    return HashModel(train_x.shape[1], cfg.bits, cfg.hidden_layers, cfg.arch, [c.seed for c in configs],
                     mean, var)


def _check_array(x: np.ndarray, what: str) -> None:
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array (n, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: {int((~np.isfinite(x)).any(1).sum())} rows contain NaN or infinite values")


def _config_diff(out: Path, cfg: Config) -> dict:
    """{field: (saved, now)} where ``cfg`` differs from ``out/config.json``."""
    saved = json.loads((out / "config.json").read_text())
    return {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if saved.get(k) != v}


def _prepare_dir(out: Path, cfg: Config, resume: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise RunExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if not (out / "config.json").exists():
            raise RunExistsError(f"{out} is not empty but holds no config.json; choose another --out")
        diff = _config_diff(out, cfg)
        if diff:
            raise ValueError(f"--resume with a different configuration than {out}/config.json: "
                             + ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items()))
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / "config.json", cfg.to_json())


def finished_runs(configs: Sequence[Config], outs: Sequence[str | Path], also: Sequence[str] = ()) -> list[dict] | None:
    """The summaries when every run directory holds a finished run of exactly its configuration
    (and the files ``also``); None when some run is missing or unfinished. A finished run of
    another configuration is an error: it is never overwritten."""
    outs = [Path(o) for o in outs]
    if not all((o / "summary.json").exists() and all((o / f).exists() for f in also) for o in outs):
        return None
    for c, o in zip(configs, outs):
        diff = _config_diff(o, c)
        if diff:
            raise ValueError(f"{o} holds a finished run of a different configuration ({', '.join(diff)} differ); "
                             "choose another runs folder or remove it yourself")
    return [json.loads((o / "summary.json").read_text()) for o in outs]


CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"


def _load_checkpoints(outs: Sequence[Path], device) -> list[dict] | None:
    """Each member's latest checkpoint at an iteration that all members have (a kill between the
    members' writes leaves some one evaluation ahead: their previous checkpoint is used)."""
    found = []
    for out in outs:
        found.append({})
        for name in (CHECKPOINT, PREVIOUS):
            if (out / name).exists():
                ckpt = torch.load(out / name, map_location=device, weights_only=False)
                found[-1][ckpt["state"]["iteration"]] = ckpt
    if not any(found):
        return None
    common = set.intersection(*(set(f) for f in found))
    if not common:
        raise ValueError("the checkpoints of these runs are at different iterations "
                         f"({[sorted(f) for f in found]}); resume each run on its own")
    it = max(common)
    return [f[it] for f in found]


def _save_checkpoint(out: Path, payload: dict) -> None:
    if (out / CHECKPOINT).exists():
        os.replace(out / CHECKPOINT, out / PREVIOUS)
    atomic_write(out / CHECKPOINT, lambda p: torch.save(payload, p))


def _member_optimizer_state(opt_state: dict, g: int) -> dict:
    state = {i: {k: (v[g].clone() if k != "step" else v.clone()) for k, v in s.items()}
             for i, s in opt_state["state"].items()}
    return {"state": state, "param_groups": opt_state["param_groups"]}


def _stack_optimizer_states(states: Sequence[dict]) -> dict:
    first = states[0]
    stacked = {i: {k: (torch.stack([s["state"][i][k] for s in states]) if k != "step" else v)
                   for k, v in entry.items()} for i, entry in first["state"].items()}
    return {"state": stacked, "param_groups": first["param_groups"]}


def train_group(configs: Sequence[Config], data: TrainData, outs: Sequence[str | Path], resume: bool = False,
                hooks: tuple[Callable[[int, dict], None], ...] = (), progress: bool = True,
                extra_eval: Callable[[HashModel], list[dict]] | None = None) -> list[dict]:
    """Train a group of models in lock-step, model g into run directory ``outs[g]``.

    ``hooks`` are called as ``hook(g, row)`` with each model's metrics row after it is saved;
    ``extra_eval(model)`` may add per-model scalars (e.g. retrieval mAP) to each row.
    Returns the summaries.
    """
    configs = [c.validate() for c in configs]
    check_group(configs)
    outs = [Path(o) for o in outs]
    if len(outs) != len(configs) or len(set(outs)) != len(outs):
        raise ValueError("give one distinct run directory per model")
    cfg = configs[0]
    _check_array(data.train_x, "training data")
    _check_array(data.eval_x, "evaluation data")
    if data.train_x.shape[1] != data.eval_x.shape[1]:
        raise ValueError(f"training data has {data.train_x.shape[1]} dimensions, evaluation data "
                         f"{data.eval_x.shape[1]}")
    if len(data.train_x) < cfg.batch_size:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the training set ({len(data.train_x)})")
    if resume and (done := finished_runs(configs, outs)) is not None:
        return done
    for c, out in zip(configs, outs):
        _prepare_dir(out, c, resume)

    commit = git_commit()  # the code that trains (a checkout may move on while it runs)
    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    train_x = torch.as_tensor(data.train_x, dtype=torch.float32).to(device).contiguous()
    eval_x = torch.as_tensor(data.eval_x, dtype=torch.float32).to(device).contiguous()
    n, G = len(train_x), len(configs)
    per_epoch = n // cfg.batch_size
    total = cfg.iterations if cfg.iterations > 0 else cfg.epochs * per_epoch
    eval_every = cfg.eval_every or per_epoch * cfg.eval_epochs

    spec = GroupSpec.from_configs(configs, device)
    model = build_model(configs, train_x).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.model_lr, fused=True)
    lam = torch.zeros(G, cfg.bits, device=device)
    data_gen = torch.Generator(device=device).manual_seed(cfg.data_seed)
    noise_gens = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]
    shared = {"iteration": 0, "perm": None, "elapsed": 0.0}
    logs = [{"rows": [], "units": []} for _ in configs]

    ckpts = _load_checkpoints(outs, device) if resume else None
    if ckpts:
        model.load_members([c["model"] for c in ckpts])
        opt.load_state_dict(_stack_optimizer_states([c["optimizer"] for c in ckpts]))
        lam.copy_(torch.stack([c["lambda"] for c in ckpts]))
        data_gen.set_state(ckpts[0]["data_generator"])
        for gen, c in zip(noise_gens, ckpts):
            gen.set_state(c["noise_generator"])
        shared = dict(ckpts[0]["state"])
        logs = [c["log"] for c in ckpts]

    def save_checkpoints():
        opt_state = opt.state_dict()
        for g, out in enumerate(outs):
            _save_checkpoint(out, {"model": model.member_state(g), "optimizer": _member_optimizer_state(opt_state, g),
                                   "lambda": lam[g].clone(), "data_generator": data_gen.get_state(),
                                   "noise_generator": noise_gens[g].get_state(), "state": dict(shared),
                                   "log": logs[g]})

    def record(sums: torch.Tensor | None, count: int) -> list[dict]:
        results = evaluate(model, eval_x, [c.prior for c in configs])
        extra = extra_eval(model) if extra_eval else [{} for _ in configs]
        it = shared["iteration"]
        means = (sums / count).tolist() if count else [[float("nan")] * len(PARTS)] * G
        rows = []
        for g, out in enumerate(outs):
            scalars, per_bit = results[g]
            row = {"epoch": it / per_epoch, "iteration": it}
            row.update({f"train_{k}": v for k, v in zip(PARTS, means[g])})
            row.update(scalars)
            row.update(extra[g])
            row.update({"lambda_mean": float(lam[g].mean()), "lambda_max": float(lam[g].max()),
                        "elapsed_s": shared["elapsed"]})
            logs[g]["rows"].append(row)
            logs[g]["units"].append(pd.DataFrame({"iteration": it, "epoch": it / per_epoch,
                                                  "bit": np.arange(cfg.bits), **per_bit}))
            atomic_text(out / "metrics.csv", pd.DataFrame(logs[g]["rows"]).to_csv(index=False))
            atomic_text(out / "units.csv", pd.concat(logs[g]["units"]).to_csv(index=False))
            rows.append(row)
        save_checkpoints()
        return rows

    def run_hooks(rows):
        for hook in hooks:
            for g, row in enumerate(rows):
                hook(g, row)

    if shared["iteration"] == 0 and not logs[0]["rows"]:
        run_hooks(record(None, 0))

    bar = tqdm(total=total, initial=shared["iteration"], disable=not progress, unit="step",
               desc=outs[0].name if G == 1 else f"{G} models")
    sums = torch.zeros(G, len(PARTS), device=device)
    count, t0 = 0, time.perf_counter()
    half = torch.full((G, cfg.batch_size, cfg.bits), 0.5, device=device)

    step = make_step(model, opt, spec, lam, cfg.compile_step)

    while shared["iteration"] < total:
        it = shared["iteration"]
        if cfg.sampling == "replacement":
            idx = torch.randint(n, (cfg.batch_size,), generator=data_gen, device=device)
        else:
            pos = it % per_epoch
            if pos == 0 or shared["perm"] is None:
                shared["perm"] = torch.randperm(n, generator=data_gen, device=device)
            idx = shared["perm"][pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        x = train_x.index_select(0, idx)  # 3x faster than train_x[idx] for a batch
        if cfg.train_noise == "uniform":
            xi = torch.stack([torch.rand((cfg.batch_size, cfg.bits), generator=g_, device=device)
                              for g_ in noise_gens])
        else:
            xi = half
        sums += step(x, xi)
        count += 1
        shared["iteration"] = it + 1
        bar.update(1)
        if shared["iteration"] % eval_every == 0 or shared["iteration"] == total:
            shared["elapsed"] += time.perf_counter() - t0
            rows = record(sums, count)
            bar.set_postfix(mse=f"{rows[0]['recon_mse']:.4f}", active=rows[0]["active_units_001"])
            run_hooks(rows)
            sums.zero_()
            count, t0 = 0, time.perf_counter()
    bar.close()

    train_eval = evaluate(model, train_x, [c.prior for c in configs])
    summaries = []
    for g, (c, out) in enumerate(zip(configs, outs)):
        atomic_write(out / "model.pt", lambda p: torch.save(
            {"config": c.to_dict(), "state_dict": model.member_state(g), "input_dim": train_x.shape[1]}, p))
        steps = shared["iteration"]
        summary = {
            "config": c.to_dict(), "final": logs[g]["rows"][-1],
            "train_recon_half_sse": train_eval[g][0]["recon_half_sse"],
            "train_recon_mse": train_eval[g][0]["recon_mse"],
            "iterations": steps, "epochs": steps / per_epoch, "group_size": G,
            "group_runs": [Path(o).name for o in outs],  # the runs trained in lock-step with this one
            "wall_time_s": shared["elapsed"],
            "seconds_per_epoch": shared["elapsed"] / (steps / per_epoch) if steps else None,
            "steps_per_second": steps / shared["elapsed"] if shared["elapsed"] else None,
            "device": str(device), "threads": c.threads, "data_source": data.source,
            "data_checksums": data.checksums, "versions": versions(), "git_commit": commit,
        }
        atomic_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
        (out / PREVIOUS).unlink(missing_ok=True)
        summaries.append(summary)
    return summaries


class _LossOf(torch.nn.Module):
    """The group's loss as a module, so that ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, model: HashModel, spec: GroupSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x, xi, lam):
        loss = compute_loss(self.model, x, xi, self.spec, lam)
        return loss.total, (loss.parts, loss.redundancy)


def make_step(model: HashModel, opt: torch.optim.Adam, spec: GroupSpec, lam: torch.Tensor,
              compiled: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training step ``step(x, xi) -> parts``: one update of every model of the group and of
    its adversary; ``parts`` are the batch's loss terms (G, len(PARTS)), detached.

    ``compiled``: on a CPU the whole step as one graph (:func:`_compiled_cpu_step`); on CUDA the
    forward and backward pass compiled with ``mode="reduce-overhead"`` (CUDA graphs) beside the
    fused Adam."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    if compiled and not on_cuda:
        return _compiled_cpu_step(model, opt, spec, lam)

    def forward_backward(x, xi):
        loss = compute_loss(model, x, xi, spec, lam)
        loss.total.backward()
        return loss.parts, loss.redundancy

    if compiled:
        forward_backward = torch.compile(forward_backward, mode="reduce-overhead")

    def step(x, xi):
        opt.zero_grad(set_to_none=True)
        parts, redundancy = forward_backward(x, xi)
        opt.step()
        adversary_step(lam, redundancy, spec)
        return parts

    return step


def _compiled_cpu_step(model: HashModel, opt: torch.optim.Adam, spec: GroupSpec, lam: torch.Tensor):
    """The whole training step (forward, gradient, Adam, adversary) as one ``torch.compile`` graph.

    On a CPU most of a step of these small networks is per-operation overhead; one graph with
    the gradient taken by ``torch.func.grad`` and Adam's update written out lets inductor fuse
    the elementwise work into a few C++ loops (measured: 2.1-2.7x the steps/s of the uncompiled
    group, against 1.5x for compiling the forward and backward pass alone and calling the fused
    Adam). The update is ``torch.optim.Adam``'s, on its own state tensors, so checkpoints and
    resume are unchanged.
    """
    group = opt.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"] or len(opt.param_groups) > 1:
        raise ValueError("the compiled step implements plain Adam only")
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    loss_of = _LossOf(model, spec)
    names = [f"model.params.{n}" for n in model.params]
    params = list(model.params.values())
    count = float(opt.state[params[0]]["step"]) if opt.state[params[0]] else 0.0
    # One step counter shared by every parameter's state (torch.optim.Adam keeps equal copies):
    # updating 20 tiny tensors each step costs more than a layer's GEMM.
    step_count = torch.tensor(count, dtype=torch.float32, device=params[0].device)
    for p in params:  # Adam's state, as torch.optim.Adam creates it (or as resumed)
        if not opt.state[p]:
            opt.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        opt.state[p]["step"] = step_count
    states = [opt.state[p] for p in params]
    weights = [p.detach() for p in params]  # share storage: updated in place
    exp_avg, exp_avg_sq = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
    # the step's scalars, filled on the host each step (inside the graph inductor would
    # recompute them for every element)
    step_size, bias_correction2_sqrt = torch.zeros(()), torch.zeros(())
    adv_rate = (spec.rsgh * spec.adversary_lr)[:, :, 0]

    def loss_fn(ws, x, xi):
        total, (parts, redundancy) = torch.func.functional_call(loss_of, dict(zip(names, ws)), (x, xi, lam))
        # torch.func.grad's auxiliary outputs must be tensors: a group without R-SGH has no redundancy
        return total, (parts, () if redundancy is None else (redundancy,))

    def whole_step(ws, ms, vs, x, xi, step_size, bias_correction2_sqrt):
        grads, (parts, redundancy) = torch.func.grad(loss_fn, has_aux=True)(ws, x, xi)
        for w, g, m, v in zip(ws, grads, ms, vs):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            w.sub_(step_size * m / (v.sqrt() / bias_correction2_sqrt + eps))
        for r in redundancy:  # none or one
            lam.add_(adv_rate * r).clamp_(min=0.0)
        return parts

    compiled = torch.compile(whole_step, fullgraph=True, options={"cpp_wrapper": True})

    calls = 0

    def cpu_step(x, xi):
        nonlocal count, calls
        count += 1
        calls += 1
        step_count.fill_(count)
        step_size.fill_(lr / (1 - beta1 ** count))
        bias_correction2_sqrt.fill_(math.sqrt(1 - beta2 ** count))
        args = (weights, exp_avg, exp_avg_sq, x, xi, step_size, bias_correction2_sqrt)
        if calls <= 2:  # compiles (with every guard checked) on the first calls of this group
            try:
                return compiled(*args)
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                # dynamo keeps a few compiled shapes per function (recompile_limit) and then refuses
                # another: many groups of different shapes in one process start its cache afresh
                torch.compiler.reset()
                return compiled(*args)
        # then the guards, which only re-check that the same tensors come in, are skipped (0.3 ms a step)
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return compiled(*args)

    return cpu_step


def train(cfg: Config, data: TrainData, out: str | Path, resume: bool = False,
          hooks: tuple[Callable[[dict], None], ...] = (), progress: bool = True,
          extra_eval: Callable[[HashModel], list[dict]] | None = None) -> dict:
    """Train one model (a group of one) into the run directory ``out``; returns its summary."""
    return train_group([cfg], data, [out], resume, tuple((lambda g, row, h=h: h(row)) for h in hooks),
                       progress, extra_eval)[0]


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[HashModel, Config]:
    """The trained model of a finished run directory (a group of one)."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run directory?")
    saved = torch.load(path, map_location=device, weights_only=False)
    cfg = Config(**saved["config"])
    sd = saved["state_dict"]
    mean = sd["shift"].reshape(-1) if "shift" in sd else None
    var = sd["scale"].reshape(-1) if "scale" in sd else None
    model = HashModel(saved["input_dim"], cfg.bits, cfg.hidden_layers, cfg.arch, [cfg.seed], mean, var)
    model.load_members([sd])
    return model.eval(), cfg
