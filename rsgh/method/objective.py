"""SGH and R-SGH objectives, and the adversary of R-SGH (SPEC sections 2 and 3).

Per sample, averaged over the batch (``objective='elbo'``)::

    rec + KL(q(h|x) || Bern(rho)) + w_tie * ||h - t||^2            (SGH stops after the KL)
    + w_red * sum_j lambda_j r_j                                    (a batch term)

``t`` is the last real-valued hidden layer (decoder's g_M(h) by default, or the encoder's
a_M(x)); ``r_j`` is the redundancy degree of bit j (positive when redundant) and the
multipliers ``lambda_j >= 0`` are the adversary, raised by projected ascent on ``r_j``.

Everything is computed for a group of G models at once; the per-model hyperparameters (method,
weights, tau, prior, ...) are the (G, 1, 1)-shaped tensors of :class:`GroupSpec`. The group's
total is the sum of the models' losses, so each model gets exactly its own gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import Config
from .model import HashModel
from .neuron import binary_sample, distributional_surrogate, flip_differences

PARTS = ("loss", "rec", "kl", "tie", "red")  # for objective='reference', "kl" holds the CE term
REDUNDANCY_KINDS = ("activity", "kl", "correlation")

# Fields that may differ between the models of one group; every other field must agree.
PER_MODEL = ("method", "lr", "delta", "eta", "coupling", "tie_target", "redundancy", "tau", "adv_lr", "prior",
             "recon_sigma", "seed", "entropy_weight", "l2_weight")


def bernoulli_kl(logits: torch.Tensor, prior: float | torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bern(sigmoid(logits)) || Bern(prior)), stable for large |logits|."""
    pi = torch.sigmoid(logits)
    if isinstance(prior, torch.Tensor):
        log_p, log_q = prior.log(), torch.log1p(-prior)
    else:
        log_p, log_q = math.log(prior), math.log(1 - prior)
    return pi * (F.logsigmoid(logits) - log_p) + (1 - pi) * (F.logsigmoid(-logits) - log_q)


@dataclass
class GroupSpec:
    """Per-model hyperparameters of a group, as tensors of shape (G, 1, 1)."""
    configs: list[Config]
    rsgh: torch.Tensor  # 1.0 for R-SGH, 0.0 for SGH
    tie_weight: torch.Tensor
    redundancy_weight: torch.Tensor
    adversary_lr: torch.Tensor
    tau: torch.Tensor
    prior: torch.Tensor
    inv_var: torch.Tensor
    tie_encoder: torch.Tensor  # 1.0 where the tie target is the encoder's last hidden layer
    kind: torch.Tensor  # index into REDUNDANCY_KINDS
    entropy_weight: torch.Tensor
    l2_weight: torch.Tensor

    @classmethod
    def from_configs(cls, configs: Sequence[Config], device="cpu", dtype=torch.float32) -> "GroupSpec":
        check_group(configs)

        def col(f):
            return torch.tensor([float(f(c)) for c in configs], device=device, dtype=dtype).reshape(-1, 1, 1)

        return cls(list(configs), col(lambda c: c.method == "rsgh"), col(lambda c: c.tie_weight),
                   col(lambda c: c.redundancy_weight), col(lambda c: c.adversary_lr), col(lambda c: c.tau),
                   col(lambda c: c.prior), col(lambda c: 1 / c.recon_sigma ** 2),
                   col(lambda c: c.tie_target == "encoder"), col(lambda c: REDUNDANCY_KINDS.index(c.redundancy)),
                   col(lambda c: c.entropy_weight), col(lambda c: c.l2_weight))

    @property
    def any_rsgh(self) -> bool:
        return any(c.method == "rsgh" for c in self.configs)


def check_group(configs: Sequence[Config]) -> None:
    """Models of one group must share everything but the PER_MODEL fields and the model lr."""
    if not configs:
        raise ValueError("a group needs at least one model")
    first = configs[0].to_dict()
    for c in configs[1:]:
        diff = [k for k, v in c.to_dict().items() if k not in PER_MODEL and v != first[k]]
        if c.model_lr != configs[0].model_lr:
            diff.append("model learning rate (lr, or delta with coupling=step_sizes)")
        if diff:
            raise ValueError(f"models of one group must agree on {', '.join(diff)}; train them in separate groups")


def redundancy_degree(logits: torch.Tensor, spec: GroupSpec) -> torch.Tensor:
    """r_j of every model and bit over the batch (positive = redundant), shape (G, K)."""
    pi = torch.sigmoid(logits)
    tau = spec.tau[:, :, 0]
    out = torch.zeros(pi.shape[0], pi.shape[2], device=pi.device, dtype=pi.dtype)
    kinds = {c.redundancy for c in spec.configs}
    if "activity" in kinds:
        out = torch.where(spec.kind[:, :, 0] == 0, tau - pi.var(dim=1, unbiased=False), out)
    if "kl" in kinds:
        out = torch.where(spec.kind[:, :, 0] == 1, tau - bernoulli_kl(logits, spec.prior).mean(dim=1), out)
    if "correlation" in kinds:
        # mean absolute correlation of pi_j with the other bits over the batch
        centred = pi - pi.mean(dim=1, keepdim=True)
        std = centred.pow(2).mean(dim=1).add(1e-8).sqrt()
        corr = centred.transpose(1, 2) @ centred / pi.shape[1] / (std[:, :, None] * std[:, None, :])
        k = corr.shape[-1]
        off = corr.abs() * (1 - torch.eye(k, dtype=corr.dtype, device=corr.device))
        out = torch.where(spec.kind[:, :, 0] == 2, off.sum(dim=-1) / max(k - 1, 1) - tau, out)
    return out


@dataclass
class Loss:
    total: torch.Tensor  # what the group minimises: the sum of the models' losses
    parts: torch.Tensor  # (G, len(PARTS)) detached batch means, for logging
    redundancy: torch.Tensor | None  # r (G, K) of this batch (detached), for the adversary step


def compute_loss(model: HashModel, x: torch.Tensor, xi: torch.Tensor, spec: GroupSpec,
                 lam: torch.Tensor) -> Loss:
    """``x``: (B, D) shared by the group; ``xi``: (G, B, K) thresholds; ``lam``: (G, K)."""
    cfg = spec.configs[0]
    if cfg.objective == "reference":
        return _reference_loss(model, x, xi, spec)
    logits, enc_hidden = model.encode(x)
    any_rsgh = spec.any_rsgh
    tie_from_encoder = any(c.tie_target == "encoder" for c in spec.configs)

    def code_loss(h: torch.Tensor, x_: torch.Tensor, t_enc: torch.Tensor | None):
        """The part of the per-sample loss that depends on the code h: rec (+ tie)."""
        x_hat, dec_hidden = model.decode(h)
        inv_var = spec.inv_var if h.dim() == 3 else spec.inv_var[..., None]
        rec = 0.5 * (inv_var * (x_ - x_hat).pow(2)).sum(-1)
        if not any_rsgh:
            return rec, rec, torch.zeros_like(rec)
        target = dec_hidden
        if tie_from_encoder:
            w = spec.tie_encoder if h.dim() == 3 else spec.tie_encoder[..., None]
            target = w * t_enc + (1 - w) * dec_hidden
        tie = (h - target).pow(2).sum(-1)
        weight = (spec.rsgh * spec.tie_weight)[..., 0]
        return rec + (weight if h.dim() == 3 else weight[..., None]) * tie, rec, tie

    approximate = cfg.estimator == "approximate"
    h = binary_sample(logits, xi, straight_through=approximate)
    per_sample, rec, tie = code_loss(h, x, enc_hidden)
    if not approximate:
        with torch.no_grad():
            t = None if enc_hidden is None else enc_hidden.unsqueeze(-2)
            diffs = flip_differences(h, lambda codes: code_loss(codes, x.unsqueeze(-2), t)[0])
        per_sample = per_sample + distributional_surrogate(logits, diffs)
    kl = bernoulli_kl(logits, spec.prior).sum(-1)
    per_model = (per_sample + kl).mean(dim=1)  # (G,)
    r = None
    red = torch.zeros_like(per_model)
    if any_rsgh:
        r = redundancy_degree(logits, spec)
        red = (lam * r).sum(-1)
        per_model = per_model + (spec.rsgh * spec.redundancy_weight)[:, 0, 0] * red
    is_rsgh = spec.rsgh[:, 0, 0]
    parts = torch.stack([per_model, rec.mean(1), kl.mean(1), is_rsgh * tie.mean(1), is_rsgh * red], dim=1).detach()
    return Loss(per_model.sum(), parts, None if r is None else r.detach())


def _reference_loss(model: HashModel, x: torch.Tensor, xi: torch.Tensor, spec: GroupSpec) -> Loss:
    """The published SGH code: sums over the batch, no KL.

    0.5||x - x_hat||^2 + entropy_weight * CE(logits, h) + l2_weight * (0.5||U||^2 + 0.5||W||^2).
    CE is written out (softplus(l) - l h) so that, as in the TensorFlow code, its gradient also
    reaches h and through the neuron becomes pi(1-pi)(dL/dh + dL/dpi).
    """
    logits, _ = model.encode(x)
    h = binary_sample(logits, xi, straight_through=True)
    x_hat, _ = model.decode(h)
    rec = 0.5 * (x - x_hat).pow(2).sum(dim=(1, 2))
    ce = (F.softplus(logits) - logits * h).sum(dim=(1, 2))
    p = model.params
    l2 = 0.5 * p["U"].pow(2).sum(dim=(1, 2)) + 0.5 * p["W"].pow(2).sum(dim=(1, 2))
    ew, lw = spec.entropy_weight[:, 0, 0], spec.l2_weight[:, 0, 0]
    per_model = rec + ew * ce + lw * l2
    zero = torch.zeros_like(rec)
    parts = torch.stack([per_model, rec, ew * ce, zero, zero], dim=1).detach() / len(x)
    return Loss(per_model.sum(), parts, None)


def adversary_step(lam: torch.Tensor, redundancy: torch.Tensor | None, spec: GroupSpec) -> None:
    """Projected gradient ascent of sum_j lambda_j r_j over lambda >= 0 (in place), R-SGH models only."""
    if redundancy is not None:
        lam.add_((spec.rsgh * spec.adversary_lr)[:, :, 0] * redundancy).clamp_(min=0.0)
