"""Model-steps per second at the E2 configuration (M=4, K=64, batch 32, 512-D inputs), one thread.

Baseline: one model as a plain eager PyTorch network (nn.Linear layers, torch.optim.Adam), the
way it would be written without grouping. Then rsgh's lock-step groups (half SGH, half R-SGH; the
training step of ``rsgh.train.step``, timed by ``rsgh.train.step.step_rate``) of ``--sizes`` models,
eager, and of ``--compiled-sizes`` models with ``compile_step`` (on a CPU the whole step as one
graph, on CUDA the forward and backward pass with CUDA graphs). On a CPU each group is also set
against the floor of its matrix products alone (``stages.products``, measured right before it).
All in the same run, on random inputs (throughput does not depend on the values).

    python benchmarks/train_throughput.py [--seconds 3] [--device cpu|cuda] [--sizes 1,2,6,12,24]
                                          [--compiled-sizes 2,12]

Ends with ``group12_vs_single=<ratio>``: model-steps/s of the (uncompiled) group of 12 over the
eager model (when 12 is among the sizes).
"""

import argparse

import torch
from torch import nn

from rsgh.config import Runtime, make_config
from rsgh.method.neuron import binary_sample
from rsgh.method.objective import bernoulli_kl
from rsgh.train.step import step_rate
from rsgh.train.step import timed_rate
from stages import floor_rate  # benchmarks/ is on sys.path when run

D, K, M, B = 512, 64, 4, 32


def eager_single(x_all, seconds, device):
    """The reference: one R-SGH model as an ordinary nn.Module and training step."""
    enc = nn.Sequential(*[m for i in range(M) for m in (nn.Linear(D if i == 0 else K, K), nn.ReLU())],
                        nn.Linear(K, K)).to(device)
    dec_hidden = nn.Sequential(*[m for _ in range(M) for m in (nn.Linear(K, K), nn.ReLU())]).to(device)
    dec_out = nn.Linear(K, D).to(device)
    params = [*enc.parameters(), *dec_hidden.parameters(), *dec_out.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    lam = torch.zeros(K, device=device)

    def step():
        x = x_all[torch.randint(len(x_all), (B,), device=device)]
        logits = enc(x)
        h = binary_sample(logits, torch.rand(B, K, device=device))
        g = dec_hidden(h)
        x_hat = dec_out(g)
        pi = torch.sigmoid(logits)
        r = 0.05 - pi.var(0, unbiased=False)
        loss = (0.5 * (x - x_hat).pow(2).sum(1) + bernoulli_kl(logits, 0.5).sum(1)
                + 0.01 * (h - g).pow(2).sum(1)).mean() + 0.01 * (lam * r).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lam.add_(0.01 * r.detach()).clamp_(min=0)

    return timed_rate(step, seconds, device)[0]


def configs(size):
    return [make_config(None, dict(method="rsgh" if g % 2 else "sgh", hidden_layers=M, bits=K, seed=g))
            for g in range(size)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default="1,2,6,12,24")
    p.add_argument("--compiled-sizes", default="2,12",
                   help="groups also timed with compile_step=True (each compiles first: 15-60 s); '' for none")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    base = eager_single(torch.rand(59000, D, device=device), args.seconds, device)
    print(f"device={device} threads=1 E2 config: D={D} K={K} M={M} batch={B}")
    print(f"eager single model: {base:8.0f} model-steps/s")
    results = {}
    for compiled, sizes in ((False, args.sizes), (True, args.compiled_sizes)):
        runtime = Runtime(progress=False, compile_step=compiled, device=args.device)
        for size in (int(v) for v in sizes.split(",") if v):
            cfgs = configs(size)
            floor = size * floor_rate(cfgs, D, args.seconds)[0] if device.type == "cpu" else float("nan")
            rate, warm = step_rate(cfgs, D, runtime, args.seconds)
            results[compiled, size] = rate
            print(f"group of {size:3d}{', compiled' if compiled else ''}: {rate:9.0f} model-steps/s  "
                  f"({rate / base:6.2f}x the eager model; products alone {floor:9.0f}: step/floor "
                  f"{floor / rate:5.2f}; warm-up {warm:.0f} s)", flush=True)
    for size in sorted(s for c, s in results if c):
        if (False, size) in results:
            print(f"compiled_group{size}_vs_uncompiled={results[True, size] / results[False, size]:.2f}")
    if (False, 12) in results:
        print(f"group12_vs_single={results[False, 12] / base:.2f}")


if __name__ == "__main__":
    main()
