"""Encoder and decoder of SGH / R-SGH (SPEC sections 2 and 3), for a group of G models at once.

Every parameter carries a leading group dimension G: a group of models with the same shapes
(and different seeds or objectives) runs as one batched computation (``torch.baddbmm``), which
is several times faster than G separate small networks. A single model is a group of one.

``arch='mlp'``: the encoder maps x through M ReLU layers to K logits; the decoder maps the code h
through M ReLU layers to the mean of the Gaussian p(x|h). The hidden layers are K wide (the
patents) or ``hidden_width`` wide, except the last hidden layer on each side (``a_M(x)`` and
``g_M(h)``), which is always K wide: it is what R-SGH's tie term compares with the code.
Each linear layer is initialised like ``torch.nn.Linear``: weight and bias ~ U(-1/sqrt(fan_in),
1/sqrt(fan_in)), from the model's own seed.

``arch='reference'``: the linear SGH of the published code: logits = x W + b with
W ~ N(0, 1/D), b ~ N(0, 1); x_hat = (h U) * |s| + m with U ~ N(0, 1/K), s initialised to the
per-pixel training variance (clipped at 1e-7) and m to the per-pixel training mean.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .neuron import hash_codes


def group_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight[g] + bias[g]`` for every model g.

    ``x``: (B, in), shared by the group, or (G, ..., in); ``weight``: (G, in, out);
    ``bias``: (G, 1, out). Returns (G, ..., out).
    """
    if x.dim() == 2 and weight.shape[0] > 1 and torch.compiler.is_compiling():
        # In a compiled step, G products with x shared (stride 0) rather than one with the weights
        # stacked side by side: no transposed copy of the weights, nor of their gradient for Adam
        # (measured: 10% of a compiled step of a pair at K=128, 3% at K=64)
        x = x.expand(weight.shape[0], *x.shape)
    if x.dim() == 2:
        # One (B, in) x (in, G*out) GEMM instead of G small ones: much faster on a CPU.
        g, fan_in, fan_out = weight.shape
        y = (x @ weight.transpose(0, 1).reshape(fan_in, g * fan_out)).reshape(len(x), g, fan_out).transpose(0, 1)
        return y if bias is None else y + bias
    lead = x.shape[1:-1]
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    if bias is None:
        y = torch.bmm(flat, weight)
    elif torch.compiler.is_compiling():
        # compiled, the bias is added in the elementwise loop that follows the product (the ReLU, the
        # loss); baddbmm would first copy it into the output and have the GEMM accumulate onto it
        # (measured in one process, in turns: 1-3% less time a step at 128 bits and for E1, 3-6% at 32 and 64)
        y = torch.bmm(flat, weight) + bias
    else:
        y = torch.baddbmm(bias, flat, weight)
    return y.reshape(x.shape[0], *lead, weight.shape[-1])


class HashModel(nn.Module):
    def __init__(self, input_dim: int, bits: int, hidden_layers: int = 1, arch: str = "mlp",
                 seeds: Sequence[int] = (0,), data_mean: torch.Tensor | None = None,
                 data_var: torch.Tensor | None = None, hidden_width: int = 0):
        super().__init__()
        self.input_dim, self.bits, self.hidden_layers, self.arch = input_dim, bits, hidden_layers, arch
        self.hidden_width = hidden_width
        self.groups = len(seeds)
        if arch == "mlp":
            # hidden layers of width W, except the last on each side: K wide, for the tie term
            inner = [hidden_width or bits] * max(hidden_layers - 1, 0) + [bits] * min(hidden_layers, 1)
            enc = [input_dim] + inner + [bits]
            dec = [bits] + inner + [input_dim]
            self.layer_sizes = {"enc": list(zip(enc[:-1], enc[1:])), "dec": list(zip(dec[:-1], dec[1:]))}
            shapes = {f"{side}{i}": s for side, sizes in self.layer_sizes.items() for i, s in enumerate(sizes)}
            members = [self._init_mlp(shapes, seed) for seed in seeds]
        elif arch == "reference":
            if data_mean is None or data_var is None:
                raise ValueError("arch='reference' needs the per-dimension training mean and variance")
            members = [self._init_reference(seed, data_mean, data_var) for seed in seeds]
        else:
            raise ValueError(f"unknown arch {arch!r}: use 'mlp' or 'reference'")
        self.params = nn.ParameterDict({name: nn.Parameter(torch.stack([m[name] for m in members]))
                                        for name in members[0]})

    @staticmethod
    def _init_mlp(shapes: dict, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        out = {}
        for name, (fan_in, fan_out) in shapes.items():
            bound = 1 / math.sqrt(fan_in)
            out[f"{name}_weight"] = (torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound
            out[f"{name}_bias"] = (torch.rand(1, fan_out, generator=g) * 2 - 1) * bound
        return out

    def _init_reference(self, seed: int, mean: torch.Tensor, var: torch.Tensor) -> dict:
        g = torch.Generator().manual_seed(seed)
        d, k = self.input_dim, self.bits
        return {"W": torch.randn(d, k, generator=g) / math.sqrt(d), "b": torch.randn(1, k, generator=g),
                "U": torch.randn(k, d, generator=g) / math.sqrt(k),
                "scale": var.detach().float().cpu().clamp_min(1e-7).reshape(1, d),
                "shift": mean.detach().float().cpu().reshape(1, d)}

    def _stack(self, x: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden ReLU layers then the output layer; returns (output, last hidden layer)."""
        n = len(self.layer_sizes[side])
        hidden = None
        for i in range(n):
            x = group_matmul(x, self.params[f"{side}{i}_weight"], self.params[f"{side}{i}_bias"])
            if i < n - 1:
                x = hidden = torch.relu(x)
        return x, hidden

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of q(h|x), (G, B, K), and the encoder's last hidden layer a_M(x) (None without one).

        ``x``: (B, D), shared by every model of the group, or (G, B, D)."""
        if self.arch == "reference":
            return group_matmul(x, self.params["W"], self.params["b"]), None
        return self._stack(x, "enc")

    def decode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean of p(x|h) and the decoder's last hidden layer g_M(h) (None without one).

        ``h``: (G, ..., K); extra dimensions are allowed (the distributional estimator decodes
        many variants of each code at once)."""
        if self.arch == "reference":
            p = self.params
            scale, shift = p["scale"].abs(), p["shift"]
            y = group_matmul(h, p["U"])
            shape = (self.groups,) + (1,) * (h.dim() - 2) + (self.input_dim,)
            return y * scale.reshape(shape) + shift.reshape(shape), None
        return self._stack(h, "dec")

    def check_input(self, x: torch.Tensor) -> None:
        """Clear errors for inputs this model cannot encode."""
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected inputs of shape (n, {self.input_dim}), got {tuple(x.shape)}")
        # the sum first: in IEEE arithmetic an inf or NaN never gives a finite sum (one that overflows is
        # checked element by element), and one pass without temporaries is 18x faster than isfinite(x)
        # (measured: 12 against 218 ms for CIFAR-10's database, half of a pair's hashing at every evaluation)
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(dim=1).sum())
            raise ValueError(f"{bad} input row(s) contain NaN or infinite values; clean the features first")

    @torch.no_grad()
    def hash(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """Deterministic codes 1[pi(x) >= 0.5] as uint8 (G, n, K)."""
        self.check_input(x)
        return torch.cat([hash_codes(self.encode(x[i:i + batch_size])[0])
                          for i in range(0, len(x), batch_size)], dim=1)

    def member_state(self, g: int) -> dict[str, torch.Tensor]:
        """The parameters of model g alone (no group dimension), for its run directory."""
        return {name: p.detach()[g].clone() for name, p in self.params.items()}

    def load_members(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Set every model's parameters from per-model states (the inverse of member_state)."""
        if len(states) != self.groups:
            raise ValueError(f"{len(states)} states for a group of {self.groups}")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(torch.stack([s[name] for s in states]).to(p.device))
