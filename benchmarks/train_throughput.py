"""Model-steps per second at the E2 configuration (M=4, K=64, batch 32, 512-D inputs), one thread.

Baseline: one model as a plain eager PyTorch network (nn.Linear layers, torch.optim.Adam), the
way it would be written without grouping. Then rsgh's lock-step groups of 1, 2, 6, 12, 24 models
(R-SGH objective, the training step of ``rsgh.train``). All in the same run, on random inputs
(throughput does not depend on the values).

    python benchmarks/train_throughput.py [--seconds 3] [--device cpu]

Then the same groups with ``compile_step=True`` (the whole step as one ``torch.compile`` graph).

Ends with ``group12_vs_single=<ratio>``: model-steps/s of the (uncompiled) group of 12 over the
eager model.
"""

import argparse
import time

import torch
from torch import nn

from rsgh.config import make_config
from rsgh.model import HashModel
from rsgh.neuron import binary_sample
from rsgh.objective import GroupSpec, bernoulli_kl
from rsgh.train import make_step

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

    return timed_rate(step, seconds, device)


def group(x_all, size, seconds, device, compiled=False):
    """rsgh's training step (``rsgh.train.make_step``) for a group of ``size`` models."""
    cfgs = [make_config(None, dict(method="rsgh" if g % 2 else "sgh", hidden_layers=M, bits=K, seed=g))
            for g in range(size)]
    spec = GroupSpec.from_configs(cfgs, device)
    model = HashModel(D, K, M, seeds=[c.seed for c in cfgs]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    lam = torch.zeros(size, K, device=device)
    train_step = make_step(model, opt, spec, lam, compiled)

    def step():
        train_step(x_all[torch.randint(len(x_all), (B,), device=device)], torch.rand(size, B, K, device=device))

    return size * timed_rate(step, seconds, device)


def timed_rate(step, seconds, device):
    """Calls of ``step`` per second over about ``seconds``, after 20 warm-up calls."""
    for _ in range(20):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            step()
        n += 10
    sync()
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="1,2,6,12,24")
    p.add_argument("--compiled-sizes", default="2,12",
                   help="groups also timed with compile_step=True (each compiles first: 15-60 s); '' for none")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    x_all = torch.rand(59000, D, device=device)
    base = eager_single(x_all, args.seconds, device)
    print(f"device={device} threads=1 E2 config: D={D} K={K} M={M} batch={B}")
    print(f"eager single model: {base:8.0f} model-steps/s")
    results = {}
    for size in map(int, args.sizes.split(",")):
        results[size] = group(x_all, size, args.seconds, device)
        print(f"group of {size:2d}: {results[size]:8.0f} model-steps/s  ({results[size] / base:5.2f}x eager)")
    compiled = {}
    for size in (int(v) for v in args.compiled_sizes.split(",") if v):
        compiled[size] = group(x_all, size, args.seconds, device, compiled=True)
        print(f"group of {size:2d}, compiled step: {compiled[size]:8.0f} model-steps/s  "
              f"({compiled[size] / base:5.2f}x eager, {compiled[size] / results.get(size, float('nan')):4.2f}x "
              "the same group uncompiled)")
    if 12 in compiled:
        print(f"compiled_group12_vs_single={compiled[12] / base:.2f}")
    if 12 in results:
        print(f"group12_vs_single={results[12] / base:.2f}")


if __name__ == "__main__":
    main()
