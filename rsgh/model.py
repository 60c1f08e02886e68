"""Encoder and decoder of SGH / R-SGH (SPEC sections 2 and 3).

``arch='mlp'``: the encoder maps x through M ReLU layers of width K to K logits; the decoder
maps the code h through M ReLU layers of width K to the mean of the Gaussian p(x|h). The last
hidden layer on each side (``a_M(x)`` and ``g_M(h)``, width K) is what R-SGH's tie term uses.

``arch='reference'``: the linear SGH of the published code: logits = x W + b with
W ~ N(0, 1/D), b ~ N(0, 1); x_hat = (h U) * |s| + m with U ~ N(0, 1/K), s initialised to the
per-pixel training variance (clipped at 1e-7) and m to the per-pixel training mean.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .neuron import hash_codes


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear + ReLU for every step of ``sizes`` (so the output is a hidden layer)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class HashModel(nn.Module):
    def __init__(self, input_dim: int, bits: int, hidden_layers: int = 1, arch: str = "mlp",
                 data_mean: torch.Tensor | None = None, data_var: torch.Tensor | None = None):
        super().__init__()
        self.input_dim, self.bits, self.hidden_layers, self.arch = input_dim, bits, hidden_layers, arch
        if arch == "mlp":
            self.enc_hidden = _mlp([input_dim] + [bits] * hidden_layers)
            self.enc_out = nn.Linear(bits if hidden_layers else input_dim, bits)
            self.dec_hidden = _mlp([bits] * (hidden_layers + 1))
            self.dec_out = nn.Linear(bits, input_dim)
        elif arch == "reference":
            if data_mean is None or data_var is None:
                raise ValueError("arch='reference' needs the per-dimension training mean and variance")
            self.W = nn.Parameter(torch.randn(input_dim, bits) / math.sqrt(input_dim))
            self.b = nn.Parameter(torch.randn(bits))
            self.U = nn.Parameter(torch.randn(bits, input_dim) / math.sqrt(bits))
            self.scale = nn.Parameter(data_var.detach().clone().float().clamp_min(1e-7))
            self.shift = nn.Parameter(data_mean.detach().clone().float())
        else:
            raise ValueError(f"unknown arch {arch!r}: use 'mlp' or 'reference'")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of q(h|x) and the encoder's last hidden layer a_M(x) (None without one)."""
        if self.arch == "reference":
            return x @ self.W + self.b, None
        a = self.enc_hidden(x)
        return self.enc_out(a), (a if self.hidden_layers else None)

    def decode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean of p(x|h) and the decoder's last hidden layer g_M(h) (None without one).

        ``h`` may carry extra leading dimensions (the distributional estimator decodes
        many variants of each code at once)."""
        if self.arch == "reference":
            return (h @ self.U) * self.scale.abs() + self.shift, None
        g = self.dec_hidden(h)
        return self.dec_out(g), (g if self.hidden_layers else None)

    def check_input(self, x: torch.Tensor) -> None:
        """Clear errors for inputs this model cannot encode."""
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected inputs of shape (n, {self.input_dim}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(dim=1).sum())
            raise ValueError(f"{bad} input row(s) contain NaN or infinite values; clean the features first")

    @torch.no_grad()
    def hash(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """Deterministic codes 1[pi(x) >= 0.5] as uint8 (n, K)."""
        self.check_input(x)
        return torch.cat([hash_codes(self.encode(x[i:i + batch_size])[0])
                          for i in range(0, len(x), batch_size)])
