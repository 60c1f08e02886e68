"""Training: one model, seeded and deterministic, with evaluation points, atomic checkpoints and
resume.

A run directory holds ``config.json`` (the resolved configuration), ``metrics.csv`` (one row per
evaluation), ``units.csv`` (per-bit activity, KL and balance at each evaluation),
``checkpoint.pt`` (everything needed to continue) and, at the end, ``model.pt`` and
``summary.json``. Files are replaced atomically, so a run killed at any moment leaves the
previous complete version of each.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import __version__
from .config import Config
from .measures import evaluate
from .model import HashModel
from .objective import PARTS, adversary_step, compute_loss


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


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def versions() -> dict:
    return {"rsgh": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "platform": platform.platform()}


def build_model(cfg: Config, train_x: torch.Tensor) -> HashModel:
    torch.manual_seed(cfg.seed)
    mean = var = None
    if cfg.arch == "reference":
        mean, var = train_x.mean(0), train_x.var(0, unbiased=False)
    return HashModel(train_x.shape[1], cfg.bits, cfg.hidden_layers, cfg.arch, mean, var)


def _check_array(x: np.ndarray, what: str) -> None:
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array (n, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: {int((~np.isfinite(x)).any(1).sum())} rows contain NaN or infinite values")


def train(cfg: Config, data: TrainData, out: str | Path, resume: bool = False,
          hooks: tuple[Callable[[dict], None], ...] = (), progress: bool = True) -> dict:
    """Train one model into the run directory ``out``; returns the summary.

    ``hooks`` are called with each metrics row after it is saved (a test uses one to interrupt).
    """
    cfg.validate()
    out = Path(out)
    _check_array(data.train_x, "training data")
    _check_array(data.eval_x, "evaluation data")
    if data.train_x.shape[1] != data.eval_x.shape[1]:
        raise ValueError(f"training data has {data.train_x.shape[1]} dimensions, evaluation data "
                         f"{data.eval_x.shape[1]}")
    if len(data.train_x) < cfg.batch_size:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the training set ({len(data.train_x)})")

    ckpt_path = out / "checkpoint.pt"
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise RunExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if not (out / "config.json").exists():
            raise RunExistsError(f"{out} is not empty but holds no config.json; choose another --out")
        saved = json.loads((out / "config.json").read_text())
        diff = {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if saved.get(k) != v}
        if diff:
            raise ValueError(f"--resume with a different configuration than {out}/config.json: "
                             + ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items()))
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / "config.json", cfg.to_json())

    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    train_x = torch.as_tensor(data.train_x, dtype=torch.float32).to(device).contiguous()
    eval_x = torch.as_tensor(data.eval_x, dtype=torch.float32).to(device).contiguous()
    n = len(train_x)
    per_epoch = n // cfg.batch_size
    total = cfg.iterations if cfg.iterations > 0 else cfg.epochs * per_epoch
    eval_every = cfg.eval_every or per_epoch

    model = build_model(cfg, train_x).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.model_lr, fused=True)
    lam = torch.zeros(cfg.bits, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    state = {"iteration": 0, "perm": None, "rows": [], "units": [], "elapsed": 0.0}

    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        lam.copy_(ckpt["lambda"])
        gen.set_state(ckpt["generator"].cpu() if device.type == "cpu" else ckpt["generator"])
        state = ckpt["state"]
        if state["iteration"] >= total and (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())

    def save_checkpoint():
        payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "lambda": lam,
                   "generator": gen.get_state(), "state": state}
        atomic_write(ckpt_path, lambda p: torch.save(payload, p))

    def record(sums: dict, count: int):
        scalars, per_bit = evaluate(model, eval_x, cfg.prior)
        it = state["iteration"]
        row = {"epoch": it / per_epoch, "iteration": it}
        means = (sums / count).tolist() if count else [float("nan")] * len(PARTS)
        row.update({f"train_{k}": v for k, v in zip(PARTS, means)})
        row.update(scalars)
        row.update({"lambda_mean": float(lam.mean()), "lambda_max": float(lam.max()),
                    "elapsed_s": state["elapsed"]})
        state["rows"].append(row)
        state["units"].append(pd.DataFrame({"iteration": it, "epoch": it / per_epoch,
                                            "bit": np.arange(cfg.bits), **per_bit}))
        atomic_text(out / "metrics.csv", pd.DataFrame(state["rows"]).to_csv(index=False))
        atomic_text(out / "units.csv", pd.concat(state["units"]).to_csv(index=False))
        save_checkpoint()
        return row

    if state["iteration"] == 0 and not state["rows"]:
        record(None, 0)
        for hook in hooks:
            hook(state["rows"][-1])

    bar = tqdm(total=total, initial=state["iteration"], disable=not progress, desc=out.name, unit="step")
    sums = torch.zeros(len(PARTS), device=device)
    count, t0 = 0, time.perf_counter()
    model.train()
    while state["iteration"] < total:
        it = state["iteration"]
        if cfg.sampling == "replacement":
            idx = torch.randint(n, (cfg.batch_size,), generator=gen, device=device)
        else:
            pos = it % per_epoch
            if pos == 0 or state["perm"] is None:
                state["perm"] = torch.randperm(n, generator=gen, device=device)
            idx = state["perm"][pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        x = train_x[idx]
        if cfg.train_noise == "uniform":
            xi = torch.rand((cfg.batch_size, cfg.bits), generator=gen, device=device)
        else:
            xi = torch.full((cfg.batch_size, cfg.bits), 0.5, device=device)
        loss = compute_loss(model, x, xi, cfg, lam)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        if cfg.method == "rsgh":
            adversary_step(lam, loss.redundancy, cfg.adversary_lr)
        sums += loss.parts
        count += 1
        state["iteration"] = it + 1
        bar.update(1)
        if state["iteration"] % eval_every == 0 or state["iteration"] == total:
            state["elapsed"] += time.perf_counter() - t0
            row = record(sums, count)
            bar.set_postfix(loss=f"{row['train_loss']:.3g}", mse=f"{row['recon_mse']:.4f}",
                            active=row["active_units_001"])
            for hook in hooks:
                hook(row)
            sums.zero_()
            count, t0 = 0, time.perf_counter()
    bar.close()

    atomic_write(out / "model.pt", lambda p: torch.save(
        {"config": cfg.to_dict(), "state_dict": model.state_dict(), "input_dim": train_x.shape[1]}, p))
    final = state["rows"][-1]
    with torch.no_grad():
        train_scalars, _ = evaluate(model, train_x, cfg.prior)
    evals = [r for r in state["rows"] if r["iteration"] > 0]
    summary = {
        "config": cfg.to_dict(), "final": final,
        "train_recon_half_sse": train_scalars["recon_half_sse"], "train_recon_mse": train_scalars["recon_mse"],
        "iterations": state["iteration"], "epochs": state["iteration"] / per_epoch,
        "wall_time_s": state["elapsed"],
        "seconds_per_epoch": state["elapsed"] / (state["iteration"] / per_epoch),
        "steps_per_second": state["iteration"] / state["elapsed"] if state["elapsed"] else None,
        "evaluations": len(evals), "device": str(device), "threads": cfg.threads,
        "data_source": data.source, "data_checksums": data.checksums,
        "versions": versions(), "git_commit": git_commit(),
    }
    atomic_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[HashModel, Config]:
    """The trained model of a finished run directory."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run directory?")
    saved = torch.load(path, map_location=device, weights_only=False)
    cfg = Config(**saved["config"])
    sd = saved["state_dict"]
    mean = sd.get("shift")
    var = sd.get("scale")
    model = HashModel(saved["input_dim"], cfg.bits, cfg.hidden_layers, cfg.arch, mean, var)
    model.load_state_dict(sd)
    return model.eval(), cfg
