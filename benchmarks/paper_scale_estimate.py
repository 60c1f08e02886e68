"""Training time of the paper-scale reproduction (one seed), from the step rate measured now.

For each training stage (E1: SGH + R-SGH on MNIST, 50 epochs; E2: SGH + R-SGH on 59,000 GIST-512
vectors at 32, 64 and 128 bits, 200 epochs) this times rsgh's training step
(``rsgh.train.make_step``, the pair of models as one group, one thread) on random inputs of the
right shape for a few seconds, eager and compiled, and multiplies by the number of steps the
patents' settings need. The stages are then scheduled on the given number of cores (longest
first), as ``rsgh reproduce`` can run them in parallel processes. GIST features, baselines and
evaluations are not included (measured separately: ``gist_speed.py``; each is minutes at most).

    python benchmarks/paper_scale_estimate.py [--seconds 5] [--cores 2]

Ends with ``paper_scale_wall_min=<minutes>`` for the compiled step.
"""

import argparse
import time

import torch

from rsgh.config import make_config
from rsgh.model import HashModel
from rsgh.objective import GroupSpec
from rsgh.train import make_step
from train_throughput import timed_rate  # the sibling script (benchmarks/ is on sys.path when run)

STAGES = [  # name, presets, overrides, input dimension, training items, epochs
    ("E1 (MNIST, K=64, M=1)", ("e1-sgh", "e1-rsgh"), {}, 784, 60000, 50),
    ("E2 32 bits", ("e2-sgh", "e2-rsgh"), {"bits": 32}, 512, 59000, 200),
    ("E2 64 bits", ("e2-sgh", "e2-rsgh"), {"bits": 64}, 512, 59000, 200),
    ("E2 128 bits", ("e2-sgh", "e2-rsgh"), {"bits": 128}, 512, 59000, 200),
]


def stage_setup(presets, overrides, items, epochs):
    """A stage's configurations (one model per preset, on the CPU) and the training steps of each model."""
    cfgs = [make_config(p, dict(overrides, seed=g, device="cpu")) for g, p in enumerate(presets)]
    return cfgs, items // cfgs[0].batch_size * epochs


def steps_per_second(cfgs, dim, seconds, compiled):
    c = cfgs[0]
    spec = GroupSpec.from_configs(cfgs)
    model = HashModel(dim, c.bits, c.hidden_layers, c.arch, [x.seed for x in cfgs])
    opt = torch.optim.Adam(model.parameters(), lr=c.model_lr, fused=True)
    lam = torch.zeros(len(cfgs), c.bits)
    step = make_step(model, opt, spec, lam, compiled)
    x_all = torch.rand(20000, dim)
    g = len(cfgs)

    def one():
        step(x_all.index_select(0, torch.randint(len(x_all), (c.batch_size,))), torch.rand(g, c.batch_size, c.bits))

    t0 = time.perf_counter()
    for _ in range(10):  # compilation
        one()
    warm = time.perf_counter() - t0
    return timed_rate(one, seconds, torch.device("cpu")), warm


def schedule(durations, cores):
    """Longest-processing-time-first on ``cores`` workers: the finishing time."""
    loads = [0.0] * cores
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    totals = {}
    for compiled in (False, True):
        label = "compiled" if compiled else "eager"
        minutes = []
        for name, presets, overrides, dim, items, epochs in STAGES:
            cfgs, steps = stage_setup(presets, overrides, items, epochs)
            rate, warm = steps_per_second(cfgs, dim, args.seconds, compiled)
            minutes.append(steps / rate / 60 + warm / 60)
            print(f"{label:8s} {name:24s} {rate:6.0f} steps/s (pair)  {steps:7d} steps  "
                  f"{minutes[-1]:6.1f} min  (warm-up {warm:4.1f} s)", flush=True)
        cpu = sum(minutes)
        wall = schedule(minutes, args.cores)
        totals[label] = wall
        print(f"{label:8s} total {cpu:.1f} CPU min; on {args.cores} cores {wall:.1f} min wall\n", flush=True)
    print(f"compiled_vs_eager={totals['eager'] / totals['compiled']:.2f}")
    print(f"paper_scale_wall_min={totals['compiled']:.1f}")


if __name__ == "__main__":
    main()
