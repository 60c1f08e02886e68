"""The binary neuron's two gradient estimators against independent computations."""

import itertools

import pytest
import torch

from rsgh.config import make_config
from rsgh.method.model import HashModel
from rsgh.method.neuron import binary_sample, flip_differences, hash_codes
from rsgh.method.objective import GroupSpec, bernoulli_kl, compute_loss



@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _smooth_f(h, w, c):
    """A nonlinear function of a real-valued code, per sample."""
    return torch.tanh(h @ w).pow(2).sum(-1) + (h * c).sum(-1)


def test_forward_is_threshold():
    logits = torch.tensor([[-2.0, 0.0, 2.0]])
    assert binary_sample(logits, torch.tensor([[0.1, 0.5, 0.85]])).tolist() == [[1.0, 1.0, 1.0]]
    assert binary_sample(logits, torch.tensor([[0.2, 0.6, 0.95]])).tolist() == [[0.0, 0.0, 0.0]]
    assert hash_codes(logits).tolist() == [[0, 1, 1]]


def test_approximate_gradient_is_scaled_straight_through():
    """d f / d logit = pi (1 - pi) * d f / d h, with d f / d h from a central finite difference."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, generator=g, requires_grad=True)
    xi = torch.rand(4, 5, generator=g)
    w, c = torch.randn(5, 3, generator=g), torch.randn(5, generator=g)
    _smooth_f(binary_sample(logits, xi), w, c).sum().backward()
    h = (torch.sigmoid(logits) >= xi).double().detach()
    eps = 1e-6
    fd = torch.zeros_like(h)
    for k in range(5):
        e = torch.zeros(5)
        e[k] = eps
        fd[:, k] = (_smooth_f(h + e, w, c) - _smooth_f(h - e, w, c)) / (2 * eps)
    pi = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, pi * (1 - pi) * fd, rtol=1e-6, atol=1e-8)


def test_flip_differences_against_direct_evaluation():
    g = torch.Generator().manual_seed(2)
    h = (torch.rand(3, 4, generator=g) > 0.5).double()
    w, c = torch.randn(4, 2, generator=g), torch.randn(4, generator=g)
    got = flip_differences(h, lambda codes: _smooth_f(codes, w, c))
    for b in range(3):
        for k in range(4):
            on, off = h[b].clone(), h[b].clone()
            on[k], off[k] = 1, 0
            assert torch.isclose(got[b, k], _smooth_f(on, w, c) - _smooth_f(off, w, c))


def _all_codes(k):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)))


def _xi_forcing(code):
    """Thresholds that make the neuron output exactly ``code`` whatever pi is."""
    return torch.where(code > 0, torch.zeros_like(code), torch.full_like(code, 1.5))


def _expected_estimator_vs_exact(method, estimator, delta=0.0, tie_target="decoder"):
    """Average the estimator over every code (weighted by q(h|x)) and compare with the exact
    gradient of E_q[loss], obtained by autograd through the enumerated expectation."""
    torch.manual_seed(0)
    k, d = 3, 5
    cfg = make_config(None, dict(method=method, bits=k, hidden_layers=1, estimator=estimator,
                                 delta=delta, eta=0.0, tie_target=tie_target, prior=0.3))
    model = HashModel(d, k, 1).double()
    spec = GroupSpec.from_configs([cfg], dtype=torch.float64)
    x = torch.rand(1, d)
    lam = torch.zeros(1, k)
    params = list(model.parameters())

    # exact: E_q[rec + tie] + KL, enumerated over the 2^K codes
    logits, a = model.encode(x)
    pi = torch.sigmoid(logits)[0, 0]
    codes = _all_codes(k)
    prob = (codes * pi + (1 - codes) * (1 - pi)).prod(-1)
    x_hat, g = model.decode(codes[None])
    x_hat, g, a = x_hat[0], g[0], a[0]
    f = 0.5 * (x - x_hat).pow(2).sum(-1)
    if method == "rsgh":
        target = g if tie_target == "decoder" else a.expand(len(codes), -1)
        f = f + delta * (codes - target).pow(2).sum(-1)
    exact_obj = (prob * f).sum() + bernoulli_kl(logits, cfg.prior).sum()
    exact = torch.autograd.grad(exact_obj, params)

    expected = [torch.zeros_like(p) for p in params]
    for code, p in zip(codes, prob):
        loss = compute_loss(model, x, _xi_forcing(code)[None, None], spec, lam)
        grads = torch.autograd.grad(loss.total, params)
        for e, gr in zip(expected, grads):
            e += p.detach() * gr
    return exact, expected


def test_distributional_estimator_is_unbiased_sgh():
    exact, expected = _expected_estimator_vs_exact("sgh", "distributional")
    for a, b in zip(exact, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_distributional_estimator_is_unbiased_rsgh_tie_terms():
    for target in ("decoder", "encoder"):
        exact, expected = _expected_estimator_vs_exact("rsgh", "distributional", delta=0.7, tie_target=target)
        for a, b in zip(exact, expected):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_approximate_estimator_is_biased_for_a_nonlinear_decoder():
    """The check above has teeth: the approximate estimator fails it."""
    exact, expected = _expected_estimator_vs_exact("sgh", "approximate")
    assert max(float((a - b).abs().max()) for a, b in zip(exact, expected)) > 1e-4
