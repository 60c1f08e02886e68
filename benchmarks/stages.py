"""What the speed benchmarks share: the training stages of the one-seed paper-scale reproduction,
the steps the patents' settings need, the matrix products of a step (the floor) and how a rate is
timed on a machine that other jobs share.

Run from the repository root (``python benchmarks/<script>.py``): ``benchmarks/`` is then on
``sys.path`` and the scripts import this module by name.
"""

from __future__ import annotations

import time

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


def interleaved_rates(calls: dict, seconds: float, warmup: int = 10) -> dict:
    """Calls per second of each of ``calls`` (name -> function), timed in turns: a round of 10 calls
    of each, again and again for about ``seconds`` per function; the rate of each one's median round.
    On a virtual machine whose speed drifts by a factor of two within minutes, a ratio of two rates
    timed one after the other is not to be trusted; rates timed in turns share the machine's moods.
    Each round starts with 3 untimed calls: the first calls after a switch from another function
    find the caches cold (measured: the first call of a step 20-70% slower, the next two up to
    10%), most of all after the optimizer's pass (``adam_pass``), which streams megabytes through
    them; with no untimed call, a step timed right after it measured 4-7% slower than the same
    step timed after another step. Training calls one step after another."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    rounds = {name: [] for name in calls}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds * len(calls) or min(map(len, rounds.values())) < 5:
        for name, call in calls.items():
            for _ in range(3):
                call()
            t = time.perf_counter()
            for _ in range(10):
                call()
            rounds[name].append(time.perf_counter() - t)
    return {name: 10 / sorted(r)[len(r) // 2] for name, r in rounds.items()}
