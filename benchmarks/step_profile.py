"""Where the time of one compiled training step goes, at E2's shape (D=512, K=64, M=4, batch 32), one
thread, for lock-step groups of ``--sizes`` models; beside the floor of the step's matrix products
(``stages.products``) measured in the same run.

The step (``rsgh.train.step.make_step`` with ``compiled=True``) is timed as it trains; then compiled
again with inductor's kernel profiling (which itself costs time), run under ``torch.profiler``, and
its events are put in groups: the matrix products
(GEMM calls), Adam (the fused loops that update the weights and Adam's moments, with whatever
gradient arithmetic inductor fused into them), the other elementwise work (loss, sampling threshold,
sigmoid, KL, ReLU and their gradients, the adversary), and the rest of the step's wall time measured
without the profiler: Python, dynamo, the graph's wrapper and its allocations. Every time is a lower
quartile (of each event over the profiled steps; of single calls for the step, the floor and the
draws), so that a busy machine's pauses count less. Then the host side of the loop: drawing a step's
batch and noise step by step against drawing ``rsgh.train.loop``'s DRAW_AHEAD steps at once.

    python benchmarks/step_profile.py [--sizes 2,3,6] [--bits 64] [--steps 300] [--seconds 2] [--label TEXT]
        [--no-record]

Appends a record to ``results/benchmarks/step_profile.json`` (microseconds per step, by group size).

Run it with ``PYTHONPATH`` at an older checkout to profile that one's step the same way.
"""

import argparse
import collections
import re
import time

import torch

from rsgh.config import make_config
from rsgh.method.model import HashModel
from rsgh.method.objective import GroupSpec
from rsgh.train.step import make_step
from stages import layer_dims, products  # benchmarks/ is on sys.path when run

D, M, B = 512, 4, 32
PRODUCT = re.compile(r"(aoti_torch_cpu_|aten::)(mm|bmm|baddbmm|addmm)(_out)?$")


def category(name: str) -> str | None:
    if PRODUCT.search(name):
        return "products"
    if "cpp_fused" in name:
        return "Adam" if "lerp" in name else "elementwise"
    if name in ("aten::copy_", "aten::fill_"):
        return "elementwise"
    return None


def quartile(fn, seconds):
    """Lower quartile of the seconds of single calls of ``fn`` over about ``seconds``."""
    for _ in range(10):
        fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 20:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 4]


def group(size, bits):
    cfgs = [make_config("e2-rsgh" if g % 2 else "e2-sgh", dict(seed=g, bits=bits)) for g in range(size)]
    model = HashModel(D, bits, M, seeds=[c.seed for c in cfgs])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    return cfgs, make_step(model, opt, GroupSpec.from_configs(cfgs), torch.zeros(size, bits), compiled=True)


def profile(step, x, xi, steps):
    """Seconds per step of each category (lower quartile of each event, times its calls per step)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(x, xi)
    times = collections.defaultdict(list)
    for e in prof.events():
        times[e.name].append(e.self_cpu_time_total * 1e-6)
    out = collections.Counter()
    for name, t in times.items():
        if (c := category(name)) is not None:
            out[c] += sorted(t)[len(t) // 4] * len(t) / steps
    return out


def sampling(size, bits, seconds):
    """Seconds per step of drawing a batch and the noise: step by step, and DRAW_AHEAD steps at once."""
    try:
        from rsgh.train.loop import _Training
        n = _Training.DRAW_AHEAD
    except AttributeError:  # a checkout from before the draws ahead
        n = 8
    train = torch.rand(59000, D)
    perm = torch.randperm(len(train))
    gens = [torch.Generator().manual_seed(g) for g in range(size)]
    pos = [0]

    def per_step():
        i = pos[0] = (pos[0] + 1) % 1000
        return train.index_select(0, perm[i * B:(i + 1) * B]), torch.stack([torch.rand((B, bits), generator=g)
                                                                              for g in gens])

    def ahead():
        i = pos[0] = (pos[0] + n) % 900
        x = train.index_select(0, perm[i * B:(i + n) * B])
        xi = torch.stack([torch.rand((n, B, bits), generator=g) for g in gens], 1)
        return [(x[j * B:(j + 1) * B], xi[j]) for j in range(n)]

    return quartile(per_step, seconds), quartile(ahead, seconds) / n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2,3,6")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--steps", type=int, default=300, help="profiled steps")
    p.add_argument("--seconds", type=float, default=2.0, help="timing of the step, the floor and the sampling")
    p.add_argument("--label", default="", help="what this run measures (recorded)")
    p.add_argument("--no-record", action="store_true", help="print only")
    args = p.parse_args()
    values = {}
    torch.set_num_threads(1)
    import torch._inductor.config as inductor_config

    print(f"E2 shape D={D} K={args.bits} M={M} batch={B}, one thread; microseconds per step of the group")
    print(f"{'group':>5s} {'floor':>7s} {'step':>7s} {'ratio':>5s} | {'products':>8s} {'Adam':>7s} {'elementw':>8s} "
          f"{'rest':>7s} | {'draw/step':>9s} {'ahead':>7s}")
    for size in map(int, args.sizes.split(",")):
        x, xi = torch.rand(B, D), torch.rand(size, B, args.bits)
        cfgs, step = group(size, args.bits)  # timed as it trains
        prod = products(layer_dims(D, args.bits, M), size, B)[0]
        floor = quartile(prod, args.seconds)
        wall = quartile(lambda: step(x, xi), args.seconds)
        floor = min(floor, quartile(prod, args.seconds))  # right before and after: the faster
        # the same step compiled again with inductor's kernel profiling (which costs time itself)
        torch.compiler.reset()
        with inductor_config.patch({"cpp.enable_kernel_profile": True}):
            profiled = group(size, args.bits)[1]
            for _ in range(5):
                profiled(x, xi)
        parts = profile(profiled, x, xi, args.steps)
        torch.compiler.reset()
        rest = wall - sum(parts.values())
        per_step, ahead = sampling(size, args.bits, args.seconds / 2)
        us = lambda s: f"{s * 1e6:7.0f}"  # noqa: E731
        print(f"{size:5d} {us(floor)} {us(wall)} {wall / floor:5.2f} | {us(parts['products']):>8s} {us(parts['Adam'])} "
              f"{us(parts['elementwise']):>8s} {us(rest)} | {us(per_step):>9s} {us(ahead)}", flush=True)
        for key, seconds in (("floor", floor), ("step", wall), ("products", parts["products"]), ("adam", parts["Adam"]),
                             ("elementwise", parts["elementwise"]), ("rest", rest), ("draw", per_step),
                             ("draw_ahead", ahead)):
            values[f"{key}_us g{size}"] = seconds * 1e6
    if not args.no_record:
        from record import record

        record("step_profile", values, args, label=args.label)


if __name__ == "__main__":
    main()
