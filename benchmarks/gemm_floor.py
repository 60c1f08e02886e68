"""How fast could the paper-scale training be on this core? The matrix products alone.

A training step of a pair of models (SGH + R-SGH, one lock-step group) multiplies, for each of the
2(M + 1) linear layers, the batch by the weights (forward), the gradient by the weights (backward,
except into the data) and the activations by the gradient (the weights' gradient). This times
exactly those batched products, with nothing else: no nonlinearity, sampling, loss, optimizer or
framework overhead, one thread. Their time times the steps the patents' settings need is a floor
under any implementation of the same fp32 arithmetic on this core; ``paper_scale_estimate.py``
gives the measured step beside it.

    python benchmarks/gemm_floor.py [--seconds 3] [--cores 2]

Ends with ``gemm_floor_wall_min=<minutes>``: that floor, the stages scheduled on ``--cores``.
"""

import argparse

import torch

from paper_scale_estimate import STAGES, schedule, stage_setup  # sibling scripts (benchmarks/ is on sys.path when run)
from train_throughput import timed_rate


def layer_dims(dim, bits, hidden_layers):
    """(in, out) of each linear layer: encoder D -> K -> ... -> K, decoder K -> ... -> K -> D."""
    enc = [dim] + [bits] * (hidden_layers + 1)
    dec = [bits] * (hidden_layers + 1) + [dim]
    return list(zip(enc[:-1], enc[1:])) + list(zip(dec[:-1], dec[1:]))


def products(dims, group, batch):
    """A function doing one step's batched products, and the step's floating-point operations."""
    ops, flops = [], 0
    for i, (n_in, n_out) in enumerate(dims):
        x, w, g = torch.randn(group, batch, n_in), torch.randn(group, n_in, n_out), torch.randn(group, batch, n_out)
        ops.append((x, w))  # forward: x @ w
        ops.append((x.transpose(1, 2), g))  # the weights' gradient: x^T @ g
        flops += 2 * 2 * group * batch * n_in * n_out
        if i > 0:  # no gradient into the data (but into the code: the estimator needs it)
            ops.append((g, w.transpose(1, 2)))  # backward: g @ w^T
            flops += 2 * group * batch * n_in * n_out

    def step():
        for a, b in ops:
            torch.bmm(a, b)
    return step, flops


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    minutes = []
    for name, presets, overrides, dim, items, epochs in STAGES:
        cfgs, steps = stage_setup(presets, overrides, items, epochs)
        c = cfgs[0]
        step, flops = products(layer_dims(dim, c.bits, c.hidden_layers), len(cfgs), c.batch_size)
        rate = timed_rate(step, args.seconds, torch.device("cpu"))
        minutes.append(steps / rate / 60)
        print(f"{name:24s} {1e3 / rate:6.3f} ms/step of products ({flops / 1e6:5.1f} MFLOP, "
              f"{flops * rate / 1e9:5.1f} GFLOP/s)  {steps:7d} steps  {minutes[-1]:5.1f} min", flush=True)
    wall = schedule(minutes, args.cores)
    print(f"total {sum(minutes):.1f} CPU min; on {args.cores} cores {wall:.1f} min wall")
    print(f"gemm_floor_wall_min={wall:.1f}")


if __name__ == "__main__":
    main()
