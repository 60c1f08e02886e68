"""SGH and R-SGH objectives, and the adversary of R-SGH (SPEC sections 2 and 3).

Per sample, averaged over the batch (``objective='elbo'``)::

    rec + KL(q(h|x) || Bern(rho)) + w_tie * ||h - t||^2            (SGH stops after the KL)
    + w_red * sum_j lambda_j r_j                                    (a batch term)

``t`` is the last real-valued hidden layer (decoder's g_M(h) by default, or the encoder's
a_M(x)); ``r_j`` is the redundancy degree of bit j (positive when redundant) and the
multipliers ``lambda_j >= 0`` are the adversary, raised by projected ascent on ``r_j``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import Config
from .model import HashModel
from .neuron import binary_sample, distributional_surrogate, flip_differences


def bernoulli_kl(logits: torch.Tensor, prior: float) -> torch.Tensor:
    """Elementwise KL(Bern(sigmoid(logits)) || Bern(prior)), stable for large |logits|."""
    pi = torch.sigmoid(logits)
    return pi * (F.logsigmoid(logits) - math.log(prior)) + (1 - pi) * (F.logsigmoid(-logits) - math.log(1 - prior))


def redundancy_degree(logits: torch.Tensor, cfg: Config) -> torch.Tensor:
    """r_j for every bit j over the batch (positive = redundant), differentiable in the logits."""
    pi = torch.sigmoid(logits)
    if cfg.redundancy == "activity":
        return cfg.tau - pi.var(dim=0, unbiased=False)
    if cfg.redundancy == "kl":
        return cfg.tau - bernoulli_kl(logits, cfg.prior).mean(dim=0)
    # 'correlation': mean absolute correlation of pi_j with the other bits over the batch.
    centred = pi - pi.mean(dim=0)
    std = centred.pow(2).mean(dim=0).add(1e-8).sqrt()
    corr = (centred.T @ centred) / len(pi) / (std[:, None] * std[None, :])
    k = corr.shape[0]
    off = corr.abs() * (1 - torch.eye(k, dtype=corr.dtype, device=corr.device))
    return off.sum(dim=1) / max(k - 1, 1) - cfg.tau


PARTS = ("loss", "rec", "kl", "tie", "red")  # for objective='reference', "kl" holds the CE term


@dataclass
class Loss:
    total: torch.Tensor  # what the model minimises
    parts: torch.Tensor  # detached batch means of PARTS, for logging
    redundancy: torch.Tensor | None  # r_j of this batch (detached), for the adversary step


def compute_loss(model: HashModel, x: torch.Tensor, xi: torch.Tensor, cfg: Config,
                 lam: torch.Tensor) -> Loss:
    if cfg.objective == "reference":
        return _reference_loss(model, x, xi, cfg)
    logits, enc_hidden = model.encode(x)
    rsgh = cfg.method == "rsgh"
    inv_var = 1.0 / cfg.recon_sigma ** 2

    def code_loss(h: torch.Tensor, x_: torch.Tensor, t_enc: torch.Tensor | None):
        """The part of the per-sample loss that depends on the code h: rec (+ tie)."""
        x_hat, dec_hidden = model.decode(h)
        rec = 0.5 * inv_var * (x_ - x_hat).pow(2).sum(-1)
        if not rsgh:
            return rec, rec, torch.zeros_like(rec)
        target = dec_hidden if cfg.tie_target == "decoder" else t_enc
        tie = (h - target).pow(2).sum(-1)
        return rec + cfg.tie_weight * tie, rec, tie

    approximate = cfg.estimator == "approximate"
    h = binary_sample(logits, xi, straight_through=approximate)
    per_sample, rec, tie = code_loss(h, x, enc_hidden)
    if not approximate:
        with torch.no_grad():
            t = None if enc_hidden is None else enc_hidden.unsqueeze(-2)
            diffs = flip_differences(h, lambda codes: code_loss(codes, x.unsqueeze(-2), t)[0])
        per_sample = per_sample + distributional_surrogate(logits, diffs)
    kl = bernoulli_kl(logits, cfg.prior).sum(-1)
    total = (per_sample + kl).mean()
    r = red = None
    if rsgh:
        r = redundancy_degree(logits, cfg)
        red = (lam * r).sum()
        total = total + cfg.redundancy_weight * red
    parts = torch.stack([total, rec.mean(), kl.mean(), tie.mean(),
                         red if rsgh else torch.zeros((), device=x.device)]).detach()
    return Loss(total, parts, None if r is None else r.detach())


def _reference_loss(model: HashModel, x: torch.Tensor, xi: torch.Tensor, cfg: Config) -> Loss:
    """The published SGH code: sums over the batch, no KL.

    0.5||x - x_hat||^2 + entropy_weight * CE(logits, h) + l2_weight * (0.5||U||^2 + 0.5||W||^2).
    CE is written out (softplus(l) - l h) so that, as in the TensorFlow code, its gradient also
    reaches h and through the neuron becomes pi(1-pi)(dL/dh + dL/dpi).
    """
    logits, _ = model.encode(x)
    h = binary_sample(logits, xi, straight_through=True)
    x_hat, _ = model.decode(h)
    rec = 0.5 * (x - x_hat).pow(2).sum()
    ce = (F.softplus(logits) - logits * h).sum()
    l2 = 0.5 * model.U.pow(2).sum() + 0.5 * model.W.pow(2).sum()
    total = rec + cfg.entropy_weight * ce + cfg.l2_weight * l2
    zero = torch.zeros((), device=x.device)
    parts = torch.stack([total, rec, cfg.entropy_weight * ce, zero, zero]).detach() / len(x)
    return Loss(total, parts, None)


def adversary_step(lam: torch.Tensor, redundancy: torch.Tensor | None, lr: float) -> None:
    """Projected gradient ascent of sum_j lambda_j r_j over lambda >= 0 (in place)."""
    if redundancy is not None:
        lam.add_(lr * redundancy).clamp_(min=0.0)
