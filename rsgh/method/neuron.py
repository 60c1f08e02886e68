"""The stochastic binary neuron of SGH and its two gradient estimators (SPEC section 2).

Forward: ``h = 1[pi >= xi]`` with ``pi = sigmoid(logits)``; ``xi ~ U(0, 1)`` while training
and ``xi = 0.5`` for the deterministic hash function.

Backward, for the loss ``f(h)`` that the code feeds (reconstruction, tie term):

- ``approximate`` (default): straight-through scaled by the sigmoid derivative,
  ``d f / d logit_k = pi_k (1 - pi_k) * d f / d h_k`` at the sampled ``h``;
- ``distributional`` (unbiased): ``d f / d h_k`` is replaced by the finite difference
  ``f(h with h_k = 1) - f(h with h_k = 0)``. Its expectation over ``h ~ Bern(pi)`` is exactly the
  gradient of ``E_h[f(h)]`` with respect to the logits.

The approximate estimator is an autograd Function; the distributional one is a surrogate term
(:func:`distributional_surrogate`) whose gradient is the estimator and whose value is zero.
"""

from __future__ import annotations

from typing import Callable

import torch


class _StochasticBinary(torch.autograd.Function):
    """h = 1[sigmoid(logits) >= xi]; backward: pi (1 - pi) * grad_h (the SGH approximation)."""

    # New-style Function (forward without ctx) so that torch.func.vmap can batch it.
    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits) >= xi).to(logits.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, _ = inputs
        ctx.save_for_backward(logits)

    @staticmethod
    def backward(ctx, grad_h):
        (logits,) = ctx.saved_tensors
        pi = torch.sigmoid(logits)
        return grad_h * pi * (1.0 - pi), None


def binary_sample(logits: torch.Tensor, xi: torch.Tensor, straight_through: bool = True) -> torch.Tensor:
    """Sample codes ``1[sigmoid(logits) >= xi]``.

    With ``straight_through`` the result carries the approximate SGH gradient to the logits;
    otherwise it is detached (the distributional estimator adds its own surrogate).
    """
    if straight_through:
        return _StochasticBinary.apply(logits, xi)
    return (torch.sigmoid(logits) >= xi).to(logits.dtype).detach()


def hash_codes(logits: torch.Tensor) -> torch.Tensor:
    """The deterministic hash function: ``1[sigmoid(logits) >= 0.5]`` (i.e. ``logits >= 0``)."""
    return (logits >= 0).to(torch.uint8)


def flip_differences(h: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``f(h with h_k = 1) - f(h with h_k = 0)`` for every sample and every bit k.

    ``h``: codes of shape (B, K). ``f`` maps codes of shape (B, m, K) (m variants of each
    sample's code) to losses of shape (B, m). Returns (B, K). Costs 2K evaluations of the
    per-sample loss, done as one batch.
    """
    k = h.shape[-1]
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    h_rep = h.unsqueeze(-2).expand(*h.shape[:-1], k, k)
    on = torch.maximum(h_rep, eye)  # row k: bit k forced to 1
    off = h_rep * (1 - eye)  # row k: bit k forced to 0
    values = f(torch.cat([on, off], dim=-2))
    return values[..., :k] - values[..., k:]


def distributional_surrogate(logits: torch.Tensor, differences: torch.Tensor) -> torch.Tensor:
    """Per-sample term of value 0 whose gradient w.r.t. the logits is ``pi (1 - pi) * differences``.

    ``d/d logit (pi * c) = pi (1 - pi) c`` for a constant ``c``; subtracting the detached value
    keeps the reported loss unchanged.
    """
    pi = torch.sigmoid(logits)
    term = (pi * differences.detach()).sum(-1)
    return term - term.detach()
