"""Faults on a real Dask cluster (a ``dask scheduler`` and two ``dask worker`` processes started here,
on ports the OS picks): a worker killed with SIGKILL in the middle of a training task costs nothing
but time (the scheduler reruns the task, the run resumes from its last checkpoint and ends with the
weights and metrics of an uninterrupted run), and a task that fails for a real error fails once,
promptly, with its own exception and message."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from rsgh.config import Runtime, make_config
from rsgh.train.rundir import CHECKPOINT, MODEL

DASK = str(Path(sys.executable).parent / "dask")
ITERATIONS, EVAL_EVERY, KILL_AFTER = 1200, 100, 300  # ~10 s of training per task, a checkpoint every 100 steps


def _wait_for(predicate, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        for p in procs:
            assert p.poll() is None, f"{what}: process {p.args} exited with {p.returncode}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.02)
    return value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, Popen objects, log folder) of a scheduler and two single-threaded workers, each
    worker under its nanny (which restarts a killed worker process)."""
    from distributed import Client

    logs = tmp_path_factory.mktemp("dask-logs")
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="False", PYTHONUNBUFFERED="1")
    env.pop("RSGH_SCHEDULER", None)
    procs, address = [], None

    def start(args, log):
        fh = open(logs / log, "w")
        procs.append(subprocess.Popen([DASK, *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                      cwd=logs, start_new_session=True))
        fh.close()

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0"], "scheduler.log")
        found = _wait_for(lambda: re.search(r"Scheduler at:\s+(tcp://[\d.]+:\d+)", (logs / "scheduler.log").read_text()),
                          120, "the scheduler's address", procs)
        address = found.group(1)
        assert not address.endswith(":8786")  # never the studies' cluster
        for i in range(2):
            start(["worker", address, "--nthreads", "1", "--nworkers", "1", "--dashboard-address", ":0",
                   "--name", f"faults-{i}", "--local-directory", str(logs / f"worker-{i}")], f"worker-{i}.log")
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=180)
        yield address, procs, logs
    finally:
        from rsgh.book import schedule

        if schedule._CLIENT is not None and getattr(schedule._CLIENT.scheduler, "address", None) == address:
            schedule._close()  # the client train_runs made
        for p in reversed(procs):  # workers (and their nannies) first, then the scheduler
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # its own session: only what this fixture started
                p.wait()


def _plan(root: Path) -> list:
    """Two models of one lock-step group (SGH seed 0, R-SGH seed 1), dealt into two tasks."""
    return [(make_config(None, dict(hidden_layers=1, bits=8, iterations=ITERATIONS, eval_every=EVAL_EVERY,
                                    method=method, seed=seed)), root / f"{method}-{seed}")
            for method, seed in (("sgh", 0), ("rsgh", 1))]


def _checkpoint_iteration(run: Path) -> int:
    try:
        return int(torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["state"]["iteration"])
    except Exception:  # not there yet, or being replaced right now
        return -1


def _holder(run: Path, pids) -> int | None:
    """Which of the worker processes ``pids`` holds the run folder's lock (is training it)."""
    lock = str((run / ".lock").resolve())
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == lock:
                    return pid
            except OSError:
                continue
    return None


def _processing_counts(client) -> Counter:
    """How many times each training task was sent to a worker (from the scheduler's transition log)."""
    log = client.run_on_scheduler(lambda dask_scheduler: [(str(t.key), t.finish)
                                                          for t in dask_scheduler.transition_log])
    return Counter(key for key, finish in log if finish == "processing" and key.startswith("train_part"))


@pytest.mark.slow
def test_a_worker_killed_mid_task_costs_only_time(cluster, tmp_path, mnist_root):
    from distributed import Client

    from rsgh.book.schedule import train_runs

    address, procs, _ = cluster
    runtime = Runtime(progress=False, device="cpu")
    reference = _plan(tmp_path / "reference")
    train_runs(reference, mnist_root, runtime, scheduler=address, parts=2, progress=False)

    victim_plan = _plan(tmp_path / "victim")
    with Client(address, timeout="60s") as watcher, concurrent.futures.ThreadPoolExecutor(1) as pool:
        before = _processing_counts(watcher)
        pids = watcher.run(os.getpid)  # {worker address: its process id}
        assert len(pids) == 2
        t0 = time.monotonic()
        plan = pool.submit(train_runs, victim_plan, mnist_root, runtime, address, 2, False)
        # a few checkpoints from inside the training loop in one of the runs, then its worker dies
        run = _wait_for(lambda: next((r for _, r in victim_plan if _checkpoint_iteration(r) >= KILL_AFTER), None),
                        300, "a checkpoint inside the training loop", procs)
        pid = _holder(run, pids.values())
        assert pid is not None, f"no worker process holds {run}/.lock"
        os.kill(pid, signal.SIGKILL)
        killed_at = _checkpoint_iteration(run)
        before_kill = pd.read_csv(run / "metrics.csv")
        assert KILL_AFTER <= killed_at < ITERATIONS and not (run / MODEL).exists(), killed_at
        summaries = plan.result(timeout=600)  # the plan finishes all the same
        seconds = time.monotonic() - t0
        rerun = _processing_counts(watcher) - before
        after = watcher.run(os.getpid)

    assert pid not in after.values()  # the killed worker process is gone (its nanny started a new one)
    assert len(rerun) == 2 and max(rerun.values()) >= 2, rerun  # the killed task was sent to a worker again
    assert [s["iterations"] for s in summaries] == [ITERATIONS, ITERATIONS]
    print(f"killed worker {pid} at iteration {killed_at} of {ITERATIONS} ({run.name}); plan finished in {seconds:.0f} s")

    for (_, ref), (_, vic) in zip(reference, victim_plan):
        a = torch.load(ref / MODEL, map_location="cpu", weights_only=True)["state_dict"]
        b = torch.load(vic / MODEL, map_location="cpu", weights_only=True)["state_dict"]
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{vic.name}: {name} differs from the uninterrupted run"
        ma, mb = (pd.read_csv(r / "metrics.csv").drop(columns="elapsed_s") for r in (ref, vic))
        pd.testing.assert_frame_equal(ma, mb)
        assert not (vic / CHECKPOINT).exists()

    # it resumed, not restarted: the rows logged before the kill are kept as they were, with their wall
    # times (a restart from scratch would have measured new ones)
    final = pd.read_csv(run / "metrics.csv")
    kept = before_kill[before_kill.iteration <= killed_at].reset_index(drop=True)
    assert len(kept) >= 2 and kept.elapsed_s.iloc[-1] > 0
    pd.testing.assert_frame_equal(final[final.iteration <= killed_at].reset_index(drop=True), kept)


@pytest.mark.slow
def test_a_task_with_a_real_error_fails_once_with_its_message(cluster, tmp_path):
    from distributed import Client

    from rsgh.book.schedule import train_runs

    address, procs, _ = cluster
    bad = make_config(None, dict(task="retrieval", dataset="folder", folder="/nonexistent", hidden_layers=1, bits=8,
                                 iterations=100))
    with Client(address, timeout="60s") as watcher:
        before = _processing_counts(watcher)
        t0 = time.monotonic()
        with pytest.raises(FileNotFoundError, match="image folder or archive /nonexistent does not exist"):
            train_runs([(bad, tmp_path / "bad")], None, Runtime(progress=False, device="cpu"), scheduler=address,
                       progress=False)
        seconds = time.monotonic() - t0
        tries = _processing_counts(watcher) - before
        workers = len(watcher.scheduler_info(n_workers=-1)["workers"])
    assert seconds < 60, f"the error took {seconds:.0f} s to come back"
    assert list(tries.values()) == [1], tries  # run once, not retried
    assert workers == 2  # an error in a task kills no worker
    assert all(p.poll() is None for p in procs)


def test_closing_a_cluster_that_never_finishes_closing_takes_bounded_time(monkeypatch):
    """A study interrupted with Ctrl-C in the middle of a call to the scheduler printed its line and then
    waited for ever in ``cluster.close()`` (Dask's default has no time limit): ``_close`` gives the client
    and then the cluster a limit each, and forgets the client."""
    import threading

    from rsgh.book import schedule

    class Hangs:
        def __init__(self):
            self.timeouts = []

        def close(self, timeout=None):
            self.timeouts.append(timeout)
            if timeout is None:
                threading.Event().wait()  # Dask's default: for ever
            raise TimeoutError

    client, cluster = Hangs(), Hangs()
    client.cluster = cluster
    monkeypatch.setattr(schedule, "_CLIENT", client)
    closing = threading.Thread(target=schedule._close, kwargs={"timeout": 0.1}, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "_close waited for ever"
    assert client.timeouts == [0.1] and cluster.timeouts == [0.1] and schedule._CLIENT is None
