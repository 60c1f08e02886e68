"""What subnormal floats cost the compiled training step on this CPU, and how many there are.

Adam's first moment of a weight whose gradient is exactly zero (a dead unit, an input that is
rarely not zero) shrinks by beta1 = 0.9 every step and passes through float32's subnormal range
(below 1.2e-38) on its way to zero. Some CPUs compute with subnormal operands many times slower than
with normal ones (measured on an Intel Xeon: a lone 128-bit step 2.2 ms without the flush against
0.91 ms with it; on an AMD EPYC about 1%). The training loop therefore steps with subnormals flushed
to zero (``Runtime.flush_denormal``, default on); the results are the same to the bit
(``tests/test_step.py``; E2's 32- and 64-bit pairs over 200 epochs, in the README).

For each stage's pair (as ``paper_scale_estimate.py`` times it: random inputs of the stage's shape,
one thread) this trains two copies of the compiled step, one flushing and one not, for ``--steps``
steps each (so that the moments reach the subnormal range), counts the subnormal values in the
unflushed copy's Adam moments, then times both in turns. Ends with ``subnormal_slowdown=<ratio>``:
the largest of the stages' unflushed over flushed step times.

    python benchmarks/subnormals.py [--steps 1500] [--seconds 2] [--bits 32 64 128]
"""

import argparse

import torch

from rsgh.config import Runtime
from rsgh.train import step as step_module
from rsgh.train.step import group_step, timed_rates
from stages import stage_setup, stages  # benchmarks/ is on sys.path when run


def subnormal_count(opt_states) -> int:
    """Subnormal values in Adam's moments (counted with the flush off: with it, they read as zero)."""
    tiny, n = torch.finfo(torch.float32).tiny, 0
    for s in opt_states:
        for k in ("exp_avg", "exp_avg_sq"):
            n += int(((s[k] != 0) & (s[k].abs() < tiny)).sum())
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="steps of each copy before it is timed")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128])
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    optimizers = []
    real = step_module.make_step

    def noting(model, opt, *rest):  # group_step's optimizer, to count its moments' subnormals
        optimizers.append(opt)
        return real(model, opt, *rest)
    step_module.make_step = noting
    print(f"{'stage':24s} {'flushed':>8s} {'not':>8s} {'ratio':>6s}  (ms per step of the pair, one thread; "
          "subnormal moments of the unflushed copy)")
    ratios, by_stage = [], {}
    for name, presets, overrides, dim, items, epochs in stages(args.bits, 1, 1):
        cfgs, _ = stage_setup(presets, overrides, items, epochs)
        calls = {flush: group_step(cfgs, dim, Runtime(progress=False, compile_step=True, device="cpu",
                                                      flush_denormal=flush))[0] for flush in (True, False)}
        for call in calls.values():
            for _ in range(args.steps):
                call()
        count = subnormal_count(optimizers[-1].state.values())
        rates = timed_rates(calls, args.seconds)[0]
        ratios.append(rates[True] / rates[False])
        by_stage[f"slowdown {name}"] = ratios[-1]
        print(f"{name:24s} {1e3 / rates[True]:8.3f} {1e3 / rates[False]:8.3f} {ratios[-1]:6.2f}  "
              f"{count:,} of {sum(s['exp_avg'].numel() * 2 for s in optimizers[-1].state.values()):,}")
    print(f"subnormal_slowdown={max(ratios):.2f}")
    from record import record

    record("subnormals", {"subnormal_slowdown": max(ratios), **by_stage}, args)


if __name__ == "__main__":
    main()
