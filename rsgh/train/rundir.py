"""The run folder: the one module that writes and reads its files.

    config.json          the configuration (the run's scientific identity)
    metrics.csv          one row per evaluation (reconstruction, collapse, losses, mAP)
    units.csv            per-bit activity, KL and balance at each evaluation
    checkpoint.pt        everything needed to continue (and checkpoint.prev.pt, the one before)
    best.pt              the model at its best validation mAP (runs with a validation set)
    model.pt             the final model
    summary.json         final values, wall time, versions, git commit, data checksums
    retrieval.json       test-query mAP etc. of the final model (retrieval runs); retrieval_best.json
                         of best.pt; split.json, the split; feature_scaling.npz, the input scaling

Every file is written atomically. Models and checkpoints hold only tensors, numbers, strings and
lists / dicts of them, and are read with ``torch.load(weights_only=True)``: a model file received
from someone else cannot run code, nor cost more memory than its size (``rsgh.train.received``). A folder is locked while a process trains into it. A checkpoint
names its run (the configuration's identity) and the checksums of its training data, so a resume
refuses another run's checkpoint and data that changed; a damaged latest checkpoint falls back to
the previous one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import subprocess
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..config import Config, config_from_dict
from ..data.features import load_scaling, save_scaling
from ..data.split import Split
from ..errors import BusyError
from ..files import atomic_text, atomic_write_file, check_writable, folder_lock, is_locked
from ..method.model import HashModel
from ..paths import check_outside_book
from .received import DamagedRunError, _safe_load, check_shapes, check_torch_zip, model_shapes  # noqa: F401

CHECKPOINT, PREVIOUS, BEST, MODEL = "checkpoint.pt", "checkpoint.prev.pt", "best.pt", "model.pt"
OWN = {"config.json", "metrics.csv", "units.csv", CHECKPOINT, PREVIOUS, BEST, MODEL, "summary.json",
       "retrieval.json", "retrieval_best.json", "split.json", "feature_scaling.npz", ".lock"}
CHECKPOINT_KEYS = ("model", "optimizer", "lambda", "data_generator", "noise_generator", "state", "log")
SUMMARY_KEYS = ("config", "final", "epochs", "wall_time_s", "seconds_per_epoch", "train_recon_half_sse",
                "data_source", "git_commit")
FINAL_KEYS = ("recon_mse", "recon_half_sse", "active_units_001", "active_units_005", "mean_kl", "bit_corr_mean")


class RunExistsError(ValueError):
    pass


def _save(path: Path, payload) -> None:
    """``torch.save`` into memory, then an ordinary atomic write: a full disk is an ``OSError``
    naming the file (torch's own writer says "[enforce fail at inline_container.cc]")."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    atomic_write_file(path, lambda fh: fh.write(data))


def _checkpoint_iteration(ckpt, path: Path) -> int:
    """The iteration of a loaded checkpoint, or a DamagedRunError saying what it lacks."""
    if not isinstance(ckpt, dict):
        raise DamagedRunError(f"{path} is not an rsgh checkpoint (it holds a {type(ckpt).__name__})")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    state, log = ckpt.get("state"), ckpt.get("log")
    if "state" in ckpt and not (isinstance(state, dict) and "iteration" in state):
        missing.append("state.iteration")
    if "log" in ckpt and not (isinstance(log, dict) and {"rows", "units", "best"} <= set(log)):
        missing.append("log.rows/units/best")
    if missing:
        raise DamagedRunError(f"{path} is not an rsgh checkpoint (no {', '.join(missing)} entry)")
    try:
        return int(ckpt["state"]["iteration"])
    except (TypeError, ValueError):
        raise DamagedRunError(f"{path} is not an rsgh checkpoint (its iteration is "
                              f"{ckpt['state']['iteration']!r})") from None


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.damaged: set[str] = set()  # checkpoint files found unreadable (never rotated over a good one)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ state and configuration
    def is_finished(self, also: Sequence[str] = ()) -> bool:
        return all(self.file(f).exists() for f in ("summary.json", MODEL, *also))

    def read_config(self) -> Config:
        return config_from_dict(self._json("config.json"), str(self.file("config.json")))

    def config_diff(self, cfg: Config) -> dict:
        """{field: (saved, now)} where ``cfg`` differs from config.json."""
        saved = self._json("config.json")
        try:
            config_from_dict(saved, str(self.file("config.json")))
        except ValueError as err:
            raise DamagedRunError(f"{err}; it is not a configuration of this rsgh (a damaged run, or not a run "
                                  "folder): choose another --out") from None
        return {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if saved.get(k) != v}

    def check(self, cfg: Config, resume: bool, holding_lock: bool = False) -> None:
        """Raise unless the folder can take a run of ``cfg``: absent or empty, or (``resume``) holding
        a run of exactly ``cfg`` with a readable checkpoint (if any), not in use by another process,
        and writable. Writes nothing."""
        check_outside_book(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"--out {self.path} is a file, not a run folder; choose another --out")
        if not holding_lock and self.path.is_dir() and is_locked(self.path):
            raise BusyError(f"{self.path} is in use by another process (a training); wait for it to finish")
        names = {p.name for p in self.path.iterdir()} - {".lock"} if self.path.is_dir() else set()
        if not names:
            check_writable(self.path)  # a read-only place is said now, before any data is loaded
            return
        if "config.json" not in names:
            foreign = sorted(n for n in names if n not in OWN)
            listed = ", ".join(foreign[:3]) or "no config.json"
            raise RunExistsError(f"{self.path} holds files that are not a run ({listed}); choose another --out")
        diff = self.config_diff(cfg)
        if names == {"config.json"} and not diff:
            check_writable(self.path)
            return  # created, but nothing trained yet: the same run may start
        if not resume:
            raise RunExistsError(f"{self.path} already holds a run; pass --resume to continue it or choose "
                                 "another --out")
        if diff:
            raise ValueError(f"--resume with a different configuration than {self.file('config.json')}: "
                             + ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items()))
        if self.is_finished():  # a finished run is only read (it may lie on a read-only disk)
            self.check_finished(cfg)
        else:
            check_writable(self.path)
            if not holding_lock:
                self.checkpoints(warn=False)  # damaged checkpoints are said now, before any data is loaded

    def check_finished(self, cfg: Config, model: dict | None = None) -> None:
        """Refuse a finished run whose summary (or loaded ``model``) was trained with another
        configuration than ``cfg``: its config.json was edited after the end, and its numbers are
        another model's."""
        for name, saved in (("summary.json", self.read_summary().get("config")),
                            (MODEL, None if model is None else model.get("config"))):
            if saved is None and name == MODEL:
                continue
            try:
                same = config_from_dict(saved, str(self.file(name))).to_dict() == cfg.to_dict()
            except ValueError:
                same = False
            if not same:
                raise DamagedRunError(f"{self.file('config.json')} does not match the configuration the finished run "
                                      f"was trained with ({name}): it was edited after the run ended; restore it, "
                                      "or train the configuration anew in another --out")

    def create(self, cfg: Config) -> None:
        """Write config.json into the (checked, locked) folder unless it holds it already."""
        if not self.file("config.json").exists():
            atomic_text(self.file("config.json"), cfg.to_json())

    def lock(self):
        return folder_lock(self.path, "a training")

    # ------------------------------------------------------------------ the log
    def write_log(self, rows: list[dict], units: list[dict]) -> None:
        atomic_text(self.file("metrics.csv"), pd.DataFrame(rows).to_csv(index=False))
        atomic_text(self.file("units.csv"), pd.concat([pd.DataFrame(u) for u in units]).to_csv(index=False))

    def read_metrics(self) -> pd.DataFrame:
        return self._csv("metrics.csv")

    def read_units(self) -> pd.DataFrame:
        """Per-bit statistics; in the results store they are kept compressed (units.csv.gz)."""
        return self._csv("units.csv" if self.file("units.csv").exists() or not self.file("units.csv.gz").exists()
                         else "units.csv.gz")

    # ------------------------------------------------------------------ checkpoints and models
    def save_checkpoint(self, payload: dict) -> None:
        if self.file(CHECKPOINT).exists() and CHECKPOINT not in self.damaged:
            os.replace(self.file(CHECKPOINT), self.file(PREVIOUS))  # a damaged one never replaces a good one
        _save(self.file(CHECKPOINT), payload)
        self.damaged.discard(CHECKPOINT)

    def checkpoints(self, device="cpu", warn: bool = True) -> dict[int, dict]:
        """{iteration: checkpoint} of the readable checkpoints (a damaged latest one falls back to the
        previous, with a warning; both damaged is an error naming them)."""
        found, errors = {}, []
        for name in (CHECKPOINT, PREVIOUS):
            if self.file(name).exists():
                try:
                    ckpt = _safe_load(self.file(name), device)
                    found[_checkpoint_iteration(ckpt, self.file(name))] = ckpt
                    ckpt["path"] = self.file(name)  # for messages (never saved)
                except DamagedRunError as err:
                    errors.append(str(err))
                    self.damaged.add(name)
        if errors and not found:
            raise DamagedRunError("; ".join(errors) + ": the run cannot continue; train it anew in another --out")
        if errors and warn:
            warnings.warn(f"{errors[0]}; continuing from the other checkpoint (iteration {max(found)})",
                          stacklevel=2)
        return found

    def drop_checkpoints(self) -> None:
        self.file(PREVIOUS).unlink(missing_ok=True)
        self.file(CHECKPOINT).unlink(missing_ok=True)

    def save_model(self, cfg: Config, state: dict, input_dim: int, name: str = MODEL, **extra) -> None:
        _save(self.file(name), {"config": cfg.to_dict(), "state_dict": state, "input_dim": int(input_dim), **extra})

    def load_model(self, device="cpu", name: str = MODEL) -> tuple[HashModel, Config]:
        path = self.file(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {self.path} a finished run directory?")
        saved = _safe_load(path, device)
        if not isinstance(saved, dict) or not {"config", "state_dict", "input_dim"} <= set(saved):
            raise DamagedRunError(f"{path} is not an rsgh model (no config, state_dict and input_dim entries)")
        cfg = config_from_dict(saved["config"], f"{path} (its configuration)")
        try:
            sd, input_dim = saved["state_dict"], int(saved["input_dim"])
        except (TypeError, ValueError):
            raise DamagedRunError(f"{path} is not an rsgh model (its input_dim is not an integer)") from None
        check_shapes(cfg, input_dim, sd, path)  # before the model is built: its size is the file's, not the config's
        mean = sd["shift"].reshape(-1) if "shift" in sd else None
        var = sd["scale"].reshape(-1) if "scale" in sd else None
        model = HashModel(input_dim, cfg.bits, cfg.hidden_layers, cfg.arch, [cfg.seed], mean, var, cfg.hidden_width)
        check_state(model, sd, path)
        model.load_members([sd])
        return model.eval(), cfg

    # ------------------------------------------------------------------ results
    def write_summary(self, summary: dict) -> None:
        atomic_text(self.file("summary.json"), json.dumps(summary, indent=2, default=float))

    def read_summary(self) -> dict:
        summary = self._json("summary.json")
        missing = [k for k in SUMMARY_KEYS if not isinstance(summary, dict) or k not in summary]
        if not missing:
            final = summary["final"]
            missing = [f"final.{k}" for k in FINAL_KEYS if not isinstance(final, dict) or k not in final]
        if missing:
            raise DamagedRunError(f"{self.file('summary.json')} is not an rsgh run summary (no "
                                  f"{', '.join(map(repr, missing[:3]))}); train the run again in another folder")
        return summary

    def write_retrieval(self, report: dict, best: bool = False) -> None:
        name = "retrieval_best.json" if best else "retrieval.json"
        atomic_text(self.file(name), json.dumps(report, indent=2))

    def read_retrieval(self, best: bool = False) -> dict | None:
        name = "retrieval_best.json" if best else "retrieval.json"
        return self._json(name) if self.file(name).exists() else None

    def save_split(self, split: Split) -> None:
        split.save(self.file("split.json"))

    def read_split(self) -> Split:
        return Split.load(self.file("split.json"))

    def save_scaling(self, scaling: dict) -> None:
        if scaling:
            save_scaling(self.file("feature_scaling.npz"), scaling)

    def load_scaling(self, dim: int) -> dict:
        return load_scaling(self.file("feature_scaling.npz"), dim)

    # ------------------------------------------------------------------ helpers
    def _json(self, name: str):
        path = self.file(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {self.path} a run directory?")
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise DamagedRunError(f"{path} is not valid JSON ({err}); the run folder is damaged: restore the "
                                  "file, or train the run again in another folder") from None

    def _csv(self, name: str) -> pd.DataFrame:
        path = self.file(name)
        try:
            table = pd.read_csv(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: is {self.path} a run directory?") from None
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
            raise DamagedRunError(f"{path} is not a readable table ({err}); the run folder is damaged: restore "
                                  "the file, or train the run again in another folder") from None
        if name == "metrics.csv" and not {"epoch", "iteration"} <= set(table.columns):
            raise DamagedRunError(f"{path} is not an rsgh metrics table (no epoch / iteration columns); the run "
                                  "folder is damaged: restore the file, or train the run again in another folder")
        return table


def check_state(model: HashModel, state: dict, path: Path) -> None:
    """A clear error when a saved state was not made for this model (another run's checkpoint)."""
    want = {name: tuple(p.shape[1:]) for name, p in model.params.items()}
    have = {name: tuple(t.shape) for name, t in state.items()}
    if want != have:
        diff = next((f"{k}: file {have.get(k)} vs configuration {want.get(k)}" for k in sorted(set(want) | set(have))
                     if want.get(k) != have.get(k)))
        raise DamagedRunError(f"{path} does not belong to this run's configuration ({diff})")


def finished_runs(configs: Sequence[Config], dirs: Sequence[str | Path], also: Sequence[str] = ()) -> list[dict] | None:
    """The summaries when every run folder holds a finished run of exactly its configuration (and the
    files ``also``); None when some run is missing or unfinished. A finished run of another
    configuration is an error: it is never overwritten."""
    runs = [RunDir(d) for d in dirs]
    if not all(r.is_finished(also) for r in runs):
        return None
    for c, r in zip(configs, runs):
        diff = r.config_diff(c)
        if diff:
            raise ValueError(f"{r.path} holds a finished run of a different configuration ({', '.join(diff)} "
                             "differ); choose another runs folder or remove it yourself")
        saved = _safe_load(r.file(MODEL))  # a finished run is reused only with a readable model (plain data)
        if not isinstance(saved, dict) or not {"config", "state_dict", "input_dim"} <= set(saved):
            raise DamagedRunError(f"{r.file(MODEL)} is not an rsgh model; remove {r.path} to train the run again")
        r.check_finished(c, saved)  # and one trained with this configuration (config.json not edited since)
    return [r.read_summary() for r in runs]


def read_runs(dirs: Sequence[str | Path], variants: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, finals) of finished runs: every metrics row of every run, and one row per run with its
    summary and test-query results (``map``; ``map_best`` of the best-validation model), both with the
    run's method, bits, seed and variant (default "default") as columns."""
    curves, finals = [], []
    for i, d in enumerate(dirs):
        run = RunDir(d)
        summary = run.read_summary()
        cfg = summary["config"]
        tags = {"run": run.path.name, "method": cfg["method"].upper().replace("RSGH", "R-SGH"), "bits": cfg["bits"],
                "seed": cfg["seed"], "variant": variants[i] if variants else "default"}
        curves.append(run.read_metrics().assign(**tags))
        row = dict(tags, **summary["final"], wall_time_s=summary["wall_time_s"],
                   seconds_per_epoch=summary["seconds_per_epoch"], group_size=summary.get("group_size", 1),
                   source=summary["data_source"], git_commit=summary["git_commit"], **summary.get("best", {}))
        for best, suffix in ((False, ""), (True, "_best")):
            r = run.read_retrieval(best)
            if r is not None:
                row.update({f"map{suffix}": r["map"], f"precision_radius2{suffix}": r["precision_radius2"],
                            **{f"p@{k}{suffix}": v for k, v in r["precision_at_k"].items()}})
        finals.append(row)
    return pd.concat(curves, ignore_index=True), pd.DataFrame(finals)


def load_model(run_dir: str | Path, device: str = "cpu", best: bool = False) -> tuple[HashModel, Config]:
    """The trained model of a finished run folder (``best``: its best-validation model)."""
    return RunDir(run_dir).load_model(device, BEST if best else MODEL)


def git_commit() -> str:
    here = Path(__file__).resolve().parent.parent
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
            "numpy": np.__version__, "pandas": pd.__version__, "platform": platform.platform(),
            "cpu": _cpu_name()}


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
