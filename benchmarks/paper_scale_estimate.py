"""Training time of the paper-scale reproduction (one seed), from step rates measured now, beside the
floor of ``gemm_floor.py`` measured in the same run.

For each training stage (E1: SGH + R-SGH on MNIST, 50 epochs; E2: SGH + R-SGH on 59,000 GIST-512
vectors at 32, 64 and 128 bits, 200 epochs) this times, on random inputs of the stage's shape, one
thread each: the stage's matrix products alone (the floor, right before and right after, the faster
kept), rsgh's compiled training step (``rsgh.train.step.make_step``, ``Runtime.compile_step``) for
the pair as one lock-step group and for a lone model, and optionally (``--eager``) the eager step.
The split of each stage (one group, or its models in parallel processes) is chosen from these rates
(``rsgh.train.step.best_splits``); the parts are then scheduled on ``--cores`` longest first, as
``rsgh.book.schedule`` runs them on a Dask cluster, with each part's warm-up (its compilation). The
floor is the stages' pairs' products scheduled on the same cores. GIST features, baselines and
evaluations are not included (``paper_scale_run.py`` measures everything end to end).

    python benchmarks/paper_scale_estimate.py [--seconds 3] [--cores 2] [--eager]
                                              [--bits 32 64 128] [--e2-epochs 200] [--e1-epochs 50]

On a machine that other jobs share, the absolute times are slower than a quiet machine's; the ratio
of estimate to floor, both measured in this run, much less so. Ends with
``estimate_vs_floor=<ratio>``.
"""

import argparse

import torch

from rsgh.config import Runtime
from rsgh.train.step import best_splits, makespan, part_durations, step_rate
from stages import floor_rate, stage_setup, stages  # benchmarks/ is on sys.path when run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="timing of each measurement")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--eager", action="store_true", help="also time the eager step (pairs)")
    p.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--e2-epochs", type=int, default=200)
    p.add_argument("--e1-epochs", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    compiled, eager = Runtime(progress=False, compile_step=True, device="cpu"), Runtime(progress=False, device="cpu")
    floor_min, rows, eager_min = [], [], []
    print(f"{'stage':24s} {'floor':>8s} {'pair':>8s} {'lone':>8s}  (ms per step of the group, one thread)")
    for name, presets, overrides, dim, items, epochs in stages(args.bits, args.e2_epochs, args.e1_epochs):
        cfgs, steps = stage_setup(presets, overrides, items, epochs)
        before = floor_rate(cfgs, dim, args.seconds)[0]
        pair, warm2 = step_rate(cfgs, dim, compiled, args.seconds)
        lone, warm1 = step_rate(cfgs[:1], dim, compiled, args.seconds)
        after = floor_rate(cfgs, dim, args.seconds)[0]
        floor = max(before, after)  # the faster floor: the ratio is not flattered by a slow moment
        floor_min.append(steps / floor / 60)
        rows.append((name, steps, {2: pair, 1: lone}, {2: warm2, 1: warm1}))
        line = (f"{name:24s} {1e3 / floor:8.3f} {2e3 / pair:8.3f} {1e3 / lone:8.3f}  pair/floor "
                f"{floor * 2 / pair:4.2f}  (floor before/after {1e3 / before:.3f}/{1e3 / after:.3f}; "
                f"compile {warm2:.0f} s, {warm1:.0f} s)")
        if args.eager:
            rate = step_rate(cfgs, dim, eager, args.seconds)[0]
            eager_min.append(steps * 2 / rate / 60)
            line += f"  eager pair {2e3 / rate:.3f}"
        print(line, flush=True)
    parts = best_splits([(2, steps, rates, warm) for _, steps, rates, warm in rows], args.cores)
    units = []
    for (name, steps, rates, warm), k in zip(rows, parts):
        minutes = [d / 60 for d in part_durations(2, steps, k, rates, warm)]
        units += minutes
        print(f"{name:24s} {'one group of 2' if k == 1 else f'{k} lone models':16s} "
              f"{' + '.join(f'{m:.1f}' for m in minutes)} min")
    wall, floor_wall = makespan(units, args.cores), makespan(floor_min, args.cores)
    print(f"compiled: {sum(units):.1f} CPU min; on {args.cores} cores {wall:.1f} min wall")
    print(f"floor:    {sum(floor_min):.1f} CPU min; on {args.cores} cores {floor_wall:.1f} min wall")
    if eager_min:
        print(f"eager (pairs): {sum(eager_min):.1f} CPU min; on {args.cores} cores "
              f"{makespan(eager_min, args.cores):.1f} min wall")
        print(f"compiled_vs_eager={makespan(eager_min, args.cores) / wall:.2f}")
    print(f"paper_scale_wall_min={wall:.2f}")
    print(f"gemm_floor_wall_min={floor_wall:.2f}")
    print(f"estimate_vs_floor={wall / floor_wall:.2f}")


if __name__ == "__main__":
    main()
