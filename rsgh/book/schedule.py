"""Parallel work on ``dask.distributed``: every training task (a lock-step group, or a part of one)
and every study trial is a Dask task.

- By default a ``LocalCluster`` of ``RSGH_WORKERS`` worker processes (default: the number of cores),
  one thread each, started once per Python process and shared by everything it runs.
- ``RSGH_SCHEDULER=tcp://HOST:PORT`` (``--scheduler``) uses a running cluster instead: ``dask scheduler``
  and ``dask worker`` started by hand, or ``dask-jobqueue``'s ``SLURMCluster`` (see the README).

Results travel through the filesystem: a task writes its run folders, which must be on a
filesystem that the client and the workers share (a cluster's home or project folder); it returns
only the summaries. A task that dies with its worker is run again elsewhere by the scheduler and
resumes from the run's last checkpoint (a killed run resumes to identical weights); a task that
fails with an error (a bad configuration) fails once, with its message. Tasks on a CUDA device
ask for the worker resource ``GPU=1`` (start GPU workers with ``dask worker ... --resources GPU=1``),
so that a GPU worker runs one at a time.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Sequence

from ..config import Config, Runtime
from ..method.objective import PER_MODEL

_CLIENT = None


def workers_wanted() -> int:
    """Local worker processes: ``RSGH_WORKERS``, default one per core."""
    from ..paths import env_positive_int

    return env_positive_int("RSGH_WORKERS", os.cpu_count() or 1)


def get_client(scheduler: str | None = None):
    """The Dask client of this process: connected to ``scheduler`` (default ``RSGH_SCHEDULER``), else
    to a ``LocalCluster`` of single-threaded worker processes started on first use."""
    global _CLIENT
    from distributed import Client, LocalCluster

    scheduler = scheduler or os.environ.get("RSGH_SCHEDULER") or None
    if _CLIENT is not None and _CLIENT.status == "running":
        if scheduler is None or _CLIENT.scheduler.address == scheduler:
            return _CLIENT
        _close()  # and the local cluster it may have started
    if scheduler:
        _CLIENT = Client(scheduler, timeout="30s")
    else:
        # the workers' statistical profiler samples every thread 100 times a second: measurable on these
        # Python-bound training loops, and nobody looks at it here
        os.environ.setdefault("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False")
        cluster = LocalCluster(n_workers=workers_wanted(), threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
        _CLIENT = Client(cluster)
        atexit.register(_close)
    return _CLIENT


def _close() -> None:
    global _CLIENT
    if _CLIENT is not None:
        cluster = getattr(_CLIENT, "cluster", None)
        _CLIENT.close()
        if cluster is not None:
            cluster.close()
        _CLIENT = None


def n_workers(client) -> int:
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))


def resources(runtime: Runtime) -> dict | None:
    from ..train.step import pick_device

    on_gpu = runtime.device == "cuda" or (runtime.device == "auto" and pick_device("auto").type == "cuda")
    return {"GPU": 1} if on_gpu else None


def lockstep_groups(runs: Sequence[tuple[Config, Path]]) -> list[list[tuple[Config, Path]]]:
    """Runs grouped by everything that a lock-step group must share (all but the per-model fields)."""
    groups: dict[tuple, list] = {}
    for cfg, path in runs:
        shared = tuple((k, v) for k, v in cfg.to_dict().items() if k not in PER_MODEL) + (cfg.model_lr,)
        groups.setdefault(shared, []).append((cfg, path))
    return list(groups.values())


def train_runs(runs: Sequence[tuple[Config, Path]], data_root=None, runtime: Runtime = Runtime(progress=False),
               scheduler: str | None = None, parts: int | None = None, progress: bool = True) -> list[dict]:
    """Train every (configuration, run folder) pair that is not finished yet, on the cluster.

    Each lock-step group is dealt out into ``parts`` smaller groups (default: the cluster's number of
    workers), interleaved so that each mixes methods and seeds; a model ends where it ends in any
    group (``tests/test_group.py``), so the results do not depend on this. Returns the summaries in
    the order of ``runs``."""
    client = get_client(scheduler)
    parts = parts or n_workers(client)
    futures, order = [], []
    for members in lockstep_groups(runs):
        for part in (members[i::parts] for i in range(min(parts, len(members)))):
            futures.append(client.submit(train_part, [c for c, _ in part], [str(p) for _, p in part], data_root,
                                         runtime, pure=False, resources=resources(runtime)))
            order.append(part)
    summaries = {}
    for part, future in zip(order, futures):
        for (_, path), summary in zip(part, future.result()):  # re-raises a task's error here
            summaries[str(path)] = summary
        if progress:
            print(f"trained {', '.join(p.name for _, p in part)}", flush=True)
    return [summaries[str(p)] for _, p in runs]


def tune_worker_process(threads: int = 1) -> None:
    """Settings a worker process needs for training, whoever started it.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's mmap threshold
    at 128 KiB: every batch-sized tensor is then a fresh mmap, zeroed page by page (measured: 10x the
    page faults, 40% of the time in the kernel, half the steps per second). Raising both thresholds
    in the running process restores the default behaviour."""
    import ctypes
    import contextlib

    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (its maximum on 64-bit glibc)


def train_part(configs: list[Config], dirs: list[str], data_root, runtime: Runtime) -> list[dict]:
    """A Dask task: train (or resume, or reuse) one lock-step group in the worker's process."""
    from ..train.task import run_group

    tune_worker_process(runtime.threads)
    return run_group(configs, dirs, data_root, runtime, resume=True)
