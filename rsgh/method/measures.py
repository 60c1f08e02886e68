"""Measurements of a trained model on an evaluation set (SPEC section 5).

Reconstruction uses the deterministic hash ``h = 1[pi(x) >= 0.5]``. Collapse statistics:
activity ``A_j = Var_x[pi_j(x)]`` with the counts of active units (A_j > 0.01, > 0.05), the
per-dimension KL to the prior, bit balance (fraction of ones), and the mean absolute
correlation between bits.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import HashModel
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
        sse += (xb - x_hat).double().pow(2).sum(dim=(1, 2))
        pis.append(torch.sigmoid(logits).double())
        codes.append(h)
        kls.append(bernoulli_kl(logits.double(), prior).sum(1))
    pi = torch.cat(pis, dim=1)
    h = torch.cat(codes, dim=1).double()
    activity = pi.var(dim=1, unbiased=False).cpu().numpy()
    kl = (torch.stack(kls).sum(0) / n).cpu().numpy()
    balance = h.mean(dim=1).cpu().numpy()
    h_np = h.cpu().numpy()
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
            "bit_corr_mean": mean_abs_correlation(h_np[g]),
        }
        out.append((scalars, {"activity": activity[g], "kl": kl[g], "balance": balance[g]}))
    return out


def mean_abs_correlation(codes: np.ndarray) -> float:
    """Mean |Pearson correlation| over pairs of bits that are not constant.

    A constant bit has no correlation; its pairs are left out (``constant_bits`` counts them).
    NaN when fewer than two bits vary.
    """
    codes = np.asarray(codes, dtype=np.float64)
    varying = codes.std(axis=0) > 0
    if varying.sum() < 2:
        return float("nan")
    corr = np.corrcoef(codes[:, varying], rowvar=False)
    upper = np.triu_indices(corr.shape[0], k=1)
    return float(np.abs(corr[upper]).mean())
