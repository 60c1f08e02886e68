"""How much of the optimizer's pass is arithmetic, and how much is moving its state? Beside each stage's
matrix products (``gemm_floor.py``'s floor), one thread, timed in turns:

- ``fused``: ``torch.optim.Adam``'s fused kernel over the pair's parameters as one flat tensor
  (``stages.adam_pass``, the floor "with Adam" of ``paper_scale_estimate.py`` and ``paper_scale_run.py``);
- ``exact``: the update as the compiled step writes it (``rsgh.train.step``: ``lerp_``, ``addcmul_``,
  one square root and one division an element), compiled by inductor into one loop;
- ``traffic``: a loop with the same loads and stores (weights, gradient and both moments read, three
  written back) and only additions: the time of moving the state, whatever the arithmetic;
- ``no_divide``: ``exact`` with the division made a product and no square root (wrong, for timing).

The compiled variants are called through dynamo, whose call costs tens of microseconds: that is
timed too (``exact`` over 16 parameters) and taken off the three.

Every variant streams the same 28 bytes a parameter, so ``traffic`` is what any implementation of
Adam with fp32 state pays on this core, and ``exact - traffic`` is what its exact square root and
division add (the published numbers depend on them to the bit). The last lines give the whole
training's floor with the exact pass against the products alone (the stages' pairs scheduled on
``--cores`` as ``gemm_floor.py`` does): ``floor_with_exact_adam_vs_floor=<ratio>``, a bound under
``estimate_vs_floor`` for any step that keeps plain Adam, and ``floor_with_traffic_vs_floor=<ratio>``.

    python benchmarks/adam_floor.py [--seconds 1.5] [--cores 2]
"""

import argparse

import torch

from rsgh.train.step import makespan, timed_rates
from stages import STAGES, adam_pass, floor_step, layer_dims, stage_setup  # benchmarks/ is on sys.path


def exact(w, g, m, v, step_size, inv_root):
    """Adam's update as ``rsgh.train.step``'s whole_step writes it (betas 0.9 and 0.999, eps 1e-8)."""
    m.lerp_(g, 0.1)
    v.mul_(0.999).addcmul_(g, g, value=0.001)
    w.sub_(step_size * m / (v.sqrt() * inv_root + 1e-8))


def no_divide(w, g, m, v, step_size, inv_root):
    m.lerp_(g, 0.1)
    v.mul_(0.999).addcmul_(g, g, value=0.001)
    w.sub_(step_size * m * (v * inv_root + 1e-8))


def traffic(w, g, m, v, step_size, inv_root):
    m.add_(g)
    v.add_(g)
    w.add_(m)


def updates(params: int) -> dict:
    """The compiled variants of the optimizer's pass over ``params`` fp32 parameters (see the module's
    text), and ``call``: ``exact`` over 16 parameters, the cost of calling a compiled function."""
    state = [torch.rand(params) for _ in range(4)] + [torch.tensor(1e-3), torch.tensor(1.0005)]
    tiny = [torch.rand(16) for _ in range(4)] + state[4:]
    out = {}
    for name, fn, args in (("exact", exact, state), ("no_divide", no_divide, state), ("traffic", traffic, state),
                           ("call", exact, tiny)):
        compiled = torch.compile(fn, fullgraph=True, dynamic=False)
        out[name] = lambda c=compiled, a=args: c(*a)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    minutes = {k: [] for k in ("products", "fused", "exact", "no_divide", "traffic")}
    print(f"{'stage':24s} {'params':>8s}  microseconds a step of the pair: products, fused, exact, no_divide, traffic"
          " (the last three less a compiled call's cost)  (exact/products)")
    for name, presets, overrides, dim, items, epochs in STAGES:
        cfgs, steps = stage_setup(presets, overrides, items, epochs)
        c = cfgs[0]
        params = len(cfgs) * sum(i * o + o for i, o in layer_dims(dim, c.bits, c.hidden_layers))
        calls = {"products": floor_step(cfgs, dim)[0], "fused": adam_pass(cfgs, dim), **updates(params)}
        rates = timed_rates(calls, args.seconds)[0]
        us = [1e6 / rates[k] - (1e6 / rates["call"] if k in ("exact", "no_divide", "traffic") else 0) for k in minutes]
        for k, u in zip(minutes, us):
            minutes[k].append(steps * u / 1e6 / 60)
        print(f"{name:24s} {params:8d}  " + " ".join(f"{u:7.0f}" for u in us) + f"  ({us[2] / us[0]:.2f})")
    floor = makespan(minutes["products"], args.cores)
    for k in ("fused", "exact", "traffic"):
        with_k = makespan([a + b for a, b in zip(minutes["products"], minutes[k])], args.cores)
        print(f"products + {k:9s} on {args.cores} cores: {with_k:5.2f} min against {floor:5.2f} min of products")
    exact = makespan([a + b for a, b in zip(minutes["products"], minutes["exact"])], args.cores)
    traffic = makespan([a + b for a, b in zip(minutes["products"], minutes["traffic"])], args.cores)
    print(f"floor_with_exact_adam_vs_floor={exact / floor:.2f}")
    print(f"floor_with_traffic_vs_floor={traffic / floor:.2f}")
    from record import record

    record("adam_floor", {"floor_with_exact_adam_vs_floor": exact / floor,
                          "floor_with_traffic_vs_floor": traffic / floor, "floor_min": floor}, args)


if __name__ == "__main__":
    main()
