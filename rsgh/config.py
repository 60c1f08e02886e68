"""The run configuration: one dataclass, the named presets, and ``--set key=value`` parsing.

Every field carries its help text; ``python -m rsgh train --help`` prints them all with their
defaults. SPEC section 3 lists the ambiguous readings of the patents: each is a field here.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path


def _f(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Config:
    # --- data and task
    task: str = _f("reconstruction", "'reconstruction': train on the training set, measure on the test set "
                   "(embodiment 1); 'retrieval': split into queries and database (= training set), measure mAP "
                   "(embodiments 2 and 3)", ("reconstruction", "retrieval"))
    dataset: str = _f("mnist", "images: mnist and fashion-mnist (IDX files), cifar10, caltech256, or 'folder' "
                      "(your own root/<class>/<image> folder or archive, see folder)",
                      ("mnist", "fashion-mnist", "cifar10", "caltech256", "folder"))
    cifar_source: str = _f("auto", "CIFAR-10 files: 'official' cifar-10-python.tar.gz, 'jpeg' the JPEG copy "
                           "cifar10-jpeg.tar.gz (lossy, always labelled so), 'auto' official when present",
                           ("auto", "official", "jpeg"))
    folder: str = _f("", "dataset=folder: path of the labelled image folder or archive")
    include_clutter: bool = _f(False, "caltech256: keep the 257.clutter category")
    features: str = _f("pixels", "inputs of the network: 'pixels' scaled to [0, 1] or 'gist' (GIST-512)",
                       ("pixels", "gist"))
    image_size: int = _f(128, "caltech256 and folder images are resized to image_size x image_size for GIST")
    feature_scaling: str = _f("none", "'none'; 'center' (subtract the training set's mean); 'standardize' "
                              "(and divide by its standard deviation); 'whiten' (PCA-whitened: centred, rotated "
                              "onto the principal axes, each divided by its standard deviation)",
                              ("none", "center", "standardize", "whiten"))
    queries_per_class: int = _f(100, "retrieval split: queries drawn per class (used when n_queries = 0)")
    n_queries: int = _f(0, "retrieval split: if > 0, this many uniformly random queries instead")
    split_seed: int = _f(0, "seed of the retrieval split")
    validation_per_class: int = _f(0, "retrieval: validation queries drawn per class from the database side "
                                   "(disjoint from the test queries, removed from the database and training "
                                   "set); all model selection uses them (0: no validation set)")
    n_validation: int = _f(0, "retrieval with n_queries > 0: this many random validation queries instead")
    # --- network
    arch: str = _f("mlp", "'mlp': M ReLU hidden layers of width K on each side; 'reference': the linear "
                   "SGH of the published code (logits = xW + b, x_hat = (hU)*|s| + m)", ("mlp", "reference"))
    hidden_layers: int = _f(1, "M, hidden layers of width K in the encoder and in the decoder (mlp only)")
    bits: int = _f(64, "K, code length")
    hidden_width: int = _f(0, "width of the hidden layers but the last on each side, which is K wide (the tie "
                           "term needs it); 0: K (the patents)")
    # --- objective
    method: str = _f("rsgh", "'sgh': reconstruction + KL; 'rsgh': adds the tie and redundancy terms", ("sgh", "rsgh"))
    objective: str = _f("elbo", "'elbo': Gaussian reconstruction + KL to Bern(rho) (SPEC 2); 'reference': the "
                        "published SGH code's loss (sum of 0.5||x-x_hat||^2 + entropy_weight*CE + l2_weight*L2)",
                        ("elbo", "reference"))
    recon_sigma: float = _f(1.0, "s, standard deviation of the Gaussian p(x|h)")
    prior: float = _f(0.5, "rho, the Bernoulli prior of every bit")
    estimator: str = _f("approximate", "gradient through the binary neuron: 'approximate' (pi(1-pi) dL/dh) or "
                        "'distributional' (pi(1-pi) [L(h_k=1) - L(h_k=0)], unbiased, 2K decoder passes)",
                        ("approximate", "distributional"))
    train_noise: str = _f("uniform", "threshold xi while training: 'uniform' U(0,1) or 'half' fixed at 0.5 "
                          "(the reference code)", ("uniform", "half"))
    delta: float = _f(0.01, "tie term: weight (coupling='weights') or model step size (coupling='step_sizes')")
    eta: float = _f(0.01, "redundancy term: weight (coupling='weights') or adversary step size ('step_sizes')")
    coupling: str = _f("weights", "meaning of delta and eta: 'weights' of the two terms, or 'step_sizes' of the "
                       "model and the adversary (terms then have weight 1)", ("weights", "step_sizes"))
    tie_target: str = _f("decoder", "real-valued layer tied to the codes: 'decoder' last hidden layer g_M(h) or "
                         "'encoder' last hidden layer a_M(x)", ("decoder", "encoder"))
    redundancy: str = _f("activity", "redundancy degree r_j of bit j: 'activity' tau - Var_x[pi_j]; 'kl' "
                         "tau - KL_j (free-bits floor); 'correlation' mean_i |corr(pi_j, pi_i)| - tau",
                         ("activity", "kl", "correlation"))
    tau: float = _f(0.05, "redundancy threshold tau")
    adv_lr: float = _f(0.01, "adversary step size for lambda (projected ascent) when coupling='weights'")
    entropy_weight: float = _f(1e-3, "objective='reference': weight of the sigmoid cross-entropy(logits, h)")
    l2_weight: float = _f(1e-3, "objective='reference': weight of 0.5||U||^2 + 0.5||W||^2")
    # --- optimisation
    lr: float = _f(1e-3, "Adam learning rate of the model (coupling='weights')")
    batch_size: int = _f(32, "batch size")
    epochs: int = _f(50, "passes over the training set (ignored when iterations > 0)")
    iterations: int = _f(0, "if > 0: train this many steps instead of epochs")
    sampling: str = _f("shuffle", "'shuffle': each epoch a new permutation, last partial batch dropped; "
                       "'replacement': every batch drawn with replacement (reference code)",
                       ("shuffle", "replacement"))
    eval_every: int = _f(0, "steps between evaluations and checkpoints; 0 = every eval_epochs epochs")
    eval_epochs: int = _f(1, "epochs between evaluations and checkpoints (when eval_every = 0)")
    patience: int = _f(0, "stop after this many evaluations without a better validation mAP (0: never stop "
                       "early); the best checkpoint is kept either way")
    seed: int = _f(0, "seed of the model's initialisation and of its noise xi")
    data_seed: int = _f(0, "seed of the batch order (one stream for a group of models trained together)")
    def validate(self) -> "Config":
        """This configuration, or a ValueError naming the first field that is wrong and how to fix it."""
        hints = typing.get_type_hints(Config)
        for f in fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, hints[f.name])
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{f.name}={value!r} is not one of {', '.join(choices)}")
        for name in ["bits", "batch_size", "recon_sigma", "eval_epochs", "image_size"]:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ["hidden_layers", "hidden_width", "epochs", "iterations", "eval_every", "delta", "eta", "lr",
                     "adv_lr", "queries_per_class", "n_queries", "validation_per_class", "n_validation", "patience",
                     "entropy_weight", "l2_weight", "tau"]:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.prior < 1:
            raise ValueError(f"prior must lie strictly between 0 and 1, got {self.prior}")
        _check_domains(self)
        if self.lr == 0 and self.coupling == "weights":
            raise ValueError("lr must be > 0 (the model would not learn)")
        if self.epochs == 0 and self.iterations == 0:
            raise ValueError("nothing to train: set epochs > 0 or iterations > 0")
        if self.task == "reconstruction" and self.dataset not in ("mnist", "fashion-mnist"):
            raise ValueError(f"task=reconstruction uses the train/test split of mnist or fashion-mnist; "
                             f"{self.dataset} has none: use task=retrieval")
        if self.dataset == "folder" and not self.folder:
            raise ValueError("dataset=folder needs folder=PATH (a root/<class>/<image> folder or archive)")
        if self.task == "retrieval" and self.n_queries == 0 and self.queries_per_class == 0:
            raise ValueError("retrieval needs queries: set queries_per_class > 0 or n_queries > 0")
        if self.n_validation and not self.n_queries:
            raise ValueError("n_validation goes with n_queries; with queries per class use validation_per_class")
        if self.validation_per_class and self.n_queries:
            raise ValueError("validation_per_class goes with queries_per_class; with n_queries use n_validation")
        if self.patience and not self.has_validation:
            raise ValueError("patience stops on the validation mAP: set validation_per_class (or n_validation)")
        if self.objective == "reference" and self.method != "sgh":
            raise ValueError("objective='reference' is the published SGH code: use method=sgh")
        if self.arch == "reference" and self.method == "rsgh":
            raise ValueError("arch='reference' has no hidden layers, so R-SGH's tie term is undefined: "
                             "use method=sgh or arch=mlp")
        if self.method == "rsgh" and self.hidden_layers < 1:
            raise ValueError("R-SGH ties the codes to the last hidden layer: set hidden_layers >= 1")
        if self.coupling == "step_sizes" and self.delta <= 0:
            raise ValueError("coupling='step_sizes' uses delta as the model's learning rate: set delta > 0")
        return self

    @property
    def has_validation(self) -> bool:
        return self.task == "retrieval" and (self.validation_per_class > 0 or self.n_validation > 0)

    @property
    def width(self) -> int:
        """Width of the hidden layers other than the last on each side."""
        return self.hidden_width or self.bits

    def identity(self) -> str:
        """A digest of every field: what the result of this configuration is, whoever computes it."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def run_name(self) -> str:
        """A run folder's name: readable prefix, then the identity (``rsgh-k64-s0-1a2b3c4d5e``)."""
        return f"{self.method}-k{self.bits}-s{self.seed}-{self.identity()}"

    @property
    def model_lr(self) -> float:
        return self.delta if self.coupling == "step_sizes" else self.lr

    @property
    def adversary_lr(self) -> float:
        return self.eta if self.coupling == "step_sizes" else self.adv_lr

    @property
    def tie_weight(self) -> float:
        return 1.0 if self.coupling == "step_sizes" else self.delta

    @property
    def redundancy_weight(self) -> float:
        return 1.0 if self.coupling == "step_sizes" else self.eta

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


E1 = dict(dataset="mnist", arch="mlp", hidden_layers=1, bits=64, batch_size=32, epochs=50,
          delta=0.01, eta=0.01, prior=0.5, tau=0.05)

# Embodiments 2 and 3: retrieval on GIST-512, M = 4, 200 epochs; code length via --set bits=32|64|128.
E2 = dict(task="retrieval", dataset="cifar10", features="gist", feature_scaling="standardize", hidden_layers=4,
          bits=64, batch_size=32, epochs=200, eval_epochs=10, delta=0.01, eta=0.01, prior=0.5, tau=0.05,
          queries_per_class=100)
E3 = dict(E2, dataset="caltech256", n_queries=1000, image_size=128, include_clutter=False)

PRESETS: dict[str, dict] = {
    # Embodiment 1 of the patents: MNIST reconstruction error against epoch.
    "e1-sgh": dict(E1, method="sgh"),
    "e1-rsgh": dict(E1, method="rsgh"),
    "e2-sgh": dict(E2, method="sgh"),
    "e2-rsgh": dict(E2, method="rsgh"),
    "e3-sgh": dict(E3, method="sgh"),
    "e3-rsgh": dict(E3, method="rsgh"),
    # The published SGH code (linear SGH on MNIST), SPEC section 2, choice by choice.
    "sgh-reference": dict(dataset="mnist", arch="reference", hidden_layers=0, bits=64, method="sgh",
                          objective="reference", estimator="approximate", train_noise="half",
                          lr=1e-2, batch_size=500, sampling="replacement", iterations=5000, eval_every=500),
}


DEVICE_VAR = "RSGH_DEVICE"  # the default device of every Runtime built without one (the book's pages build theirs)


@dataclass(frozen=True)
class Runtime:
    """How a run is computed, never what it is: not part of a run's identity, so a finished run is
    reused whatever these were."""
    threads: int = _f(1, "torch CPU threads (one is fastest for these small networks)")
    compile_step: bool = _f(False, "torch.compile the whole training step (gradient, Adam and adversary in one "
                            "graph): about 2x the steps/s of a group on one CPU thread, after a compile of "
                            "15-60 s; results agree with the eager step to floating-point tolerance, not bit "
                            "for bit")
    flush_denormal: bool = _f(True, "CPU: the training steps compute with subnormal floats flushed to zero "
                              "(torch.set_flush_denormal, in the thread that steps: with threads > 1 torch's other "
                              "threads are not flushed; the evaluations are not). Adam's "
                              "first moment of a weight whose gradient is exactly zero (a blank pixel, a dead unit) "
                              "decays through the subnormal range, which some CPUs compute many times slower: on an "
                              "Intel Xeon a lone 128-bit E2 step took 2.2 ms without it, 0.91 ms with it. The "
                              "results were the same to the bit (README, 'Subnormal numbers')")
    device: str = field(default_factory=lambda: os.environ.get(DEVICE_VAR, "").strip() or "auto", metadata={
        "help": f"'auto' (CUDA when available), 'cpu' or 'cuda'; default ${DEVICE_VAR} where set (make reproduce "
                "DEVICE=cuda sets it: every page's training on the GPU), else 'auto'", "choices": ("auto", "cpu", "cuda")})
    progress: bool = _f(True, "show progress bars")
    group_split: str = _f("auto", "how the cluster's tasks deal a lock-step group's models into parallel parts: "
                          "'measure' (from a short measurement of the step at each candidate group size, 5-30 s "
                          "a size, most of it compiling, then the split of all groups that finishes first), "
                          "'workers' (one part per worker) or 'auto' (measure on a local cluster of CPU workers when "
                          "some group trains 100,000 model-steps or more)", ("auto", "measure", "workers"))

    def flushes_subnormals(self, device) -> bool:
        """Whether the training steps on ``device`` (a torch.device) run with subnormals flushed: on the CPU only."""
        return self.flush_denormal and device.type == "cpu"

    def validate(self) -> "Runtime":
        hints = typing.get_type_hints(Runtime)
        if isinstance(self.device, str) and self.device not in ("auto", "cpu", "cuda") and \
                self.device == os.environ.get(DEVICE_VAR, "").strip():
            raise ValueError(f"{DEVICE_VAR}={self.device!r} is not a device: set it to auto, cpu or cuda, or unset it")
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.threads > threads_max():
            raise ValueError(f"threads={self.threads} is more than {threads_max()} (this machine has "
                             f"{os.cpu_count()} cores; one thread is fastest for these small networks)")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("device=cuda but no CUDA device is available here; use device=auto or cpu")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The real domain of a value, beyond its type and sign: what a run can compute with, checked before its
# folder is made. Seeds are 64-bit (torch's generators); a float must be a normal float32 number (the
# model computes in float32: 1e-300 is 0 there, 1e39 infinite); sizes stay where a model fits in memory.
SEED_MAX = 2**63 - 1
FLOAT32_TINY, FLOAT32_MAX = 1.1754944e-38, 3.4028235e38
RANGES = {"bits": (1, 4096), "hidden_layers": (0, 64), "hidden_width": (0, 65536), "batch_size": (1, 1 << 24),
          "image_size": (1, 4096), "seed": (0, SEED_MAX), "data_seed": (0, SEED_MAX), "split_seed": (0, SEED_MAX),
          "recon_sigma": (1e-6, 1e6), "prior": (1e-6, 1 - 1e-6)}


def _check_domains(cfg) -> None:
    """A ValueError naming the first value outside its real domain (:data:`RANGES`; every integer a
    64-bit one, every float a normal float32 number or 0)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        low, high = RANGES.get(f.name, (None, None))
        if low is not None and not low <= value <= high:
            raise ValueError(f"{f.name}={value!r} is outside its range, {_number(low)} to {_number(high)}; choose "
                             "a value in it")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > SEED_MAX:
            raise ValueError(f"{f.name}={value} is larger than a 64-bit integer; choose a smaller value")
        if isinstance(value, float) and value != 0 and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
            raise ValueError(f"{f.name}={value!r} is not a normal float32 number (the model computes in float32, "
                             f"where it would be {'0' if abs(value) < 1 else 'infinite'}); choose a value between "
                             f"{FLOAT32_TINY:.3g} and {FLOAT32_MAX:.3g}")


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def threads_max() -> int:
    """The most torch threads a run may ask for: 256, or the number of cores when more."""
    return max(256, os.cpu_count() or 1)


def _check_type(name: str, value, kind) -> None:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ValueError(f"{name}={value!r} should be of type {kind.__name__}, not {type(value).__name__}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be a finite number")


def _field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def _parse_value(name: str, text: str):
    cls = Runtime if name in _field_names(Runtime) else Config
    kind = typing.get_type_hints(cls)[name]
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"--set {name}={text}: expected true or false")
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"--set {name}={text}: expected a value of type {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"--set {name}={text}: must be a finite number")
    return value


def parse_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """``["bits=32", "threads=2"]`` -> (configuration overrides, runtime settings), typed; unknown
    keys and bad values are errors."""
    names = _field_names(Config) + _field_names(Runtime)
    out: tuple[dict, dict] = ({}, {})
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        key = key.strip()
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"--set {key}: unknown parameter{hint}; see 'python -m rsgh train --help'")
        out[key in _field_names(Runtime)][key] = _parse_value(key, text.strip())
    return out


def make_config(preset: str | None = None, overrides: dict | None = None) -> Config:
    """A validated Config from a preset name and overrides (a relative ``folder`` is made absolute,
    so that a run resumed from another directory reads the same images)."""
    base: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown config {preset!r}; known: {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    unknown = set(overrides or {}) - set(_field_names(Config))
    if unknown:
        raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    base.update(overrides or {})
    if base.get("folder"):
        base["folder"] = str(Path(base["folder"]).expanduser().resolve())
    return Config(**base).validate()


def config_from_dict(values, where: str) -> Config:
    """A Config read back from a file (``config.json``, a model): a clear error when it is not one."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a JSON object of configuration fields, got {type(values).__name__}")
    unknown = set(values) - set(_field_names(Config))
    if unknown:
        raise ValueError(f"{where}: unknown configuration field(s) {', '.join(sorted(unknown))} (written by "
                         "another version of rsgh?)")
    try:
        return Config(**values).validate()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def config_help() -> str:
    """One line per parameter: name, type, default, help."""
    lines = []
    for cls in (Config, Runtime):
        hints = typing.get_type_hints(cls)
        lines += [f"  {f.name} ({hints[f.name].__name__}, default "
                  f"{(f.default if f.default is not dataclasses.MISSING else f.default_factory())!r}): {f.metadata['help']}"
                  for f in fields(cls)]
    return "\n".join(lines)
