"""How fast could the paper-scale training be on this core? The matrix products alone.

A training step of a pair of models (SGH + R-SGH, one lock-step group) multiplies, for each of the
2(M + 1) linear layers, the batch by the weights (forward), the gradient by the weights (backward,
except into the data) and the activations by the gradient (the weights' gradient). This times
exactly those batched products (``torch.bmm``), with nothing else: no nonlinearity, sampling, loss,
optimizer or framework overhead, one thread. Their time times the steps the patents' settings need
is a floor under any implementation of the same fp32 arithmetic through the same GEMM library on
this core; ``paper_scale_estimate.py`` and ``paper_scale_run.py`` measure it again in their own run.

    python benchmarks/gemm_floor.py [--seconds 3] [--cores 2]

Ends with ``gemm_floor_wall_min=<minutes>``: that floor, the stages (one pair each) scheduled on
``--cores`` longest first.
"""

import argparse

import torch

from rsgh.train.step import makespan
from stages import STAGES, floor_rate, stage_setup  # benchmarks/ is on sys.path when run


def floor_minutes(stage_list, seconds: float) -> list[float]:
    """Minutes of products of each stage's pair (one thread), printed one line a stage."""
    torch.set_num_threads(1)
    minutes = []
    for name, presets, overrides, dim, items, epochs in stage_list:
        cfgs, steps = stage_setup(presets, overrides, items, epochs)
        rate, flops = floor_rate(cfgs, dim, seconds)
        minutes.append(steps / rate / 60)
        print(f"floor {name:24s} {1e3 / rate:6.3f} ms/step of products ({flops / 1e6:5.1f} MFLOP, "
            f"{flops * rate / 1e9:5.1f} GFLOP/s)  {steps:7d} steps  {minutes[-1]:5.1f} min")
    return minutes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    minutes = floor_minutes(STAGES, args.seconds)
    wall = makespan(minutes, args.cores)
    print(f"total {sum(minutes):.1f} CPU min; on {args.cores} cores {wall:.1f} min wall")
    print(f"gemm_floor_wall_min={wall:.2f}")


if __name__ == "__main__":
    main()
