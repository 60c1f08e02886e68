"""The training step: one update of every model of a lock-step group and of its adversary.

Eager (``torch.optim.Adam``, fused), or with ``Runtime.compile_step`` compiled: on a CPU the whole
step as one ``torch.compile`` graph (``rsgh.train.compiled``), on CUDA the forward and backward pass
with CUDA graphs. And the group sizes of a stage, from a short measurement of the step.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..method.model import HashModel
from ..method.objective import GroupSpec, adversary_step, compute_loss
from .compiled import PHASES, _compiled_cpu_step


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def make_step(model: HashModel, opt: torch.optim.Adam, spec: GroupSpec, lam: torch.Tensor,
              compiled: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training step ``step(x, xi) -> parts``: one update of every model of the group and of
    its adversary; ``parts`` are the batch's loss terms (G, len(PARTS)), detached.

    ``compiled``: on a CPU the whole step as one graph (:func:`_compiled_cpu_step`); on CUDA the
    forward and backward pass compiled with ``mode="reduce-overhead"`` (CUDA graphs) beside the
    fused Adam."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    if compiled and not on_cuda:
        return _compiled_cpu_step(model, opt, spec, lam)

    def forward_backward(x, xi):
        loss = compute_loss(model, x, xi, spec, lam)
        loss.total.backward()
        return loss.parts, loss.redundancy

    if compiled:
        forward_backward = torch.compile(forward_backward, mode="reduce-overhead")

    calls = 0

    def step(x, xi):
        nonlocal calls
        calls += 1
        t = time.perf_counter() if compiled and calls <= 3 else None  # CUDA graphs: compiled, then recorded
        opt.zero_grad(set_to_none=True)
        parts, redundancy = forward_backward(x, xi)
        opt.step()
        adversary_step(lam, redundancy, spec)
        if t is not None:
            PHASES.add("compile", time.perf_counter() - t)
        return parts

    return step


# --- group sizes from a short measurement

def step_rate(configs, input_dim: int, runtime=None, seconds: float = 2.0, warmup: int = 20) -> tuple[float, float]:
    """(model-steps per second, seconds of warm-up) of one lock-step group of ``configs`` on random
    inputs of their shape, with ``runtime``'s device, threads and step (the warm-up, which compiles a
    compiled step, is not in the rate): the median round of 10 steps in about ``seconds``."""
    rates, warm, _ = stage_rates(configs, input_dim, [len(configs)], runtime, seconds, warmup)
    return rates[len(configs)], warm[len(configs)]


def stage_rates(configs, input_dim: int, sizes, runtime=None, seconds: float = 1.5,
                warmup: int = 20) -> tuple[dict[int, float], dict[int, float], float]:
    """({size: model-steps/s}, {size: seconds of warm-up}, the :func:`yardstick`'s calls/s) of groups
    of ``size`` of ``configs`` for each of ``sizes`` (:func:`step_rate`), the sizes and the yardstick
    timed in turns (:func:`timed_rates`) so that they share the machine's drift. A group smaller than
    ``configs`` takes R-SGH's models first: their step is the longer (5-15% at 128 bits, lone), and a
    split ends with its longest part."""
    ordered = sorted(configs, key=lambda c: c.method != "rsgh")  # a stable sort: else as given
    calls, warm, device = {}, {}, None
    for size in sizes:
        calls[size], device = group_step(ordered[:size], input_dim, runtime)
        warm[size] = warm_up([calls[size]], warmup, device)  # compiles a compiled step
    rates = timed_rates({**calls, "yardstick": yardstick(device)}, seconds, device, warmup=0)[0]
    return {size: len(ordered[:size]) * rates[size] for size in sizes}, warm, rates["yardstick"]


def yardstick(device=torch.device("cpu")) -> Callable[[], None]:
    """Fixed work (four small products, about 0.2 ms on a core) timed in turns with a stage's steps, by
    whose rates stages measured at other moments or on other workers are put on one scale
    (``rsgh.book.schedule.measured_splits``): with this machine's drift (28% in a minute) a 64-bit pair
    looked as long as a lone 128-bit model, which took 19% and 36% longer in the run (run 16)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(32, 256, generator=gen).to(device), torch.rand(256, 256, generator=gen).to(device))

    def call():
        for _ in range(4):
            torch.mm(a, b)
    return call


def group_step(configs, input_dim: int, runtime=None) -> tuple[Callable[[], None], torch.device]:
    """(a function doing one training step of a lock-step group of ``configs`` on random inputs of
    their shape, the device), with ``runtime``'s device, threads and step, for timing."""
    from ..config import Runtime

    runtime = (runtime or Runtime(progress=False)).validate()
    torch.set_num_threads(runtime.threads)
    device, cfg, G = pick_device(runtime.device), configs[0], len(configs)
    ones = torch.ones(input_dim)
    model = HashModel(input_dim, cfg.bits, cfg.hidden_layers, cfg.arch, [c.seed for c in configs], ones * 0.5,
                      ones, cfg.hidden_width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.model_lr, fused=True)
    step = make_step(model, opt, GroupSpec.from_configs(configs, device), torch.zeros(G, cfg.bits, device=device),
                     runtime.compile_step)
    gen = torch.Generator(device=device).manual_seed(0)
    B, n = cfg.batch_size, 64  # as the loop draws them: 64 steps' batches and noise at once
    xs = torch.rand(n * B, input_dim, generator=gen, device=device)
    xis = torch.rand(n, G, B, cfg.bits, generator=gen, device=device)
    calls, flush = 0, runtime.flushes_subnormals(device)  # as the training loop steps

    def one():
        nonlocal calls
        i, calls = calls % n, calls + 1
        torch.set_flush_denormal(flush)
        step(xs[i * B:(i + 1) * B], xis[i])
        torch.set_flush_denormal(False)

    return one, device


def timed_rate(call, seconds: float, device=torch.device("cpu"), warmup: int = 20) -> tuple[float, float]:
    """(calls of ``call`` per second, seconds of the ``warmup`` calls before): :func:`timed_rates` of one."""
    rates, warm = timed_rates({"call": call}, seconds, device, warmup)
    return rates["call"], warm


def warm_up(calls, n: int, device=torch.device("cpu")) -> float:
    """Seconds that ``n`` calls of each of ``calls`` take (on CUDA, until the device has finished)."""
    import time

    t0 = time.perf_counter()
    for call in calls:
        for _ in range(n):
            call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed_rates(calls: dict, seconds: float, device=torch.device("cpu"), warmup: int = 10) -> tuple[dict, float]:
    """(calls per second of each of ``calls``, name -> function; seconds of the ``warmup`` calls of
    each before), timed in turns: a round of 10 calls of each, again and again for about ``seconds``
    per function (at least 5 rounds); the rate of each one's median round, so that a busy machine's
    pauses count less than in a mean. On a virtual machine whose speed drifts by a factor of two
    within minutes, a ratio of two rates timed one after the other is not to be trusted; rates timed
    in turns share the machine's moods. With several functions, each round starts with 3 untimed
    calls: the first calls after a switch from another function find the caches cold (measured: the
    first call of a training step 20-70% slower, the next two up to 10%), most of all after an
    optimizer's pass that streams megabytes through them; with no untimed call, a step timed right
    after it measured 4-7% slower than the same step timed after another step. Training calls one
    step after another."""
    import time

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm, untimed = warm_up(calls.values(), warmup, device), 3 if len(calls) > 1 else 0
    rounds = {name: [] for name in calls}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds * len(calls) or min(map(len, rounds.values())) < 5:
        for name, call in calls.items():
            for _ in range(untimed):
                call()
            sync()
            t = time.perf_counter()
            for _ in range(10):
                call()
            sync()
            rounds[name].append(time.perf_counter() - t)
    return {name: 10 / sorted(r)[len(r) // 2] for name, r in rounds.items()}, warm


def makespan(durations, workers: int) -> float:
    """When ``durations`` dealt out longest first to ``workers`` (each to the least loaded) are done."""
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads)


def part_sizes(models: int, parts: int) -> list[int]:
    """The group sizes of ``models`` dealt into ``parts`` (as ``rsgh.book.schedule.train_runs`` deals them)."""
    return [len(range(i, models, parts)) for i in range(min(parts, models))]


def part_durations(models: int, steps: int, parts: int, rates: dict[int, float],
                   warmups: dict[int, float] | None = None) -> list[float]:
    """Seconds of each part, from model-steps/s measured at some group sizes (linear in between),
    plus each part's warm-up (its compilation) when ``warmups`` gives them by group size."""
    sizes = sorted(rates)

    def at(table, s):
        if s in table:
            return table[s]
        lo = max([x for x in sizes if x < s], default=sizes[0])
        hi = min([x for x in sizes if x > s], default=sizes[-1])
        return table[lo] if lo == hi else table[lo] + (table[hi] - table[lo]) * (s - lo) / (hi - lo)

    return [steps * s / at(rates, s) + (at(warmups, s) if warmups else 0.0) for s in part_sizes(models, parts)]


def candidate_parts(models: int, workers: int) -> list[int]:
    """A few splits worth measuring: one group, one part per worker, and multiples of that."""
    out, p = [1], workers
    while p < models:
        out.append(p)
        p *= 2
    return sorted(set(out + [models]))


# Splits whose measured makespans differ by less than this fraction are treated as equal, and the one with
# the least total work is taken: a makespan compares stages measured apart (on a drifting machine), a total
# work group sizes of one stage timed in turns. In run 15 of ``benchmarks/paper_scale_run.py`` every stage
# went into lone models, 0.4% to 6.6% longer than 128 bits lone and the rest in pairs when measured again,
# for 6% to 7% more work; its steps took 2,845 CPU-s, against 2,315 in run 14 with the pairs.
SPLIT_SLACK = 0.05


def best_splits(stages, workers: int, slack: float = SPLIT_SLACK) -> list[int]:
    """For several stages run together, each ``(models, steps, rates)`` or ``(models, steps, rates,
    warmups)`` with model-steps/s and warm-up seconds by group size (as :func:`step_rate` measures
    them, in ``rsgh.book.schedule.measured_splits``): the parts of each stage that make all of them
    finish first on ``workers`` processes (every combination of the candidates, up to 4096; beyond
    that each stage on its own). Of the splits within ``slack`` (a fraction) of the shortest makespan,
    the one with the least total work (:data:`SPLIT_SLACK`); of equals, the one listed first (fewer parts)."""
    import itertools

    def durations(stage, p):
        return part_durations(stage[0], stage[1], p, *stage[2:4])

    def pick(choices, parts_of):  # choices: splits; parts_of(split) -> the durations of its parts
        costs = [(makespan(d, workers), sum(d)) for d in map(parts_of, choices)]
        shortest = min(m for m, _ in costs)
        near = [(total, i) for i, (m, total) in enumerate(costs) if m <= shortest * (1 + slack)]
        return choices[min(near)[1]]

    options = [candidate_parts(st[0], workers) for st in stages]
    if math.prod(len(o) for o in options) > 4096:
        return [pick(o, lambda p, st=st: durations(st, p)) for o, st in zip(options, stages)]
    return list(pick(list(itertools.product(*options)),
                     lambda ps: [d for p, st in zip(ps, stages) for d in durations(st, p)]))
