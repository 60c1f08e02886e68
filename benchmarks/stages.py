"""What the speed benchmarks share: the training stages of the one-seed paper-scale reproduction,
the steps the patents' settings need and the matrix products of a step (the floor). Rates are timed
by ``rsgh.train.step.timed_rate`` and ``timed_rates`` (in turns).

Run from the repository root (``python benchmarks/<script>.py``): ``benchmarks/`` is then on
``sys.path`` and the scripts import this module by name.
"""

from __future__ import annotations

import torch

from rsgh.config import make_config
from rsgh.train.step import timed_rate

STAGES = [  # name, presets, overrides, input dimension, training items, epochs
    ("E1 (MNIST, K=64, M=1)", ("e1-sgh", "e1-rsgh"), {}, 784, 60000, 50),
    ("E2 32 bits", ("e2-sgh", "e2-rsgh"), {"bits": 32}, 512, 59000, 200),
    ("E2 64 bits", ("e2-sgh", "e2-rsgh"), {"bits": 64}, 512, 59000, 200),
    ("E2 128 bits", ("e2-sgh", "e2-rsgh"), {"bits": 128}, 512, 59000, 200),
]


def stages(bits=(32, 64, 128), e2_epochs: int = 200, e1_epochs: int = 50):
    """STAGES at other code lengths or epochs (a toy run of the benchmarks): E2 longest code first, E1 last."""
    out = [(f"E2 {b} bits", ("e2-sgh", "e2-rsgh"), {"bits": b}, 512, 59000, e2_epochs) for b in sorted(bits)[::-1]]
    return out + ([STAGES[0][:5] + (e1_epochs,)] if e1_epochs else [])


def stage_setup(presets, overrides, items, epochs):
    """A stage's configurations (one model per preset) and the training steps of each model."""
    cfgs = [make_config(p, dict(overrides, seed=g, epochs=epochs)) for g, p in enumerate(presets)]
    return cfgs, items // cfgs[0].batch_size * epochs


def layer_dims(dim, bits, hidden_layers):
    """(in, out) of each linear layer: encoder D -> K -> ... -> K, decoder K -> ... -> K -> D."""
    enc = [dim] + [bits] * (hidden_layers + 1)
    dec = [bits] * (hidden_layers + 1) + [dim]
    return list(zip(enc[:-1], enc[1:])) + list(zip(dec[:-1], dec[1:]))


def products(dims, group, batch):
    """A function doing one step's batched products (nothing else), and the step's floating-point
    operations: per layer the batch by the weights (forward), the activations by the gradient (the
    weights' gradient) and the gradient by the weights (backward; not into the data)."""
    ops, flops = [], 0
    for i, (n_in, n_out) in enumerate(dims):
        x, w, g = torch.randn(group, batch, n_in), torch.randn(group, n_in, n_out), torch.randn(group, batch, n_out)
        ops.append((x, w))
        ops.append((x.transpose(1, 2), g))
        flops += 2 * 2 * group * batch * n_in * n_out
        if i > 0:
            ops.append((g, w.transpose(1, 2)))
            flops += 2 * group * batch * n_in * n_out

    def step():
        for a, b in ops:
            torch.bmm(a, b)
    return step, flops


def floor_step(cfgs, dim):
    """A function doing the matrix products of one step of a stage's group (``cfgs``), and the step's
    floating-point operations (:func:`products` at the group's shape)."""
    c = cfgs[0]
    return products(layer_dims(dim, c.bits, c.hidden_layers), len(cfgs), c.batch_size)


def floor_rate(cfgs, dim, seconds: float) -> tuple[float, int]:
    """Steps per second of a stage's group (``cfgs``) if a step were its matrix products alone, one
    thread; and the step's floating-point operations."""
    step, flops = floor_step(cfgs, dim)
    return timed_rate(step, seconds)[0], flops


def adam_pass(cfgs, dim):
    """A function doing the optimizer's share of a stage's step: one update of ``torch.optim.Adam``'s
    fused kernel (``torch._fused_adam_``) of the group's parameters, as one flat tensor. It reads
    the weights, their gradient and the two moments and writes three of them back, so at batch 32
    its memory traffic is a sizable fraction of the products' time: the floor with it is the floor
    of any implementation of plain Adam on this core."""
    c = cfgs[0]
    params = len(cfgs) * sum(n_in * n_out + n_out for n_in, n_out in layer_dims(dim, c.bits, c.hidden_layers))
    w, g, m, v = (torch.rand(params) for _ in range(4))
    count = torch.tensor(1.0)

    def step():
        torch._fused_adam_([w], [g], [m], [v], [], [count], amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, maximize=False)
    return step

