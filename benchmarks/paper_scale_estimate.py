"""Training time of the paper-scale reproduction (one seed), from step rates measured now, beside the
floor of ``gemm_floor.py`` measured in the same run.

For each training stage (E1: SGH + R-SGH on MNIST, 50 epochs; E2: SGH + R-SGH on 59,000 GIST-512
vectors at 32, 64 and 128 bits, 200 epochs) this times, on random inputs of the stage's shape, one
thread each, in turns (rounds of 10 calls of each, again and again: ``rsgh.train.step.timed_rates``,
so that the machine's drifts fall on all of them alike): the stage's matrix products alone (the
floor), one fused Adam update of the pair's parameters (``stages.adam_pass``), rsgh's compiled
training step (``rsgh.train.step.make_step``, ``Runtime.compile_step``) for the pair as one
lock-step group and for each of its models alone, and optionally (``--eager``) the eager step.
The split of each stage (one group, or its models in parallel processes) is chosen from these rates
(``rsgh.train.step.best_splits``); the parts are then scheduled on ``--cores`` longest first, as
``rsgh.book.schedule`` runs them on a Dask cluster, with each part's warm-up (its compilation). The
floor is the stages' pairs' products scheduled on the same cores. GIST features, baselines and
evaluations are not included (``paper_scale_run.py`` measures everything end to end).

    python benchmarks/paper_scale_estimate.py [--seconds 3] [--cores 2] [--eager]
                                              [--bits 32 64 128] [--e2-epochs 200] [--e1-epochs 50]

On a machine that other jobs share, the absolute times are slower than a quiet machine's; the ratio
of estimate to floor, both measured in this run, much less so. Ends with
``estimate_vs_floor=<ratio>`` (over the products alone, ``gemm_floor.py``'s floor) and
``estimate_vs_floor_with_adam=<ratio>`` (over the products plus the optimizer's pass over the
weights and moments, which no implementation of plain Adam avoids).
"""

import argparse
import time

import torch

from rsgh.config import Runtime
from rsgh.train.step import best_splits, group_step, makespan, part_durations, timed_rates
from stages import adam_pass, floor_step, stage_setup, stages  # benchmarks/ is on sys.path


def warm_up(call, calls: int = 20) -> float:
    """Seconds of the first ``calls`` calls (a compiled step compiles in them)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    return time.perf_counter() - t0


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
    floor_min, adam_min, rows, eager_min = [], [], [], []
    print(f"{'stage':24s} {'floor':>8s} {'adam':>8s} {'pair':>8s} {'lone':>8s}  (ms per step of the pair, one thread)")
    for name, presets, overrides, dim, items, epochs in stages(args.bits, args.e2_epochs, args.e1_epochs):
        cfgs, steps = stage_setup(presets, overrides, items, epochs)
        # the lone models are SGH's and R-SGH's (the latter has the tie term, the redundancy and the
        # adversary): both are timed
        calls = {"floor": floor_step(cfgs, dim)[0], "adam": adam_pass(cfgs, dim),
                 "pair": group_step(cfgs, dim, compiled)[0],
                 **{f"lone {c.method}": group_step([c], dim, compiled)[0] for c in cfgs}}
        warm2 = warm_up(calls["pair"])
        warm1 = max(warm_up(calls[f"lone {c.method}"]) for c in cfgs)
        if args.eager:
            calls["eager"] = group_step(cfgs, dim, eager)[0]
        r = timed_rates(calls, args.seconds)[0]
        # model-steps/s of the pair, and of the lone models (their mean time per step)
        floor, adam, pair = r["floor"], r["adam"], 2 * r["pair"]
        lone = len(cfgs) / sum(1 / r[f"lone {c.method}"] for c in cfgs)
        floor_min.append(steps / floor / 60)
        adam_min.append(steps / adam / 60)
        rows.append((name, steps, {2: pair, 1: lone}, {2: warm2, 1: warm1}))
        lones = ", ".join(f"{c.method} {1e3 / r['lone ' + c.method]:.3f}" for c in cfgs)
        line = (f"{name:24s} {1e3 / floor:8.3f} {1e3 / adam:8.3f} {2e3 / pair:8.3f} {2e3 / lone:8.3f}  "
                f"pair/floor {floor * 2 / pair:4.2f}  2 lone/floor {2 * floor / lone:4.2f}  "
                f"(floor+adam)/floor {1 + floor / adam:4.2f}  (lone {lones} ms; compile {warm2:.0f} s, {warm1:.0f} s)")
        if args.eager:
            eager_min.append(steps / r["eager"] / 60)
            line += f"  eager pair {1e3 / r['eager']:.3f}"
        print(line, flush=True)
    parts = best_splits([(2, steps, rates, warm) for _, steps, rates, warm in rows], args.cores)
    units = []
    for (name, steps, rates, warm), k in zip(rows, parts):
        minutes = [d / 60 for d in part_durations(2, steps, k, rates, warm)]
        units += minutes
        print(f"{name:24s} {'one group of 2' if k == 1 else f'{k} lone models':16s} "
              f"{' + '.join(f'{m:.1f}' for m in minutes)} min")
    wall, floor_wall = makespan(units, args.cores), makespan(floor_min, args.cores)
    with_adam_wall = makespan([f + a for f, a in zip(floor_min, adam_min)], args.cores)
    print(f"compiled: {sum(units):.1f} CPU min; on {args.cores} cores {wall:.1f} min wall")
    print(f"floor:    {sum(floor_min):.1f} CPU min; on {args.cores} cores {floor_wall:.1f} min wall")
    print(f"floor with Adam's pass: {sum(floor_min) + sum(adam_min):.1f} CPU min; on {args.cores} cores "
          f"{with_adam_wall:.1f} min wall")
    if eager_min:
        print(f"eager (pairs): {sum(eager_min):.1f} CPU min; on {args.cores} cores "
              f"{makespan(eager_min, args.cores):.1f} min wall")
        print(f"compiled_vs_eager={makespan(eager_min, args.cores) / wall:.2f}")
    print(f"paper_scale_wall_min={wall:.2f}")
    print(f"gemm_floor_wall_min={floor_wall:.2f}")
    print(f"estimate_vs_floor={wall / floor_wall:.2f}")
    print(f"estimate_vs_floor_with_adam={wall / with_adam_wall:.2f}")
    from record import record

    record("paper_scale_estimate", {"paper_scale_wall_min": wall, "gemm_floor_wall_min": floor_wall,
                                    "floor_with_adam_wall_min": with_adam_wall, "estimate_vs_floor": wall / floor_wall,
                                    "estimate_vs_floor_with_adam": wall / with_adam_wall,
                                    **({"compiled_vs_eager": makespan(eager_min, args.cores) / wall} if eager_min else {})},
           args)


if __name__ == "__main__":
    main()
