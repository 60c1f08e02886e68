"""The run configuration: one dataclass, the named presets, and ``--set key=value`` parsing.

Every field carries its help text; ``python -m rsgh train --help`` prints them all with their
defaults. SPEC section 3 lists the ambiguous readings of the patents: each is a field here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field, fields


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
    feature_scaling: str = _f("none", "'none', or 'standardize' each feature with the training set's mean and "
                              "standard deviation", ("none", "standardize"))
    queries_per_class: int = _f(100, "retrieval split: queries drawn per class (used when n_queries = 0)")
    n_queries: int = _f(0, "retrieval split: if > 0, this many uniformly random queries instead")
    split_seed: int = _f(0, "seed of the retrieval split")
    # --- network
    arch: str = _f("mlp", "'mlp': M ReLU hidden layers of width K on each side; 'reference': the linear "
                   "SGH of the published code (logits = xW + b, x_hat = (hU)*|s| + m)", ("mlp", "reference"))
    hidden_layers: int = _f(1, "M, hidden layers of width K in the encoder and in the decoder (mlp only)")
    bits: int = _f(64, "K, code length (also the hidden width)")
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
    seed: int = _f(0, "seed of the model's initialisation and of its noise xi")
    data_seed: int = _f(0, "seed of the batch order (one stream for a group of models trained together)")
    threads: int = _f(1, "torch CPU threads (one is fastest for these small networks)")
    compile_step: bool = _f(False, "torch.compile the whole training step (gradient, Adam and adversary in one "
                            "graph): about 2x the steps/s of a group on one CPU thread, after a compile of "
                            "15-60 s; results agree with the eager step to floating-point tolerance, not bit "
                            "for bit")
    device: str = _f("auto", "'auto' (CUDA when available), 'cpu' or 'cuda'", ("auto", "cpu", "cuda"))

    def validate(self) -> "Config":
        for f in fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{f.name}={value!r} is not one of {', '.join(choices)}")
        positive = ["bits", "batch_size", "recon_sigma", "threads", "eval_epochs", "image_size"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ["hidden_layers", "epochs", "iterations", "eval_every", "delta", "eta", "lr", "adv_lr",
                     "queries_per_class", "n_queries",
                     "entropy_weight", "l2_weight", "tau"]:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.prior < 1:
            raise ValueError(f"prior must lie strictly between 0 and 1, got {self.prior}")
        if self.epochs == 0 and self.iterations == 0:
            raise ValueError("nothing to train: set epochs > 0 or iterations > 0")
        if self.task == "reconstruction" and self.dataset not in ("mnist", "fashion-mnist"):
            raise ValueError(f"task=reconstruction uses the train/test split of mnist or fashion-mnist; "
                             f"{self.dataset} has none: use task=retrieval")
        if self.dataset == "folder" and not self.folder:
            raise ValueError("dataset=folder needs folder=PATH (a root/<class>/<image> folder or archive)")
        if self.task == "retrieval" and self.n_queries == 0 and self.queries_per_class == 0:
            raise ValueError("retrieval needs queries: set queries_per_class > 0 or n_queries > 0")
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


def _parse_value(name: str, text: str):
    kind = typing.get_type_hints(Config)[name]
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"--set {name}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--set {name}={text}: expected a value of type {kind.__name__}") from None


def parse_overrides(pairs: list[str]) -> dict:
    """``["bits=32", "method=sgh"]`` -> typed dict; unknown keys and bad values are errors."""
    names = [f.name for f in fields(Config)]
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        key = key.strip()
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"--set {key}: unknown parameter{hint}; see 'python -m rsgh train --help'")
        out[key] = _parse_value(key, text.strip())
    return out


def make_config(preset: str | None = None, overrides: dict | None = None) -> Config:
    """A validated Config from a preset name and overrides."""
    base: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown config {preset!r}; known: {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    unknown = set(overrides or {}) - {f.name for f in fields(Config)}
    if unknown:
        raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    base.update(overrides or {})
    return Config(**base).validate()


def config_help() -> str:
    """One line per parameter: name, type, default, help."""
    hints = typing.get_type_hints(Config)
    lines = []
    for f in fields(Config):
        lines.append(f"  {f.name} ({hints[f.name].__name__}, default {f.default!r}): {f.metadata['help']}")
    return "\n".join(lines)
