"""Measurements of a trained model on an evaluation set (SPEC section 5).

Reconstruction uses the deterministic hash ``h = 1[pi(x) >= 0.5]``. Collapse statistics:
activity ``A_j = Var_x[pi_j(x)]`` with the counts of active units (A_j > 0.01, > 0.05), the
per-dimension KL to the prior, bit balance (fraction of ones), and the mean absolute
correlation between bits.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import HashModel, group_matmul
from .neuron import hash_codes
from .objective import bernoulli_kl


@torch.no_grad()
def evaluate(model: HashModel, x: torch.Tensor, priors: list[float],
             batch_size: int = 4096) -> list[tuple[dict, dict]]:
    """For every model of the group: scalar measures (one row of metrics.csv) and per-bit
    arrays (activity, kl, balance)."""
    g_count = model.groups
    n, d = x.shape
    prior = torch.tensor(priors, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
    sse = torch.zeros(g_count, dtype=torch.float64, device=x.device)
    pis, codes, kls = [], [], []
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size]
        logits, _ = model.encode(xb)
        h = hash_codes(logits)
        x_hat, _ = model.decode(h.to(xb.dtype))
        # Squared errors in float32 summed per image, then in float64 over the images: within 1e-9 of
        # an all-float64 sum, and a float64 copy of every pixel cost more than the products. The KL
        # terms stay in float64 (near the prior they cancel: float32 moved their sum by 1e-6).
        sse += (x_hat - xb).square_().sum(-1).double().sum(1)
        pis.append(torch.sigmoid(logits).double())
        codes.append(h)
        kls.append(bernoulli_kl(logits.double(), prior).sum(1))
    pi = torch.cat(pis, dim=1)
    h = torch.cat(codes, dim=1)
    activity = pi.var(dim=1, unbiased=False).cpu().numpy()
    kl = (torch.stack(kls).sum(0) / n).cpu().numpy()
    balance = (h.sum(1, dtype=torch.float64) / n).cpu().numpy()
    out = []
    for g in range(g_count):
        scalars = {
            "recon_mse": float(sse[g]) / (n * d),
            "recon_half_sse": 0.5 * float(sse[g]) / n,
            "active_units_001": int((activity[g] > 0.01).sum()),
            "active_units_005": int((activity[g] > 0.05).sum()),
            "mean_kl": float(kl[g].mean()),
            "kl_total": float(kl[g].sum()),
            "bit_balance_min": float(np.minimum(balance[g], 1 - balance[g]).min()),
            "constant_bits": int(((balance[g] == 0) | (balance[g] == 1)).sum()),
            "bit_corr_mean": mean_abs_correlation(h[g]),
        }
        out.append((scalars, {"activity": activity[g], "kl": kl[g], "balance": balance[g]}))
    return out


def mean_abs_correlation(codes: np.ndarray | torch.Tensor) -> float:
    """Mean |Pearson correlation| over pairs of bits that are not constant, for {0, 1} codes (n, K).

    A constant bit has no correlation; its pairs are left out (``constant_bits`` counts them).
    NaN when fewer than two bits vary.

    Computed from the counts of ones and of joint ones (a Gram matrix of the codes), which are
    integers and so exact in float32 below 2**24 images: 10 times faster than ``np.corrcoef`` in
    float64 at 60,000 images, and equal to it within rounding.
    """
    c = torch.as_tensor(codes)
    if c.dim() != 2 or not bool(((c == 0) | (c == 1)).all()):
        raise ValueError(f"expected codes of 0 and 1 in an (n, K) array, got shape {tuple(c.shape)} "
                         f"with values {torch.unique(c)[:5].tolist()}...")
    n = c.shape[0]
    c = c.to(torch.float32 if n < 2 ** 24 else torch.float64)
    ones = c.sum(0, dtype=torch.float64)
    varying = (ones > 0) & (ones < n)
    if int(varying.sum()) < 2:
        return float("nan")
    c, ones = c[:, varying], ones[varying]
    mean = ones / n
    cov = (c.T @ c).double() / n - torch.outer(mean, mean)
    sd = cov.diagonal().sqrt()
    corr = cov / torch.outer(sd, sd)
    upper = torch.triu_indices(len(sd), len(sd), offset=1)
    return float(corr[upper[0], upper[1]].abs().mean())


@torch.no_grad()
def dead_units(model: HashModel, x: torch.Tensor, batch_size: int = 8192) -> list[list[float]]:
    """Per model of the group, per hidden ReLU layer of the encoder: the fraction of its units that output
    0 for every row of ``x``. A dead unit passes no gradient and never revives; when a layer is wholly dead,
    the codes no longer depend on the image (a run that never trains). Empty lists for the linear model."""
    if model.arch == "reference":
        return [[] for _ in range(model.groups)]
    n = len(model.layer_sizes["enc"])
    alive = [torch.zeros(model.groups, model.params[f"enc{i}_weight"].shape[-1], dtype=torch.bool)
             for i in range(n - 1)]
    for start in range(0, len(x), batch_size):
        h = x[start:start + batch_size]
        for i in range(n - 1):
            h = torch.relu(group_matmul(h, model.params[f"enc{i}_weight"], model.params[f"enc{i}_bias"]))
            alive[i] |= (h > 0).any(dim=1).cpu()
    return [[float(1 - a[g].float().mean()) for a in alive] for g in range(model.groups)]
