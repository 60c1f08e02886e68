"""The search space of the studies: the three arms, the data of each dataset, the ranges and choices
Optuna searches (:func:`suggest`), a trial's configuration (:func:`trial_config`) and each arm's known
point, its method at the patents' settings (:func:`known_params`). How a study runs is in
:mod:`rsgh.book.study`.
"""

from __future__ import annotations

from ..config import Config, make_config

PATIENCE = 5  # evaluations (epochs) without a better validation mAP before a trial stops (a study's default)
ARMS = {"sgh": "SGH", "sgh-arch": "SGH, R-SGH's architecture", "rsgh": "R-SGH"}  # arm -> label
DATASETS = {  # the data of a study: dataset, features and their split (the test queries of the pages)
    "cifar10": dict(dataset="cifar10", features="gist", queries_per_class=100, validation_per_class=100),
    "mnist": dict(dataset="mnist", features="pixels", queries_per_class=100, validation_per_class=100),
    "fashion-mnist": dict(dataset="fashion-mnist", features="pixels", queries_per_class=100,
                          validation_per_class=100),
}
# The continuous ranges: (low, high, log scale). Wide enough that no study's best value lies in the outer
# tenth of a range (:func:`edge_values`); the first round's studies had best values at the floors of lr
# (1e-4), eta_step (1e-3) and prior (0.1). recon_sigma was first searched from 1e-2: MNIST's R-SGH study
# ended at 0.0187, in the outer tenth, so it was widened to 1e-4 and MNIST's three studies were extended
# (each study's journal records its range history, :func:`record_ranges`). prior was searched on 0.05..0.95 in
# linear scale: Fashion-MNIST's SGH and SGH-architecture studies ended at 0.083 and 0.051, in the outer tenth,
# towards a natural bound (0 keeps no bit on): it is searched in log scale from 1e-3 since, and the Fashion-MNIST
# studies were extended (MNIST's first studies ended inside their linear range and kept it). Where a prior lies in
# its range is measured in log-odds (:data:`rsgh.book.ranges.PROBABILITIES`). MNIST's second studies (a protocol
# for slow learners) ended with SGH-in-R-SGH's-architecture's best recon_sigma at 1.8e-4, in the outer tenth of
# 1e-4..1e2: recon_sigma is searched from 1e-6 since, and the three were extended with the same further trials.
# Fashion-MNIST's second studies (MNIST's protocol) ended with SGH's best prior at 1.3e-3, in the outer tenth of
# 1e-3..0.999 (with recon_sigma at 1.1e-4, where the prior weighs little): prior is searched from 1e-5 since, and
# the three were extended from 60 to 80 trials.
RANGES = {
    "lr": (1e-5, 1e-1, True),  # Adam's step of the model (delta too, where delta is the model's step size)
    "recon_sigma": (1e-6, 1e2, True),
    "prior": (1e-5, 0.999, True),
    "delta": (1e-4, 1e1, True),  # weights of R-SGH's tie and redundancy terms (coupling=weights)
    "eta": (1e-4, 1e1, True),
    "adv_lr": (1e-4, 1.0, True),  # the adversary's step (coupling=weights)
    "eta_step": (1e-5, 1.0, True),  # the adversary's step (coupling=step_sizes)
    "tau": (3e-3, 0.5, True),
}
CHOICES = {
    "feature_scaling": ["none", "center", "standardize", "whiten"],
    "batch_size": [32, 64, 128, 256, 512],
    "train_noise": ["uniform", "half"],
    "width_factor": [1, 2],
    "coupling": ["weights", "step_sizes"],
    "tie_target": ["decoder", "encoder"],
    "redundancy": ["activity", "kl", "correlation"],
}


def arm_method(arm: str) -> str:
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {', '.join(ARMS)}; got {arm!r}")
    return "rsgh" if arm == "rsgh" else "sgh"


def suggest(trial, arm: str) -> dict:
    """The search space: Optuna suggestions for one trial of ``arm``, as parameters that
    :func:`trial_config` turns into a configuration.

    Left out: the distributional estimator. It decodes 2K variants of every code, 4.6x slower per step
    than the approximate one at K = 64, M = 4, batch 32 (measured on the development machine) and more
    at larger batches."""
    arm_method(arm)

    def real(name):
        low, high, log = RANGES[name]
        return trial.suggest_float(name, low, high, log=log)

    def choice(name, options=None):
        return trial.suggest_categorical(name, options or CHOICES[name])

    p = {"feature_scaling": choice("feature_scaling"), "lr": real("lr"), "batch_size": choice("batch_size"),
         "train_noise": choice("train_noise")}
    p["family"] = choice("family", ["mlp", "linear-reference"] if arm == "sgh" else ["mlp"])
    if p["family"] == "linear-reference":  # the published SGH code: linear, its own loss (SPEC section 2)
        return p
    p["hidden_layers"] = choice("hidden_layers", [0, 1, 2, 4] if arm == "sgh" else [1, 2, 4])
    if p["hidden_layers"] >= 2:
        p["width_factor"] = choice("width_factor")
    p["recon_sigma"], p["prior"] = real("recon_sigma"), real("prior")
    if arm == "rsgh":
        p["coupling"] = choice("coupling")
        if p["coupling"] == "weights":
            p["delta"], p["eta"], p["adv_lr"] = real("delta"), real("eta"), real("adv_lr")
        else:  # delta and eta are the step sizes of the model (the same lr as the other arms) and of the adversary
            p["delta"], p["eta"] = p["lr"], real("eta_step")
        p["tau"] = real("tau")
        p["tie_target"], p["redundancy"] = choice("tie_target"), choice("redundancy")
    return p


def trial_config(params: dict, arm: str, dataset: str, bits: int, max_epochs: int, seed: int = 0,
                 patience: int = PATIENCE) -> Config:
    """The configuration of a trial's parameters at ``bits`` (a best configuration retrained at other code
    lengths keeps its width factor), trained up to ``max_epochs``, stopping after ``patience`` epochs
    without a better validation mAP."""
    p = dict(params)
    family, factor = p.pop("family", "mlp"), p.pop("width_factor", 1)
    base = dict(DATASETS[dataset], task="retrieval", method=arm_method(arm), bits=bits, seed=seed,
                epochs=max_epochs, eval_epochs=1, patience=patience)
    if family == "linear-reference":
        base.update(arch="reference", objective="reference", hidden_layers=0)
    else:
        base["hidden_width"] = bits * factor if factor != 1 else 0
    return make_config(None, dict(base, **p))


def known_params(arm: str, dataset: str) -> dict:
    """The arm's known point on ``dataset``: its method at the patents' settings (embodiment 2's network and
    training, as :func:`rsgh.book.comparison.patents_experiment` runs them: pixels unscaled), as
    :func:`suggest` gives parameters. A point of every arm's space (SGH's in both SGH arms)."""
    cfg = make_config(f"e2-{arm_method(arm)}")
    p = {"feature_scaling": cfg.feature_scaling if DATASETS[dataset]["features"] == "gist" else "none",
         "lr": cfg.lr, "batch_size": cfg.batch_size, "train_noise": cfg.train_noise, "family": "mlp",
         "hidden_layers": cfg.hidden_layers, "width_factor": 1, "recon_sigma": cfg.recon_sigma, "prior": cfg.prior}
    if arm_method(arm) == "rsgh":
        p.update(coupling=cfg.coupling, delta=cfg.delta, eta=cfg.eta, adv_lr=cfg.adv_lr, tau=cfg.tau,
                 tie_target=cfg.tie_target, redundancy=cfg.redundancy)
    return p
