import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, kl_divergence

from rsgh.config import make_config
from rsgh.model import HashModel
from rsgh.objective import adversary_step, bernoulli_kl, compute_loss, redundancy_degree


@pytest.mark.parametrize("prior", [0.5, 0.2, 0.9])
def test_kl_against_torch_distributions_and_direct_sum(prior):
    logits = torch.linspace(-8, 8, 33, dtype=torch.float64)
    pi = torch.sigmoid(logits)
    direct = pi * torch.log(pi / prior) + (1 - pi) * torch.log((1 - pi) / (1 - prior))
    ref = kl_divergence(Bernoulli(probs=pi), Bernoulli(probs=torch.full_like(pi, prior)))
    torch.testing.assert_close(bernoulli_kl(logits, prior), direct)
    torch.testing.assert_close(bernoulli_kl(logits, prior), ref)


def test_kl_is_finite_and_right_at_saturation():
    kl = bernoulli_kl(torch.tensor([-200.0, 200.0]), 0.5)
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl, torch.full((2,), math.log(2.0)))


def test_redundancy_degrees_against_numpy():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.standard_normal((50, 6)) * 2)
    pi = 1 / (1 + np.exp(-logits.numpy()))
    cfg = make_config("e1-rsgh", dict(bits=6, tau=0.05))
    np.testing.assert_allclose(redundancy_degree(logits, cfg).numpy(), 0.05 - pi.var(axis=0), rtol=1e-10)
    cfg = make_config("e1-rsgh", dict(bits=6, redundancy="kl"))
    kl = (pi * np.log(pi / 0.5) + (1 - pi) * np.log((1 - pi) / 0.5)).mean(0)
    np.testing.assert_allclose(redundancy_degree(logits, cfg).numpy(), 0.05 - kl, rtol=1e-8)
    cfg = make_config("e1-rsgh", dict(bits=6, redundancy="correlation"))
    c = np.abs(np.corrcoef(pi, rowvar=False))
    np.fill_diagonal(c, 0)
    np.testing.assert_allclose(redundancy_degree(logits, cfg).numpy(), c.sum(1) / 5 - 0.05, rtol=1e-5)


def test_adversary_projected_ascent():
    lam = torch.tensor([0.0, 0.5, 0.01])
    adversary_step(lam, torch.tensor([1.0, -1.0, -2.0]), 0.1)
    torch.testing.assert_close(lam, torch.tensor([0.1, 0.4, 0.0]))


def test_rsgh_adds_exactly_the_two_weighted_terms():
    torch.manual_seed(0)
    model = HashModel(7, 4, 1)
    x, xi = torch.rand(9, 7), torch.rand(9, 4)
    lam = torch.rand(4)
    sgh = compute_loss(model, x, xi, make_config("e1-sgh", dict(bits=4)), lam)
    cfg = make_config("e1-rsgh", dict(bits=4, delta=0.3, eta=0.2))
    rsgh = compute_loss(model, x, xi, cfg, lam)
    logits, _ = model.encode(x)
    h = (torch.sigmoid(logits) >= xi).float()
    _, g = model.decode(h)
    tie = (h - g).pow(2).sum(1).mean()
    red = (lam * (0.05 - torch.sigmoid(logits).var(0, unbiased=False))).sum()
    torch.testing.assert_close(rsgh.total, sgh.total + 0.3 * tie + 0.2 * red)


def test_reference_loss_and_gradient_against_numpy():
    """The published code's loss, and its gradient d logit = pi(1-pi)(dL/dh) + alpha (pi - h)."""
    torch.manual_seed(0)
    x = torch.rand(6, 10, dtype=torch.float64)
    model = HashModel(10, 4, 0, "reference", x.mean(0), x.var(0, unbiased=False)).double()
    cfg = make_config("sgh-reference", dict(bits=4))
    xi = torch.full((6, 4), 0.5, dtype=torch.float64)
    loss = compute_loss(model, x, xi, cfg, torch.zeros(4))
    loss.total.backward()
    W, b, U = model.W.detach().numpy(), model.b.detach().numpy(), model.U.detach().numpy()
    s, m, X = model.scale.detach().numpy(), model.shift.detach().numpy(), x.numpy()
    logits = X @ W + b
    pi = 1 / (1 + np.exp(-logits))
    h = (pi >= 0.5).astype(float)
    x_hat = (h @ U) * np.abs(s) + m
    ce = np.log1p(np.exp(logits)) - logits * h
    expected = 0.5 * ((X - x_hat) ** 2).sum() + 1e-3 * ce.sum() + 1e-3 * 0.5 * ((U ** 2).sum() + (W ** 2).sum())
    assert abs(float(loss.total.detach()) - expected) < 1e-9
    dl_dh = -((X - x_hat) * np.abs(s)) @ U.T - 1e-3 * logits
    dl_dlogit = pi * (1 - pi) * dl_dh + 1e-3 * (pi - h)
    np.testing.assert_allclose(model.b.grad.numpy(), dl_dlogit.sum(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.W.grad.numpy(), X.T @ dl_dlogit + 1e-3 * W, rtol=1e-9, atol=1e-12)


def test_reference_initialisation():
    torch.manual_seed(0)
    x = torch.rand(1000, 50)
    x[:, 0] = 0.3  # a constant pixel: its variance is clipped at 1e-7
    model = HashModel(50, 64, 0, "reference", x.mean(0), x.var(0, unbiased=False))
    torch.testing.assert_close(model.shift.data, x.mean(0))
    assert float(model.scale.detach()[0]) == pytest.approx(1e-7)
    torch.testing.assert_close(model.scale.data[1:], x.var(0, unbiased=False)[1:])
    assert abs(float(model.W.std()) - 1 / math.sqrt(50)) < 0.01
    assert abs(float(model.U.std()) - 1 / math.sqrt(64)) < 0.01
    assert abs(float(model.b.std()) - 1.0) < 0.3
