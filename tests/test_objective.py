import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, kl_divergence

from rsgh.config import make_config
from rsgh.method.model import HashModel
from rsgh.method.objective import GroupSpec, adversary_step, bernoulli_kl, compute_loss, redundancy_degree


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
    """Three models of one group, one per reading, each against its own numpy computation."""
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.standard_normal((3, 50, 6)) * 2)
    pi = 1 / (1 + np.exp(-logits.numpy()))
    spec = GroupSpec.from_configs([make_config("e1-rsgh", dict(bits=6, redundancy=r, tau=t))
                                   for r, t in (("activity", 0.05), ("kl", 0.1), ("correlation", 0.2))],
                                  dtype=torch.float64)
    got = redundancy_degree(logits, spec).numpy()
    np.testing.assert_allclose(got[0], 0.05 - pi[0].var(axis=0), rtol=1e-10)
    kl = (pi[1] * np.log(pi[1] / 0.5) + (1 - pi[1]) * np.log((1 - pi[1]) / 0.5)).mean(0)
    np.testing.assert_allclose(got[1], 0.1 - kl, rtol=1e-8)
    c = np.abs(np.corrcoef(pi[2], rowvar=False))
    np.fill_diagonal(c, 0)
    np.testing.assert_allclose(got[2], c.sum(1) / 5 - 0.2, rtol=1e-5)


def test_adversary_projected_ascent():
    spec = GroupSpec.from_configs([make_config("e1-rsgh", dict(adv_lr=0.1)), make_config("e1-sgh")])
    lam = torch.tensor([[0.0, 0.5, 0.01], [0.0, 0.0, 0.0]])
    adversary_step(lam, torch.tensor([[1.0, -1.0, -2.0], [1.0, 1.0, 1.0]]), spec)
    torch.testing.assert_close(lam, torch.tensor([[0.1, 0.4, 0.0], [0.0, 0.0, 0.0]]))  # SGH has no adversary


def test_rsgh_adds_exactly_the_two_weighted_terms():
    torch.manual_seed(0)
    model = HashModel(7, 4, 1)
    x, xi = torch.rand(9, 7), torch.rand(1, 9, 4)
    lam = torch.rand(1, 4)

    def loss(cfg):
        return compute_loss(model, x, xi, GroupSpec.from_configs([cfg]), lam).total

    sgh = loss(make_config("e1-sgh", dict(bits=4)))
    rsgh = loss(make_config("e1-rsgh", dict(bits=4, delta=0.3, eta=0.2)))
    logits, _ = model.encode(x)
    h = (torch.sigmoid(logits) >= xi).float()
    _, g = model.decode(h)
    tie = (h - g).pow(2).sum(-1).mean()
    red = (lam * (0.05 - torch.sigmoid(logits[0]).var(0, unbiased=False))).sum()
    torch.testing.assert_close(rsgh, sgh + 0.3 * tie + 0.2 * red)
    # the encoder reading ties h to the encoder's last hidden layer instead
    enc = loss(make_config("e1-rsgh", dict(bits=4, delta=0.3, eta=0.2, tie_target="encoder")))
    _, a = model.encode(x)
    torch.testing.assert_close(enc, sgh + 0.3 * (h - a).pow(2).sum(-1).mean() + 0.2 * red)


def test_models_of_a_group_get_their_own_losses():
    """A group's per-model losses equal each model's loss computed alone."""
    cfgs = [make_config("e1-sgh", dict(bits=4, seed=0)),
            make_config("e1-rsgh", dict(bits=4, seed=1, tie_target="encoder", prior=0.3)),
            make_config("e1-rsgh", dict(bits=4, seed=2, redundancy="correlation", coupling="step_sizes",
                                        delta=0.001))]  # model lr 1e-3 like the others
    group = HashModel(7, 4, 1, seeds=[0, 1, 2])
    x, xi, lam = torch.rand(9, 7), torch.rand(3, 9, 4), torch.rand(3, 4)
    together = compute_loss(group, x, xi, GroupSpec.from_configs(cfgs), lam)
    for g, cfg in enumerate(cfgs):
        alone = HashModel(7, 4, 1, seeds=[cfg.seed])
        alone.load_members([group.member_state(g)])
        single = compute_loss(alone, x, xi[g:g + 1], GroupSpec.from_configs([cfg]), lam[g:g + 1])
        torch.testing.assert_close(together.parts[g], single.parts[0])


def test_reference_loss_and_gradient_against_numpy():
    """The published code's loss, and its gradient d logit = pi(1-pi)(dL/dh) + alpha (pi - h)."""
    torch.manual_seed(0)
    x = torch.rand(6, 10, dtype=torch.float64)
    model = HashModel(10, 4, 0, "reference", [0], x.mean(0), x.var(0, unbiased=False)).double()
    cfg = make_config("sgh-reference", dict(bits=4))
    xi = torch.full((1, 6, 4), 0.5, dtype=torch.float64)
    loss = compute_loss(model, x, xi, GroupSpec.from_configs([cfg], dtype=torch.float64), torch.zeros(1, 4))
    loss.total.backward()
    p = {k: v.detach()[0].numpy() for k, v in model.params.items()}
    W, b, U, s, m, X = p["W"], p["b"][0], p["U"], p["scale"][0], p["shift"][0], x.numpy()
    logits = X @ W + b
    pi = 1 / (1 + np.exp(-logits))
    h = (pi >= 0.5).astype(float)
    x_hat = (h @ U) * np.abs(s) + m
    ce = np.log1p(np.exp(logits)) - logits * h
    expected = 0.5 * ((X - x_hat) ** 2).sum() + 1e-3 * ce.sum() + 1e-3 * 0.5 * ((U ** 2).sum() + (W ** 2).sum())
    assert abs(float(loss.total.detach()) - expected) < 1e-9
    dl_dh = -((X - x_hat) * np.abs(s)) @ U.T - 1e-3 * logits
    dl_dlogit = pi * (1 - pi) * dl_dh + 1e-3 * (pi - h)
    np.testing.assert_allclose(model.params["b"].grad[0, 0].numpy(), dl_dlogit.sum(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.params["W"].grad[0].numpy(), X.T @ dl_dlogit + 1e-3 * W, rtol=1e-9, atol=1e-12)


def test_reference_initialisation():
    torch.manual_seed(0)
    x = torch.rand(1000, 50)
    x[:, 0] = 0.3  # a constant pixel: its variance is clipped at 1e-7
    model = HashModel(50, 64, 0, "reference", [0], x.mean(0), x.var(0, unbiased=False))
    p = model.member_state(0)
    torch.testing.assert_close(p["shift"][0], x.mean(0))
    assert float(p["scale"][0, 0]) == pytest.approx(1e-7)
    torch.testing.assert_close(p["scale"][0, 1:], x.var(0, unbiased=False)[1:])
    assert abs(float(p["W"].std()) - 1 / math.sqrt(50)) < 0.01
    assert abs(float(p["U"].std()) - 1 / math.sqrt(64)) < 0.01
    assert abs(float(p["b"].std()) - 1.0) < 0.3
