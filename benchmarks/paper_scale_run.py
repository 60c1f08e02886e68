"""The whole paper-scale reproduction with one seed, end to end, beside the floor of ``gemm_floor.py``
measured in the same run.

What it runs, the way ``make reproduce`` trains (compiled step, one thread per process, a local Dask
cluster of ``--workers`` processes): CIFAR-10 decoded and its GIST features computed (into a fresh
feature cache, so that they are part of the time), embodiment 2 at 128, 64 and 32 bits (SGH and
R-SGH, 200 epochs, with their evaluations and test-query retrieval results) and its classic
baselines at the three code lengths, and embodiment 1 (SGH and R-SGH, 50 epochs). The training goes
through ``rsgh.book.schedule``, as the book's pages train: each stage's split (one lock-step group,
or its models in parallel processes) is chosen from a short measurement of the compiled step
(``Runtime.group_split='measure'``, which the paper-scale pages get by default; the measurement is
part of the time, ``plan_parts``), and the parts go to the workers longest first, each when a worker
is free (``in_turn``), the baselines last (one task per code length).

    python benchmarks/paper_scale_run.py [--runs /tmp/paper-scale] [--workers 2] [--seed 0]
        [--bits 128 64 32] [--e2-epochs 200] [--e1-epochs 50] [--split measure|workers] [--reuse-cache]
        [--probe-every 15]

Needs the data root (``RSGH_DATA`` or ``--data-root``) and a fresh ``--runs`` folder (finished
runs there are reused, so a second call only measures what is left). A toy run to try it:
``--bits 32 --e2-epochs 1 --e1-epochs 1 --reuse-cache``. Ends with ``run_vs_floor=<ratio>``: the
run's wall time over the floor's (the same stages' products, scheduled on the same cores; the faster
of two measurements, before and after the run), and ``run_vs_floor_with_adam=<ratio>``: over the
products plus the optimizer's pass (``stages.adam_pass``). Then ``run_vs_floor_during=<ratio>`` and
``run_vs_floor_during_with_adam=<ratio>``: the same against the floor sampled during the training
(``FloorDuringRun``; ``--probe-every 0`` turns it off), with the workers' stopped time taken off the
run's wall time.
"""

import argparse
import functools
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import torch

from rsgh.config import Runtime
from rsgh.train.step import makespan, timed_rates
from stages import adam_pass, floor_step, stage_setup, stages  # benchmarks/ is on sys.path


def floor_calls(stage_list) -> list[tuple[dict, int]]:
    """For each stage: the functions doing its pair's products (``gemm_floor.py``'s floor) and its
    optimizer's pass (``stages.adam_pass``), as {"floor", "adam"}, and the training steps of each model."""
    out = []
    for _, presets, overrides, dim, items, epochs in stage_list:
        cfgs, steps = stage_setup(presets, overrides, items, epochs)
        out.append(({"floor": floor_step(cfgs, dim)[0], "adam": adam_pass(cfgs, dim)}, steps))
    return out


def floor_minutes(stage_list, seconds: float) -> tuple[list[float], list[float]]:
    """Minutes of each stage's products and of its optimizer's pass (:func:`floor_calls`), one
    thread, timed in turns."""
    products_min, adam_min = [], []
    for calls, steps in floor_calls(stage_list):
        rates = timed_rates(calls, seconds)[0]
        products_min.append(steps / rates["floor"] / 60)
        adam_min.append(steps / rates["adam"] / 60)
    return products_min, adam_min


class FloorDuringRun(threading.Thread):
    """The floor sampled while the training runs: every ``every`` seconds it stops the cluster's
    workers (SIGSTOP), times one stage's products and Adam's pass in turns on the idle machine for
    about ``seconds``, and lets the workers go on (SIGCONT); the stages take turns. This machine's
    speed drifts by up to a factor of two within minutes (the same products timed in 2-second windows
    on an idle machine: 0.73 to 1.26 ms), so a floor timed before or after a 25-minute run can be
    another machine's; sampled in the run, it is the floor of the minutes the run had. The stopped
    time is measured and taken off the run's wall time for the ratio against this floor."""

    def __init__(self, stage_list, pids, every: float, seconds: float):
        super().__init__(daemon=True)
        self.calls = floor_calls(stage_list)
        self.pids, self.every, self.seconds = list(pids), every, seconds
        self.samples = [[] for _ in stage_list]  # per stage: (seconds a step of products, of Adam's pass)
        self.stopped_s, self.done = 0.0, threading.Event()

    def run(self):
        turn = 0
        while not self.done.wait(self.every):
            calls, _ = self.calls[turn % len(self.calls)]
            t = time.perf_counter()
            for pid in self.pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                rates = timed_rates(calls, self.seconds, warmup=3)[0]
            finally:
                for pid in self.pids:
                    os.kill(pid, signal.SIGCONT)
            self.stopped_s += time.perf_counter() - t
            self.samples[turn % len(self.calls)].append((1 / rates["floor"], 1 / rates["adam"]))
            turn += 1

    def minutes(self) -> tuple[list[float], list[float]] | None:
        """Each stage's products and Adam's pass in minutes at the mean of its samples' step times (the
        machine's mean speed over the run), or None before every stage has two samples."""
        if min(map(len, self.samples)) < 2:
            return None
        means = [self._means(smp) for smp in self.samples]
        return ([m[0] * steps / 60 for m, (_, steps) in zip(means, self.calls)],
                [m[1] * steps / 60 for m, (_, steps) in zip(means, self.calls)])

    def spread(self) -> str:
        per_step = []
        for smp in self.samples:
            mean = self._means(smp)[0]
            per_step += [s[0] / mean for s in smp]
        return f"{min(per_step):.2f} to {max(per_step):.2f} times its mean"

    @staticmethod
    def _means(samples) -> tuple[float, float]:
        """The mean seconds a step of the products and of Adam's pass, over a stage's samples."""
        return statistics.fmean(s[0] for s in samples), statistics.fmean(s[1] for s in samples)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="/tmp/paper-scale")
    p.add_argument("--data-root", default=os.environ.get("RSGH_DATA"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", type=int, nargs="+", default=[128, 64, 32])
    p.add_argument("--e2-epochs", type=int, default=200)
    p.add_argument("--e1-epochs", type=int, default=50)
    p.add_argument("--split", default="measure", choices=["measure", "workers"],
                   help="how each stage's pair is split (Runtime.group_split): measured, or one part per worker")
    p.add_argument("--seconds", type=float, default=1.5, help="timing of each floor measurement")
    p.add_argument("--probe-every", type=float, default=15.0,
                   help="seconds between the samples of the floor during the training (0: none)")
    p.add_argument("--reuse-cache", action="store_true", help="reuse decoded images and GIST features (not timed)")
    args = p.parse_args()
    torch.set_num_threads(1)
    runs_dir = Path(args.runs)
    if not args.reuse_cache:  # the decoding and GIST of this run, not an earlier one's
        os.environ["RSGH_CACHE"] = str(runs_dir / "cache")
    os.environ.pop("RSGH_SCHEDULER", None)  # a cluster of its own, never a running one
    os.environ["RSGH_WORKERS"] = str(args.workers)
    stage_list = stages(args.bits, args.e2_epochs, args.e1_epochs)
    floor_before, adam_before = floor_minutes(stage_list, args.seconds)

    from rsgh.book import experiments, pages, schedule
    from rsgh.train.task import task_data

    t0 = time.time()
    marks = []

    def mark(label):
        marks.append((label, time.time()))
        print(f"{label}: {marks[-1][1] - (marks[-2][1] if len(marks) > 1 else t0):.0f} s", flush=True)

    e2 = [c for _, c in pages.retrieval_configs(("e2-sgh", "e2-rsgh"), args.bits, [args.seed], args.e2_epochs, 0, {})]
    e1 = [c for _, c in experiments.e1_configs([args.seed], args.e1_epochs)] if args.e1_epochs else []
    torch.set_num_threads(args.workers)  # no worker runs yet: the data step may use every core
    for cfg in [e2[0]] + e1[:1]:
        task_data(cfg, args.data_root, progress=False)
    torch.set_num_threads(1)
    mark("data: decoding, GIST features, split")

    runtime = Runtime(progress=False, compile_step=True, device="cpu", threads=1, group_split=args.split)
    runs = [(c, runs_dir / ("e1" if c.task == "reconstruction" else "e2") / c.run_name()) for c in e2 + e1]
    client = schedule.get_client()
    todo = schedule.plan_parts(client, runs, args.data_root, runtime, progress=True)
    mark("split chosen" if args.split == "measure" else "split dealt")
    # the baselines last, one task per code length (longest first), each when a worker is free, in the same
    # turn as the parts: the two workers share them (as one task, they ended 62 s after the training in run 13)
    calls = [schedule.part_call(part, args.data_root, runtime) for part in todo]
    calls += [(functools.partial(experiments.baselines_table, cache=False), e2[0], [bits], [args.seed],
               args.data_root) for bits in sorted(args.bits, reverse=True)]
    probe = None
    if args.probe_every > 0:
        probe = FloorDuringRun(stage_list, client.run(os.getpid).values(), args.probe_every, 0.1)
        probe.start()
    ended = {}
    try:
        for i, future in schedule.in_turn(client, calls):
            future.result()
            ended[i] = time.time()
    finally:  # never leave the workers stopped
        if probe is not None:
            probe.done.set()
            probe.join()
    training_end = max(t for i, t in ended.items() if i < len(todo))
    print(f"training with evaluations (all stages): {training_end - marks[-1][1]:.0f} s", flush=True)
    print(f"baselines (the last tasks, one per code length, on the first free worker; ended after the training): "
          f"{max(0.0, max(t for i, t in ended.items() if i >= len(todo)) - training_end):.0f} s", flush=True)
    wall = time.time() - t0
    floor_after, adam_after = floor_minutes(stage_list, args.seconds)
    floor = [min(a, b) for a, b in zip(floor_before, floor_after)]  # the faster of the two measurements
    adam = [min(a, b) for a, b in zip(adam_before, adam_after)]
    floor_wall = makespan(floor, args.workers)
    with_adam = makespan([f + a for f, a in zip(floor, adam)], args.workers)
    print(f"run: {wall / 60:.2f} min wall on {args.workers} workers; floor of its training: {floor_wall:.2f} min "
          f"(before/after: {makespan(floor_before, args.workers):.2f}/{makespan(floor_after, args.workers):.2f}); "
          f"with Adam's pass: {with_adam:.2f} min")
    for (name, *_), f, a in zip(stage_list, floor, adam):
        print(f"  floor {name:24s} products {f:5.1f} min, Adam's pass {a:4.1f} min")
    print(f"paper_scale_run_min={wall / 60:.2f}")
    print(f"run_vs_floor={wall / 60 / floor_wall:.2f}")
    print(f"run_vs_floor_with_adam={wall / 60 / with_adam:.2f}")
    during = probe.minutes() if probe is not None else None
    values = {"wall_min": wall / 60, "floor_before_min": makespan(floor_before, args.workers),
              "floor_after_min": makespan(floor_after, args.workers), "run_vs_floor": wall / 60 / floor_wall,
              "run_vs_floor_with_adam": wall / 60 / with_adam, "data_s": marks[0][1] - t0,
              "split_s": marks[-1][1] - marks[0][1], "training_s": training_end - marks[-1][1],
              "baselines_after_s": max(0.0, max(t for i, t in ended.items() if i >= len(todo)) - training_end)}
    if during is not None:
        run_s = wall - probe.stopped_s
        floor_during, with_adam_during = (makespan(during[0], args.workers),
                                          makespan([f + a for f, a in zip(*during)], args.workers))
        print(f"floor sampled during the training ({sum(map(len, probe.samples))} samples, the workers stopped "
              f"{probe.stopped_s:.0f} s in all; a sample's products took {probe.spread()}): {floor_during:.2f} min, "
              f"with Adam's pass {with_adam_during:.2f} min; the run without the stops: {run_s / 60:.2f} min")
        for (name, *_), f, a in zip(stage_list, *during):
            print(f"  floor during {name:24s} products {f:5.1f} min, Adam's pass {a:4.1f} min")
        print(f"run_vs_floor_during={run_s / 60 / floor_during:.2f}")
        print(f"run_vs_floor_during_with_adam={run_s / 60 / with_adam_during:.2f}")
        values.update(floor_during_min=floor_during, run_vs_floor_during=run_s / 60 / floor_during,
                      run_vs_floor_during_with_adam=run_s / 60 / with_adam_during)
    from record import record

    record("paper_scale_run", values, args)


if __name__ == "__main__":
    main()
