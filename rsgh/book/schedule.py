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
ask for the worker resource ``GPU=1`` on a cluster whose workers declare it (start GPU workers with
``dask worker ... --resources GPU=1``), so that a GPU worker runs one at a time; the local cluster's
workers share this machine's GPU (``make reproduce DEVICE=cuda``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import statistics
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
    to a ``LocalCluster`` of single-threaded worker processes started on first use (:func:`local_cluster`:
    TLS with temporary credentials, on 127.0.0.1)."""
    global _CLIENT
    from distributed import Client

    scheduler = scheduler or os.environ.get("RSGH_SCHEDULER") or None
    if _CLIENT is not None and _CLIENT.status == "running":
        if scheduler is None or _CLIENT.scheduler.address == scheduler:
            return _CLIENT
        _close()  # and the local cluster it may have started
    if scheduler:
        _CLIENT = Client(scheduler, timeout="30s", security=shared_security(scheduler))
    else:
        cluster, security = local_cluster()
        _CLIENT = Client(cluster, security=security)
        share_credentials(security)
        atexit.register(_close)
    return _CLIENT


# The local cluster's door. Dask's scheduler runs any function a connected client sends it, so a
# scheduler reachable without credentials lets every process of the machine run code as this user.
# The local cluster speaks TLS with credentials made for it alone (distributed.Security.temporary():
# a self-signed certificate and key, in memory), on 127.0.0.1, and every connection must present them.
# Dask's HTTP servers (the dashboard; the scheduler's and workers' /info, /metrics and /health pages)
# serve nothing unless RSGH_DASHBOARD=1, and then the dashboard listens on 127.0.0.1 only.
TLS_VAR = "RSGH_SCHEDULER_TLS"  # a private folder with the credentials, for this process's children
DASHBOARD_VAR = "RSGH_DASHBOARD"


def local_cluster():
    """(a started ``LocalCluster``, its ``Security``): ``RSGH_WORKERS`` single-threaded worker processes."""
    import dask
    from distributed import LocalCluster, Security

    security = Security.temporary()
    dashboard = os.environ.get(DASHBOARD_VAR, "").strip().lower() in ("1", "true", "yes")
    closed = {} if dashboard else {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}
    http = {} if dashboard else {"scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}}  # any free port, no pages
    with dask.config.set({**quiet_settings(), **closed}), _workers_ignore_ctrl_c():  # the nannies pass these on
        cluster = LocalCluster(n_workers=workers_wanted(), threads_per_worker=1, processes=True, protocol="tls",
                               host="127.0.0.1", security=security, silence_logs=logging.ERROR,
                               dashboard_address="127.0.0.1:0" if dashboard else None, **http)
    if dashboard:
        print(f"Dask dashboard (this machine only): {cluster.dashboard_link}", flush=True)
    return cluster, security


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Start the worker processes with SIGINT ignored (a disposition they inherit): Ctrl-C in a terminal
    reaches every process of its group, and the workers, interrupted mid-task, printed their tracebacks and
    the resource tracker's warnings after the command's one line. This process alone is interrupted,
    and it closes the cluster."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def share_credentials(security) -> Path:
    """Write the local cluster's credentials into a private folder (0700, files 0600, removed at exit)
    named by ``RSGH_SCHEDULER_TLS``, so that this process's children (the notebooks' kernels of
    ``reproduce``, which inherit ``RSGH_SCHEDULER``) can connect; no other user can read them."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="rsgh-dask-tls-"))  # mode 0700
    for name, text in (("ca.pem", security.tls_ca_file), ("cert.pem", security.tls_client_cert),
                       ("key.pem", security.tls_client_key)):
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    os.environ[TLS_VAR] = str(folder)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def shared_security(scheduler: str):
    """The credentials for a ``tls://`` scheduler that a parent process shared (:func:`share_credentials`),
    else None: Dask's own configuration (``distributed.comm.tls.*``, see the README) applies."""
    folder = os.environ.get(TLS_VAR)
    if not scheduler.startswith("tls://") or not folder or not Path(folder, "key.pem").is_file():
        return None
    from distributed import Security

    return Security(require_encryption=True, tls_ca_file=str(Path(folder, "ca.pem")),
                    tls_client_cert=str(Path(folder, "cert.pem")), tls_client_key=str(Path(folder, "key.pem")))


# Dask's periodic work that a local cluster of training workers does without. Measured with two workers
# training (per-thread CPU time over 10 s): the event loops of the scheduler and the workers took 11% of a
# core with Dask's defaults, 2% with these. The statistical profiler samples the training thread's stack
# 100 times a second, each time taking the GIL from it; the 20 ms health tick of every event loop was the
# largest of the rest; the system and memory monitors poll psutil 2 and 10 times a second.
QUIET = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def quiet_settings() -> dict:
    """The :data:`QUIET` settings that the user's Dask configuration leaves at Dask's defaults (a value
    set in a Dask config file or a ``DASK_*`` variable is kept). A nanny hands its worker process the
    configuration it was created with, so setting them around the cluster's start reaches the workers
    (a ``DASK_*`` variable set in this process after Dask was imported would not)."""
    import dask

    defaults = dask.config.merge(*dask.config.defaults)
    return {k: v for k, v in QUIET.items() if dask.config.get(k) == dask.config.get(k, config=defaults)}


CLOSE_TIMEOUT = 30.0  # seconds for the client and then the local cluster to close


def _close(timeout: float = CLOSE_TIMEOUT) -> None:
    """Close the client and the local cluster it started, each within ``timeout`` seconds. A study
    interrupted with Ctrl-C in the middle of a call to the scheduler printed its one line and then waited
    for ever in ``cluster.close()`` (Dask's default has no time limit); past the limit the worker
    processes, which are this process's children, end with it."""
    global _CLIENT
    if _CLIENT is not None:
        cluster = getattr(_CLIENT, "cluster", None)
        client, _CLIENT = _CLIENT, None
        for closing in (client, cluster):
            if closing is None:
                continue
            try:
                closing.close(timeout=timeout)
            except (TimeoutError, OSError, RuntimeError):  # asyncio's TimeoutError is TimeoutError (3.11)
                pass


def n_workers(client) -> int:
    return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))


def resources(runtime: Runtime, client=None) -> dict | None:
    """The worker resources that a task of ``runtime`` asks for: ``GPU=1`` on a CUDA device, so that a
    GPU worker of a cluster runs one such task at a time; none with a ``client`` whose workers declare no
    GPU (a local cluster: its workers share this machine's GPU, and a task asking for one would wait
    for ever)."""
    from ..train.step import pick_device

    on_gpu = runtime.device == "cuda" or (runtime.device == "auto" and pick_device("auto").type == "cuda")
    if on_gpu and client is not None:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        on_gpu = any(((w or {}).get("resources") or {}).get("GPU", 0) for w in workers)
    return {"GPU": 1} if on_gpu else None


def lockstep_groups(runs: Sequence[tuple[Config, Path]]) -> list[list[tuple[Config, Path]]]:
    """Runs grouped by everything that a lock-step group must share (all but the per-model fields)."""
    groups: dict[tuple, list] = {}
    for cfg, path in runs:
        shared = tuple((k, v) for k, v in cfg.to_dict().items() if k not in PER_MODEL) + (cfg.model_lr,)
        groups.setdefault(shared, []).append((cfg, path))
    return list(groups.values())


MEASURE_FROM = 100_000  # model-steps of a group from which group_split='auto' measures the split


def train_runs(runs: Sequence[tuple[Config, Path]], data_root=None, runtime: Runtime = Runtime(progress=False),
               scheduler: str | None = None, parts: int | None = None, progress: bool = True) -> list[dict]:
    """Train every (configuration, run folder) pair that is not finished yet, on the cluster; returns
    the summaries in the order of ``runs``. ``parts``: every lock-step group dealt into that many
    parts, else as ``runtime.group_split`` says (:func:`plan_parts`)."""
    client = get_client(scheduler)
    summaries = {}
    todo = plan_parts(client, runs, data_root, runtime, parts, progress)
    for i, future in in_turn(client, [part_call(part, data_root, runtime) for part in todo],
                             resources(runtime, client)):
        for (_, path), summary in zip(todo[i], future.result()):  # re-raises a task's error here
            summaries[str(path)] = summary
        if progress:
            print(f"trained {', '.join(p.name for _, p in todo[i])}", flush=True)
    return [summaries[str(p)] for _, p in runs]


def part_call(part: Sequence[tuple[Config, Path]], data_root, runtime: Runtime) -> tuple:
    """The task that trains one part, as :func:`in_turn` takes it."""
    return (train_part, [c for c, _ in part], [str(p) for _, p in part], data_root, runtime)


def in_turn(client, calls: Sequence[tuple], resources: dict | None = None):
    """Run ``calls`` (each ``(function, *arguments)``) on the cluster in the order given, each one
    submitted when a worker's thread is free; yields (its index, its finished future) as each ends.

    Submitting all at once with Dask's priorities does not keep this order: the scheduler hands a
    worker tasks before it needs them (every task of a batch of at most twice the threads, else one
    more than its threads), and a worker runs the tasks it holds, so a short task can start before a
    long one that another worker takes later (measured on 2 workers: tasks of 2.0, 0.4, 1.2, 0.4 and
    0.2 s, submitted with falling priorities, ended after 2.4 to 3.2 s, against 2.2 s in this order;
    at paper scale the baselines started before the 32-bit pair). Here the number of tasks out is the
    cluster's threads, read again after each task (a cluster that grows gets more). A task that
    dies with its worker is run again by the scheduler, as before."""
    from distributed import as_completed

    todo, index = list(enumerate(calls))[::-1], {}
    running = as_completed()

    def submit_more():
        threads = max(1, sum(client.nthreads().values()))
        while todo and sum(not f.done() for f in index.values()) < threads:
            i, (fn, *args) = todo.pop()
            future = client.submit(fn, *args, pure=False, resources=resources)
            index[i] = future
            running.add(future)

    submit_more()
    for future in running:
        submit_more()
        i = next(i for i, f in index.items() if f is future)
        del index[i]
        yield i, future


def plan_parts(client, runs: Sequence[tuple[Config, Path]], data_root=None, runtime: Runtime = Runtime(progress=False),
               parts: int | None = None, progress: bool = False) -> list[list[tuple[Config, Path]]]:
    """The parts to train ``runs`` in, each a list of (configuration, folder) pairs trained as one
    lock-step group, in the order to run them (:func:`in_turn`).

    A group is dealt into parts interleaved, so that each mixes methods and seeds; a model ends
    where it ends in any group (``tests/test_group.py``), so the results do not depend on the split.
    With ``runtime.group_split`` 'measure' (or 'auto', a local cluster of CPU workers and a group of
    100,000 model-steps or more) the split of every group with unfinished runs is chosen together
    from a short measurement of the step on the workers (:func:`measured_splits`) and the parts are
    ordered longest first; with 'auto' on a CUDA device each group is one part (a GPU steps a whole
    group at about the rate of a lone model), the groups on several workers at once; else each group is
    dealt into one part per worker (``parts`` overrides all), in the order given."""
    from ..train.rundir import RunDir

    # each group's unfinished runs first: the split is measured and dealt for them; the finished ones
    # (whose tasks only read them back, or write a missing retrieval report) follow in the same parts
    done = {str(p) for _, p in runs if RunDir(p).is_finished()}
    groups = [sorted(g, key=lambda r: str(r[1]) in done) for g in lockstep_groups(runs)]
    todo = {i: [r for r in g if str(r[1]) not in done] for i, g in enumerate(groups)}
    todo = {i: u for i, u in todo.items() if u}
    workers = n_workers(client)
    plan = {}  # index of a group -> (parts, seconds of each part)
    local = getattr(client, "cluster", None) is not None
    if parts is None and todo and _measure(list(todo.values()), runtime, data_root, local):
        shapes = [([c for c, _ in u], *_steps(u[0][0], data_root)) for u in todo.values()]
        for (i, u), chosen in zip(todo.items(), measured_splits(shapes, workers, runtime, client=client)):
            plan[i] = chosen
            if progress:
                cfg = u[0][0]
                print(f"{len(u)} models ({cfg.dataset}, {cfg.bits} bits): {chosen[0]} part(s) of about "
                      f"{', '.join(f'{s / 60:.1f}' for s in chosen[1])} min (measured)", flush=True)
    whole = runtime.group_split == "auto" and resources(runtime) is not None  # on a GPU
    jobs = []
    for i, g in enumerate(groups):
        k, seconds = plan.get(i, (parts or (1 if whole else workers), None))
        for n, part in enumerate(g[j::k] for j in range(min(k, len(g)))):
            jobs.append((seconds[n] if seconds and n < len(seconds) else 0.0, part))
    return [part for _, part in sorted(jobs, key=lambda j: -j[0])]  # longest first (a stable sort: else as given)


def _steps(cfg: Config, data_root) -> tuple[int, int]:
    """(input dimension, training steps) of a configuration, from its data (loaded once per process)."""
    from ..train.task import task_data

    x = task_data(cfg, data_root, progress=False).train_x
    return x.shape[1], cfg.iterations if cfg.iterations > 0 else cfg.epochs * (len(x) // cfg.batch_size)


def _measure(groups, runtime: Runtime, data_root, local: bool) -> bool:
    """``group_split`` 'measure', or 'auto' on a local cluster of CPU workers (alike: what one measures
    holds for all) where some group trains MEASURE_FROM model-steps or more (a training
    given in iterations is counted without loading its data)."""
    if runtime.group_split != "auto":
        return runtime.group_split == "measure"
    if not local or resources(runtime) is not None:
        return False
    for g in groups:
        cfg = g[0][0]
        if len(g) * (cfg.iterations if cfg.iterations > 0 else _steps(cfg, data_root)[1]) >= MEASURE_FROM:
            return True
    return False


def measured_splits(groups: Sequence[tuple[Sequence[Config], int, int]], workers: int, runtime: Runtime,
                    seconds: float = 1.5, client=None) -> list[tuple[int, list[float]]]:
    """For each lock-step group, given as (its configurations, input dimension, training steps), the
    number of parts to deal it into and each part's expected seconds: the model-steps/s and warm-up
    (compilation) of the step at each candidate group size, the sizes timed in turns for about
    ``seconds`` each (:func:`measure_stage`) with a yardstick, by whose rates the stages are put on one
    scale (``rsgh.train.step.yardstick``), then the split of all groups together that finishes
    first on ``workers`` processes, the least work among those within a few per cent of it
    (``rsgh.train.step.best_splits``). With a ``client``, each group is
    measured on a worker, several at once (:func:`in_turn`); else here, one after the other."""
    from ..train import step

    def sizes(cfgs):  # the largest group of each candidate split
        return sorted({step.part_sizes(len(cfgs), p)[0] for p in step.candidate_parts(len(cfgs), workers)})

    jobs = [(list(cfgs), dim, sizes(cfgs), runtime, seconds) for cfgs, dim, _ in groups]
    if client is None:
        measured = [measure_stage(*job) for job in jobs]
    else:
        measured = [None] * len(jobs)
        for i, future in in_turn(client, [(measure_stage, *job, True) for job in jobs],
                                 resources(runtime, client)):
            measured[i] = future.result()
    # on one scale: each stage's rates as if measured when the yardstick ran at its median rate
    scale = statistics.median(y for _, _, y in measured)
    stages = [(len(cfgs), steps, {s: r * scale / y for s, r in rates.items()}, warm)
              for (cfgs, _, steps), (rates, warm, y) in zip(groups, measured)]
    return [(p, step.part_durations(*st[:2], p, *st[2:])) for st, p in zip(stages, step.best_splits(stages, workers))]


def measure_stage(configs: list[Config], input_dim: int, sizes: list[int], runtime: Runtime, seconds: float,
                  on_worker: bool = False) -> tuple[dict, dict, float]:
    """({size: model-steps/s}, {size: warm-up seconds}, the yardstick's calls/s) of a stage's step at
    group ``sizes`` (``rsgh.train.step.stage_rates``); ``on_worker``: a Dask task, in a worker set up to train
    (:func:`tune_worker_process`), else here, with this process's thread count left as it was."""
    import torch

    from ..train import step

    if on_worker:
        tune_worker_process(runtime.threads)
    threads = torch.get_num_threads()
    try:
        return step.stage_rates(configs, input_dim, sizes, runtime, seconds)
    finally:
        torch.set_num_threads(threads)  # stage_rates sets the runtime's


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
