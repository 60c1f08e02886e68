"""A training process killed with SIGKILL and resumed ends with exactly the weights of an
uninterrupted run, and a kill while a checkpoint is being written never damages the previous one."""

import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from rsgh.train.rundir import CHECKPOINT, PREVIOUS, RunDir

ITERATIONS, EVAL_EVERY = 400, 100


def train_cmd(out, data_root, *extra):
    return [sys.executable, "-m", "rsgh", "train", "--config", "e1-rsgh", "--set", "dataset=mnist",
            "--set", f"iterations={ITERATIONS}", "--set", f"eval_every={EVAL_EVERY}", "--out", str(out),
            "--data-root", str(data_root), "--quiet", *extra]


def checkpoint_iteration(run) -> int:
    try:
        return torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["state"]["iteration"]
    except Exception:  # not there yet (or being replaced right now)
        return -1


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_weights(tmp_path, mnist_root):
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    ref = subprocess.Popen(train_cmd(reference, mnist_root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.Popen(train_cmd(victim, mnist_root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while checkpoint_iteration(victim) < EVAL_EVERY:  # a checkpoint from inside the training loop
            assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = checkpoint_iteration(victim)
    assert not (victim / "model.pt").exists() and EVAL_EVERY <= killed_at < ITERATIONS, killed_at

    resumed = subprocess.run(train_cmd(victim, mnist_root, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait() == 0, ref.stderr.read()

    a = torch.load(reference / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(victim / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after kill at iteration {killed_at} and resume"
    # and the whole history, apart from the wall-clock column
    ma, mb = (pd.read_csv(r / "metrics.csv").drop(columns="elapsed_s") for r in (reference, victim))
    pd.testing.assert_frame_equal(ma, mb)


SLOW_WRITER = textwrap.dedent("""
    import io, os, sys, time
    from pathlib import Path
    import torch
    from rsgh import files
    from rsgh.train.rundir import RunDir

    def slow(write_all):
        # writes half of the bytes, says so, then waits to be killed
        def write(path):
            buf = io.BytesIO()
            write_all(buf)
            data = buf.getvalue()
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                print("half written", flush=True)
                time.sleep(120)
                fh.write(data[len(data) // 2:])
        return write

    out = Path(sys.argv[2])
    if sys.argv[1] == "atomic_write":
        files.atomic_write(out / "file.bin", slow(lambda fh: fh.write(b"new" * 100_000)))
    else:  # a checkpoint: save_checkpoint moves the current one aside, then writes the new one
        from rsgh.train import rundir
        rundir.atomic_write_file = lambda path, write_all: files.atomic_write(path, slow(write_all))
        RunDir(out).save_checkpoint({"state": {"iteration": 999}, "weights": torch.ones(50_000)})
""")


def kill_when_half_written(mode, folder):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, mode, str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "half written", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigkill_during_atomic_write_keeps_the_old_file(tmp_path):
    (tmp_path / "file.bin").write_bytes(b"old contents")
    kill_when_half_written("atomic_write", tmp_path)
    assert (tmp_path / "file.bin").read_bytes() == b"old contents"
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size < 300_000  # the half-written temp file


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path):
    old = {"model": {}, "optimizer": {}, "lambda": torch.zeros(1), "data_generator": torch.zeros(1),
           "noise_generator": torch.zeros(1), "state": {"iteration": 400}, "log": {"rows": [], "units": [], "best": {}},
           "weights": torch.arange(10.0)}
    torch.save(old, tmp_path / CHECKPOINT)
    saved = (tmp_path / CHECKPOINT).read_bytes()
    kill_when_half_written("checkpoint", tmp_path)
    assert (tmp_path / PREVIOUS).read_bytes() == saved  # moved aside intact
    (ckpt,) = RunDir(tmp_path).checkpoints("cpu").values()  # what --resume would load
    assert ckpt["state"]["iteration"] == 400 and torch.equal(ckpt["weights"], old["weights"])
    assert not (tmp_path / CHECKPOINT).exists()  # never a half-written file under the real name
