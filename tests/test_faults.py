"""Trust and faults (issue 18): files received from someone else never run code, archives cannot
exhaust memory, every failure is one line naming the file or value and the fix (no traceback), and
nothing of the user's is overwritten or left behind.

Each case asserts the exit status, the one line on stderr and that nothing else changed on disk
(a snapshot of the folder before and after). The command-line cases of the fast lane call
``rsgh.cli.main`` in this process (the same handler as ``python -m rsgh``); those marked slow run
``python -m rsgh`` in a subprocess.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pathlib
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import rsgh
from rsgh import cli as rsgh_cli
from rsgh.config import Config, make_config
from rsgh.data.archives import decode_image
from rsgh.data.collections import load_image_folder
from rsgh.data.features import cached
from rsgh.data.task import TaskData
from rsgh.errors import BusyError
from rsgh.files import TMP_PREFIX
from rsgh.index import store
from rsgh.train import task as train_task
from rsgh.train.loop import train
from rsgh.train.rundir import CHECKPOINT, PREVIOUS, DamagedRunError, RunDir, read_runs
from rsgh.train.task import run_group

# ---------------------------------------------------------------------------------------------- helpers


class Payload:
    """Unpickling this creates ``marker``: what a hostile model, index or checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def poison(path: Path, marker: Path, bare: bool = False) -> None:
    """A model / checkpoint file whose unpickling runs code; checked to be live first."""
    obj = Payload(marker) if bare else {"config": Payload(marker), "state_dict": {}, "input_dim": 784,
                                        "model": {}, "state": {"iteration": 0}}
    torch.save(obj, path)
    torch.load(path, weights_only=False)  # the payload works: the marker appears ...
    assert marker.exists()
    marker.unlink()  # ... and is removed again, so that only rsgh could create it now


def snapshot(root: Path) -> dict:
    """Every file and folder under ``root`` (hidden ones too) with its bytes and mtime; a link with its
    target, a FIFO or device by its kind (never opened)."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        elif not p.is_file():
            out[rel] = ("special", p.lstat().st_mode)
        else:
            out[rel] = (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def one_line(err: str, *fragments: str) -> str:
    """The stderr of a failed command: one line, ``error: ...``, no traceback, holding ``fragments``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m rsgh ARGS`` in this process: (exit status, stdout, stderr)."""
    code = rsgh_cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def rsgh_process(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m rsgh ARGS`` in a subprocess."""
    environ = {k: v for k, v in os.environ.items() if k != "RSGH_DEBUG"}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "rsgh", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=environ, timeout=timeout)


def grey_images(root: Path, classes=("ant", "bee"), n=4, seed=0, names=None) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"{names or ''}{i}.png"
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / c / name)
    return root


def colour_images(root: Path, classes=("x", "y"), n=8, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.full((8, 8, 3), 60 + 120 * k)
            Image.fromarray(np.clip(base + rng.integers(-50, 50, (8, 8, 3)), 0, 255).astype(np.uint8)).save(
                root / c / f"{i}.png")
    return root


# A training of a few hundred milliseconds on a tiny labelled folder of 8 x 8 colour images.
TINY = dict(task="retrieval", dataset="folder", features="pixels", queries_per_class=2, bits=8, batch_size=4,
            iterations=20, eval_every=10, method="sgh")


def tiny_args(folder, out, *extra, **changes) -> list[str]:
    sets = [f"{k}={v}" for k, v in dict(TINY, folder=folder, **changes).items()]
    return ["train", *[a for s in sets for a in ("--set", s)], "--out", str(out), "--quiet", *extra]


def tiny_config(folder, **changes) -> Config:
    return make_config(None, dict(TINY, folder=str(folder), **changes))


class Stop(Exception):
    pass


def interrupted(folder, out: Path, **changes) -> Path:
    """A run of ``tiny_args(folder, out)`` stopped after its evaluation at iteration 10: checkpoint.pt
    (iteration 10) and checkpoint.prev.pt (iteration 0), no model."""
    def stop(g, row):
        if row["iteration"] >= 10:
            raise Stop

    with pytest.raises(Stop):
        run_group([tiny_config(folder, **changes)], [out], hooks=(stop,))
    assert (out / CHECKPOINT).exists() and (out / PREVIOUS).exists() and not (out / "model.pt").exists()
    return out


def weights(run: Path) -> dict:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (pd.read_csv(r / "metrics.csv").drop(columns="elapsed_s") for r in (a, b))
    pd.testing.assert_frame_equal(ma, mb)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RSGH_CACHE", str(tmp_path_factory.getbasetemp() / "rsgh-cache"))
    monkeypatch.delenv("RSGH_DEBUG", raising=False)
    monkeypatch.delenv("RSGH_MAX_IMAGE_BYTES", raising=False)


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """A finished 28 x 28 grey pixel run, a labelled image folder, a second one, and an index (one per
    session: the sibling test files import it; every test copies what it changes)."""
    tmp = tmp_path_factory.mktemp("shared")
    cfg = Config(task="retrieval", dataset="mnist", features="pixels", bits=8, hidden_layers=1, batch_size=16,
                 iterations=20, eval_every=10, feature_scaling="none")
    x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    run = tmp / "run"
    train(cfg, TaskData(x, x[:16]), run)
    images = grey_images(tmp / "images")
    more = grey_images(tmp / "more", classes=("cat", "dog"), seed=1)
    index = tmp / "index"
    store.encode(run, images, index, progress=False, quiet=True)
    return {"run": run, "images": images, "more": more, "index": index}


def poisoned_run(shared, tmp_path: Path, marker: Path, bare=False) -> Path:
    run = tmp_path / "received-run"
    shutil.copytree(shared["run"], run)
    poison(run / "model.pt", marker, bare)
    return run


def poisoned_index(shared, tmp_path: Path, marker: Path, bare=False) -> Path:
    """An index whose model copy is a payload, and whose manifest the sender rewrote to match it."""
    index = tmp_path / "received-index"
    shutil.copytree(shared["index"], index)
    poison(index / "model.pt", marker, bare)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["model"]["model_sha256"] = hashlib.sha256((index / "model.pt").read_bytes()).hexdigest()
    (index / "manifest.json").write_text(json.dumps(manifest))
    return index


def poisoned_checkpoint(shared, tmp_path: Path, marker: Path, bare=False) -> Path:
    """An unfinished run of the tiny configuration whose only checkpoint is a payload."""
    run = tmp_path / "received-unfinished"
    run.mkdir()
    (run / "config.json").write_text(tiny_config(shared["images"]).to_json())
    poison(run / CHECKPOINT, marker, bare)
    return run


# ---------------------------------------------------------------------------------------------- 1. security

# entry point: (how the received folder is made, the command, the file the error must name)
ENTRY_POINTS = {
    "encode --model": (poisoned_run, lambda s, f, t: ["encode", "--model", f, "--images", s["images"], "--out",
                                                      t / "new-index"], "model.pt"),
    "search --index": (poisoned_index, lambda s, f, t: ["search", "--index", f, s["images"] / "ant" / "0.png"],
                       "model.pt"),
    "evaluate --index": (poisoned_index, lambda s, f, t: ["evaluate", "--index", f, "--queries", s["images"]],
                         "model.pt"),
    "encode --out": (poisoned_index, lambda s, f, t: ["encode", "--images", s["more"], "--out", f], "model.pt"),
    "train --resume": (poisoned_checkpoint, lambda s, f, t: tiny_args(s["images"], f, "--resume"), CHECKPOINT),
}


@pytest.mark.parametrize("bare", [False, True], ids=["inside-a-model", "the-whole-file"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_received_files_run_no_code(shared, tmp_path, capsys, entry, bare):
    make, args, named = ENTRY_POINTS[entry]
    marker = tmp_path / "MARKER"
    folder = make(shared, tmp_path, marker, bare)
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, *args(shared, folder, tmp_path))
    assert not marker.exists(), f"{entry} ran the payload"
    assert code == 2
    one_line(err, str(folder / named), "never unpickles")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_received_files_run_no_code_from_the_command_line(shared, tmp_path, entry):
    make, args, named = ENTRY_POINTS[entry]
    marker = tmp_path / "MARKER"
    folder = make(shared, tmp_path, marker)
    before = snapshot(tmp_path)
    result = rsgh_process(*args(shared, folder, tmp_path), cwd=tmp_path)
    assert not marker.exists(), f"python -m rsgh {entry} ran the payload"
    assert result.returncode == 2, result.stderr
    one_line(result.stderr, str(folder / named), "never unpickles")
    assert snapshot(tmp_path) == before


def test_summarize_reads_no_pickle(shared, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "MARKER"
    run = poisoned_run(shared, tmp_path, marker)
    poison(run / CHECKPOINT, marker)
    poison(run / "best.pt", marker)

    def refuse(*args, **kwargs):
        raise AssertionError("summarize unpickled something")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    code, out, err = cli(capsys, "summarize", run)
    assert code == 0 and err == "" and run.name in out
    assert not marker.exists()


@pytest.mark.slow
def test_summarize_of_a_poisoned_run_from_the_command_line(shared, tmp_path):
    marker = tmp_path / "MARKER"
    run = poisoned_run(shared, tmp_path, marker)
    poison(run / CHECKPOINT, marker)
    result = rsgh_process("summarize", run)
    assert result.returncode == 0 and result.stderr == "" and run.name in result.stdout
    assert not marker.exists()


def test_notebook_reuse_of_a_poisoned_run_runs_no_code(shared, tmp_path):
    marker = tmp_path / "MARKER"
    run = poisoned_run(shared, tmp_path, marker)
    curves, finals = read_runs([run])  # summary, metrics and retrieval tables only: no pickle
    assert len(finals) == 1 and len(curves) > 0
    for load in (lambda: RunDir(run).load_model(), lambda: rsgh.load_model(run)):
        with pytest.raises(DamagedRunError, match=f"{run / 'model.pt'}.*never unpickles"):
            load()
    # a notebook (or reproduce, or a Dask worker) reusing its runs folder: a finished run is reused only
    # with a model that loads as plain data
    cfg = RunDir(run).read_config()
    x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    with pytest.raises(DamagedRunError, match=f"{run / 'model.pt'}.*never unpickles"):
        run_group([cfg], [run], resume=True, prepared=TaskData(x, x[:16]))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- 2. memory


def zip_with_member(path: Path, size: int, declared: int | None = None, level: int = 9) -> Path:
    """A zip of two classes whose member ``a/big.png`` is ``size`` zero bytes (highly compressible);
    ``declared``: the size its headers claim instead (a lying header)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        with zf.open("a/big.png", "w", force_zip64=size >= 1 << 31) as fh:
            chunk = bytes(1 << 22)
            for start in range(0, size, len(chunk)):
                fh.write(chunk[:size - start])
        for c in "ab":
            buf = io.BytesIO()
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, "PNG")
            zf.writestr(f"{c}/small.png", buf.getvalue())
    if declared is not None:  # rewrite the uncompressed size in the local header and the central directory
        data = bytearray(path.read_bytes())
        local = data.index(b"PK\x03\x04")
        central = data.index(b"PK\x01\x02")
        struct.pack_into("<I", data, local + 22, declared)
        struct.pack_into("<I", data, central + 24, declared)
        path.write_bytes(bytes(data))
    return path


def test_an_oversized_archive_member_is_refused_before_it_is_read(shared, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSGH_MAX_IMAGE_BYTES", str(1 << 20))
    bomb = zip_with_member(tmp_path / "bomb.zip", 8 << 20)
    assert bomb.stat().st_size < 100_000
    before = snapshot(tmp_path)
    for args in (tiny_args(bomb, tmp_path / "run"),
                 ["encode", "--model", shared["run"], "--images", bomb, "--out", tmp_path / "index", "--quiet"]):
        code, out, err = cli(capsys, *args)
        assert code == 2
        one_line(err, str(bomb), "a/big.png", "8,388,608 bytes", "limit of 1,048,576", "RSGH_MAX_IMAGE_BYTES")
        assert snapshot(tmp_path) == before  # neither the run folder nor the index was created


def test_a_member_whose_header_lies_about_its_size_is_read_no_further(shared, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSGH_MAX_IMAGE_BYTES", str(1 << 20))
    liar = zip_with_member(tmp_path / "liar.zip", 64 << 20, declared=1000)
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, "encode", "--model", shared["run"], "--images", liar, "--out", tmp_path / "index",
                         "--quiet")
    assert code == 2
    one_line(err, str(liar), "truncated or corrupt")
    assert snapshot(tmp_path) == before


def test_a_bad_limit_is_a_clear_error(shared, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSGH_MAX_IMAGE_BYTES", "lots")
    code, out, err = cli(capsys, "encode", "--model", shared["run"], "--images", shared["images"], "--out",
                         tmp_path / "index", "--quiet")
    assert code == 2
    one_line(err, "RSGH_MAX_IMAGE_BYTES='lots'", "positive integer")
    assert not (tmp_path / "index").exists()


@pytest.fixture(scope="module")
def gigabyte_bomb(tmp_path_factory):
    """The issue's archive: about 1 MB on disk, one member that inflates to 1 GiB."""
    return zip_with_member(tmp_path_factory.mktemp("bomb") / "bomb.zip", 1 << 30)


# The peak resident memory of this process alone: VmHWM belongs to the memory map made at exec, while
# getrusage's ru_maxrss carries over the parent's peak across fork and exec (in CI, pytest's own 1.2 GB).
MEASURED = ("import sys; from rsgh.cli import main; code = main(sys.argv[1:]); "
            "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:'))); "
            "sys.exit(code)")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "encode"])
def test_a_gigabyte_member_takes_no_gigabyte(shared, tmp_path, gigabyte_bomb, command):
    args = (tiny_args(gigabyte_bomb, tmp_path / "run") if command == "train" else
            ["encode", "--model", shared["run"], "--images", gigabyte_bomb, "--out", tmp_path / "index", "--quiet"])
    before = snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("RSGH_DEBUG", "RSGH_MAX_IMAGE_BYTES")}
    result = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 2
    one_line(result.stderr, "a/big.png", "1,073,741,824 bytes", "limit of 268,435,456", "RSGH_MAX_IMAGE_BYTES")
    peak_mib = int(result.stdout.split()[-1]) / 1024  # kB
    assert peak_mib < 500, f"peak memory {peak_mib:.0f} MiB"  # imports alone ~260 MiB; before: 2.4 GB
    assert snapshot(tmp_path) == before


def test_an_oversized_mnist_file_is_refused_unread(tmp_path, capsys, monkeypatch):
    import gzip

    monkeypatch.setenv("RSGH_MAX_IMAGE_BYTES", str(1 << 20))
    monkeypatch.setenv("RSGH_OFFLINE", "1")
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(raw / f"{stem}.gz", "wb") as fh:
            fh.write(bytes(8 << 20))
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "train", "--config", "e1-sgh", "--data-root", tmp_path / "data", "--out",
                       tmp_path / "run", "--quiet")
    assert code == 2
    one_line(err, str(raw), "more than 1,048,576 bytes", "RSGH_MAX_IMAGE_BYTES")
    assert snapshot(tmp_path) == before


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("side", [10_000, 20_000], ids=["over-the-limit", "over-twice-the-limit"])
def test_decompression_bombs_are_undecodable_images(shared, tmp_path, capsys, side):
    with pytest.raises(ValueError, match="too many pixels"):
        decode_image(png_declaring(side, side), "bomb.png")
    folder = grey_images(tmp_path / "images")
    (folder / "ant" / "bomb.png").write_bytes(png_declaring(side, side))
    # training data: skipped and counted, like any undecodable file
    with pytest.warns(UserWarning, match=r"skipped 1 undecodable files: ant/bomb\.png"):
        images = load_image_folder(folder)
    assert len(images) == 8
    # encode: skipped and reported with the reason
    code, out, err = cli(capsys, "encode", "--model", shared["run"], "--images", folder, "--out", tmp_path / "index")
    assert code == 0
    assert "skipped 1 undecodable file(s): ant/bomb.png (too many pixels" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- 3. bad values


@pytest.mark.parametrize("setting", ["lr=nan", "recon_sigma=inf", "tau=nan", "delta=-inf", "device=cuda"])
def test_bad_values_leave_no_folder(shared, tmp_path, capsys, monkeypatch, setting):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine, or any without CUDA
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, *tiny_args(shared["images"], tmp_path / "run", "--set", setting))
    assert code == 2
    line = one_line(err, setting.split("=")[0])
    assert "finite" in line or "no CUDA device" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_out_naming_a_file(shared, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    for out, fragment in ((tmp_path / "afile", "is a file, not a run folder"),
                          (tmp_path / "afile" / "run", "is a file, not a folder")):
        code, _, err = cli(capsys, *tiny_args(shared["images"], out))
        assert code == 2
        one_line(err, str(tmp_path / "afile"), fragment, "choose another")
    assert snapshot(tmp_path) == before


def test_a_read_only_out_parent(shared, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    before = snapshot(tmp_path)
    if os.geteuid() != 0:
        parent.chmod(0o500)
        expected = "not writable (permission denied)"
    else:  # root writes anywhere: a read-only filesystem, as mkdir reports it
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self == parent or parent in self.parents:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
        expected = "on a read-only filesystem"
    try:
        code, _, err = cli(capsys, *tiny_args(shared["images"], parent / "run"))
    finally:
        parent.chmod(0o700)
    assert code == 2
    one_line(err, str(parent), expected, "writable --out")
    assert snapshot(tmp_path) == before


def test_a_read_only_filesystem_is_said_before_the_data_are_loaded(shared, tmp_path, capsys, monkeypatch):
    real_statvfs = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.real = real_statvfs(path)

        def __getattr__(self, name):
            return os.ST_RDONLY if name == "f_flag" else getattr(self.real, name)

    monkeypatch.setattr(os, "statvfs", ReadOnly)
    monkeypatch.setattr(train_task, "task_data", lambda *a, **k: pytest.fail("the data were loaded"))
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *tiny_args(shared["images"], tmp_path / "run"))
    assert code == 2
    one_line(err, str(tmp_path), "on a read-only filesystem")
    assert snapshot(tmp_path) == before


def fail_writes_of(name: str, monkeypatch) -> None:
    """A full disk for files called ``name``: their fsync fails with ENOSPC, as a real disk's would."""
    real_fsync = os.fsync

    def fsync(fd):
        if name in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a file descriptor's file")
@pytest.mark.parametrize("name", ["units.csv", CHECKPOINT, "model.pt"])
def test_a_full_disk(shared, tmp_path, capsys, monkeypatch, name):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        fail_writes_of(name, m)
        code, _, err = cli(capsys, *tiny_args(shared["images"], run))
    assert code == 2
    one_line(err, str(run / name), "the disk is full", "free some space", "--resume")
    assert not (run / name).exists() and not list(run.glob(f"{TMP_PREFIX}*"))  # no half-written file
    # with space again, the same command with --resume finishes the run
    code, _, err = cli(capsys, *tiny_args(shared["images"], run, "--resume"))
    assert code == 0, err
    reference = tmp_path / "reference"
    assert cli(capsys, *tiny_args(shared["images"], reference))[0] == 0
    assert_same_run(reference, run)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a file descriptor's file")
def test_a_full_disk_while_encoding(shared, tmp_path, capsys, monkeypatch):
    index = tmp_path / "index"
    shutil.copytree(shared["index"], index)
    before = snapshot(tmp_path)
    with monkeypatch.context() as m:
        fail_writes_of("shard-00001.faissbin", m)
        code, _, err = cli(capsys, "encode", "--images", shared["more"], "--out", index, "--quiet")
    assert code == 2
    one_line(err, str(index / "shard-00001.faissbin"), "the disk is full", "free some space")
    assert snapshot(tmp_path) == before  # the index is what it was


@pytest.mark.parametrize("content,fragment", [
    ("[1, 2]", "expected a JSON object of configuration fields, got list"),
    ("\x00\xff garbage", "is not valid JSON"),
    ('{"colour": "red"}', "unknown configuration field(s) colour"),
])
@pytest.mark.parametrize("resume", [False, True])
def test_a_damaged_config_json(shared, tmp_path, capsys, content, fragment, resume):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(content)
    (run / "metrics.csv").write_text("epoch,iteration\n0,0\n")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *tiny_args(shared["images"], run, *(["--resume"] if resume else [])))
    assert code == 2
    line = one_line(err, str(run / "config.json"), fragment)
    assert "already holds a run" not in line and ("choose another --out" in line or "restore the file" in line)
    assert snapshot(tmp_path) == before


def drop_key(path: Path, key: str) -> None:
    ckpt = torch.load(path, weights_only=True)
    del ckpt[key]
    torch.save(ckpt, path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damage", [truncate, lambda p: drop_key(p, "optimizer")], ids=["truncated", "missing-key"])
def test_a_damaged_latest_checkpoint_resumes_from_the_previous(shared, tmp_path, capsys, damage):
    run = interrupted(shared["images"], tmp_path / "run")
    damage(run / CHECKPOINT)
    with pytest.warns(UserWarning, match=f"{run / CHECKPOINT}.*continuing from the other checkpoint"):
        code, _, err = cli(capsys, *tiny_args(shared["images"], run, "--resume"))
    assert code == 0, err
    reference = tmp_path / "reference"
    assert cli(capsys, *tiny_args(shared["images"], reference))[0] == 0
    assert_same_run(reference, run)  # resumed from iteration 0, bit for bit the uninterrupted run


@pytest.mark.parametrize("damage,fragment", [(truncate, "truncated or damaged"),
                                             (lambda p: drop_key(p, "optimizer"), "no optimizer entry")],
                         ids=["truncated", "missing-key"])
def test_both_checkpoints_damaged(shared, tmp_path, capsys, damage, fragment):
    run = interrupted(shared["images"], tmp_path / "run")
    damage(run / CHECKPOINT)
    damage(run / PREVIOUS)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *tiny_args(shared["images"], run, "--resume"))
    assert code == 2
    one_line(err, str(run / CHECKPOINT), str(run / PREVIOUS), fragment, "train it anew in another --out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("identity", [True, False], ids=["with-identity", "shapes-only"])
def test_a_checkpoint_of_another_run(shared, tmp_path, capsys, identity):
    run = interrupted(shared["images"], tmp_path / "run")
    other = interrupted(shared["images"], tmp_path / "other", bits=16)
    for name in (CHECKPOINT, PREVIOUS):
        shutil.copyfile(other / name, run / name)
        if not identity:  # a checkpoint written before checkpoints named their run
            drop_key(run / name, "identity")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *tiny_args(shared["images"], run, "--resume"))
    assert code == 2
    one_line(err, str(run), "does not belong to this run", "train it anew in another --out")
    assert snapshot(tmp_path) == before


def test_a_damaged_summary_or_metrics_table(shared, tmp_path, capsys):
    for file, content, fragment in [
        ("summary.json", lambda s: json.dumps({k: v for k, v in s.items() if k != "final"}), "no 'final'"),
        ("summary.json", lambda s: json.dumps(dict(s, final={})), "no 'final.recon_mse'"),
        ("summary.json", lambda s: "[]", "no 'config'"),
        ("metrics.csv", lambda s: "a,b\n1\n", "not an rsgh metrics table"),
        ("metrics.csv", lambda s: "\x00\xff\x00", "metrics.csv is not"),
    ]:
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(shared["run"], run)
        (run / file).write_text(content(json.loads((run / "summary.json").read_text())))
        before = snapshot(tmp_path)
        code, _, err = cli(capsys, "summarize", run)
        assert code == 2
        one_line(err, str(run / file), fragment)
        with pytest.raises(DamagedRunError, match=str(run / file)):
            read_runs([run])
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncated", "wrong-shape", "garbage"])
def test_a_damaged_feature_cache_is_detected_and_rebuilt(tmp_path, damage):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(4, 3)

    first = cached("test", ("key",), compute, shape=(4, 3), folder=tmp_path)
    (path,) = (tmp_path / "features").glob("test-*.npy")
    if damage == "truncated":
        truncate(path)
    elif damage == "wrong-shape":
        np.save(path, np.zeros((5, 3), np.float32))
    else:
        path.write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(UserWarning, match=f"feature cache {path} is damaged.*computing the features again"):
        again = cached("test", ("key",), compute, shape=(4, 3), folder=tmp_path)
    np.testing.assert_array_equal(again, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: read back without a warning and without computing
        np.testing.assert_array_equal(cached("test", ("key",), compute, shape=(4, 3), folder=tmp_path), first)
    assert len(calls) == 2


def test_resume_never_switches_data(tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    colour_images(a / "imgs", seed=0)
    colour_images(b / "imgs", seed=1)  # the same relative name elsewhere: other images
    run, reference = tmp_path / "run", tmp_path / "reference"
    monkeypatch.chdir(a)
    interrupted("imgs", run)  # folder=imgs, relative
    assert cli(capsys, *tiny_args("imgs", reference))[0] == 0
    # from another working directory, the same relative folder names other images: refused
    monkeypatch.chdir(b)
    before = snapshot(run)
    code, _, err = cli(capsys, *tiny_args("imgs", run, "--resume"))
    assert code == 2
    one_line(err, "--resume with a different configuration", f"folder: saved '{a / 'imgs'}' vs now '{b / 'imgs'}'")
    assert snapshot(run) == before
    # the same images named from there: resumed on exactly the same data
    code, _, err = cli(capsys, *tiny_args("../a/imgs", run, "--resume"))
    assert code == 0, err
    assert_same_run(reference, run)
    saved = [json.loads((r / "summary.json").read_text())["data_checksums"] for r in (run, reference)]
    assert saved[0] == saved[1]


def test_resume_refuses_data_changed_in_place(tmp_path, capsys, monkeypatch):
    folder = colour_images(tmp_path / "imgs")
    run = interrupted(folder, tmp_path / "run")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "x" / "new.png")
    monkeypatch.setattr(train_task, "_LOADED", {})  # a new process would read the folder again
    before = snapshot(run)
    code, _, err = cli(capsys, *tiny_args(folder, run, "--resume"))
    assert code == 2
    one_line(err, str(run), "the training data differ from those the run started on", "saved sha256:",
             "resume with the same data")
    assert snapshot(run) == before


def test_encode_never_overwrites_a_users_model(shared, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.pt").write_bytes(b"my own model, not an rsgh one")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "encode", "--model", shared["run"], "--images", shared["images"], "--out", mine)
    assert code == 2
    one_line(err, str(mine), "holds other files (model.pt)", "new or empty folder")
    assert snapshot(tmp_path) == before


def test_stale_temp_cleanup_removes_only_its_own_files(shared, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(shared["index"], index)
    (index / ".important.tmp").write_text("the user's")
    (index / f"{TMP_PREFIX}manifest.json.abc.tmp").write_text("left by a killed encode")
    code, out, err = cli(capsys, "encode", "--images", shared["more"], "--out", index, "--quiet")
    assert code == 0, err
    assert (index / ".important.tmp").read_text() == "the user's"
    assert not list(index.glob(f"{TMP_PREFIX}*"))


def test_one_class_is_refused(shared, tmp_path, capsys):
    folder = colour_images(tmp_path / "imgs", classes=("only",))
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *tiny_args(folder, tmp_path / "run"))
    assert code == 2
    one_line(err, str(folder), "one class (only)", "at least two classes", "mAP is 1.0")
    assert snapshot(tmp_path) == before
    # an index of one class cannot be evaluated either
    index = tmp_path / "index"
    assert cli(capsys, "encode", "--model", shared["run"], "--images", shared["images"] / "ant", "--out", index,
               "--quiet")[0] == 0
    shutil.rmtree(index)
    grey_images(tmp_path / "one", classes=("ant",))
    assert cli(capsys, "encode", "--model", shared["run"], "--images", tmp_path / "one", "--out", index,
               "--quiet")[0] == 0
    code, _, err = cli(capsys, "evaluate", "--index", index, "--queries", shared["images"])
    assert code == 2
    one_line(err, str(index), "one class only", "at least two")


def test_a_run_folder_in_use_is_refused(shared, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with RunDir(run).lock():  # another process training into it (an flock conflicts across open files)
        before = snapshot(tmp_path)
        for extra in ([], ["--resume"]):
            code, _, err = cli(capsys, *tiny_args(shared["images"], run, *extra))
            assert code == 2
            one_line(err, str(run), "in use by another process (a training)", "wait for it to finish")
        assert snapshot(tmp_path) == before
    with pytest.raises(BusyError):
        with RunDir(run).lock(), RunDir(run).lock():
            pass


@pytest.mark.slow
def test_two_trainings_on_one_out(shared, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(shared["images"], run, iterations=10**7, eval_every=10**7)
    first = subprocess.Popen([sys.executable, "-m", "rsgh", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / CHECKPOINT).exists():  # config.json, then the evaluation at iteration 0
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first training wrote no checkpoint in 120 s"
            time.sleep(0.05)
        before = snapshot(tmp_path)
        second = rsgh_process(*args)
        assert second.returncode == 2
        one_line(second.stderr, str(run), "in use by another process (a training)")
        assert snapshot(tmp_path) == before
        assert first.poll() is None  # the first goes on
    finally:
        first.kill()
        first.wait()


def test_a_bad_second_out_leaves_the_first_uncreated(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    second.mkdir()
    (second / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    for bad, fragment in ((second, "holds files that are not a run (notes.txt)"),
                          (tmp_path / "afile", "is a file, not a run folder")):
        code, _, err = cli(capsys, "train", "--config", "e1-sgh", "e1-rsgh", "--out", first, bad, "--quiet")
        assert code == 2
        one_line(err, str(bad), fragment, "choose another --out")
        assert snapshot(tmp_path) == before and not first.exists()


def test_out_holding_a_users_file_says_so(shared, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / ".hidden").write_text("mine too")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *tiny_args(shared["images"], out))
    assert code == 2
    line = one_line(err, str(out), "holds files that are not a run (.hidden, notes.txt)", "choose another --out")
    assert "already holds a run" not in line
    assert snapshot(tmp_path) == before


def test_summarize_every(shared, capsys):
    code, out, err = cli(capsys, "summarize", shared["run"], "--every", "0")
    assert code == 0 and err == ""
    assert len(out.strip().splitlines()) == 2  # the table's header and its one row: no curves
    code, out, err = cli(capsys, "summarize", shared["run"], "--every", "1")
    assert code == 0 and "recon_mse" in out and len(out.strip().splitlines()) > 4
    code, out, err = cli(capsys, "summarize", shared["run"], "--every", "-1")
    assert code == 2 and out == ""
    one_line(err, "--every must be 0 (no curves) or a positive number", "got -1")


def test_a_bug_is_one_line_and_its_traceback_shows_with_rsgh_debug(shared, capsys, monkeypatch):
    def bug(args):
        raise RuntimeError("something rsgh did wrong")

    monkeypatch.setattr(rsgh_cli, "cmd_summarize", bug)
    code, _, err = cli(capsys, "summarize", shared["run"])
    assert code == 3
    assert err.strip().startswith("internal error (RuntimeError: something rsgh did wrong)")
    assert len(err.strip().splitlines()) == 1 and "RSGH_DEBUG=1" in err
    monkeypatch.setenv("RSGH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="something rsgh did wrong"):
        rsgh_cli.main(["summarize", str(shared["run"])])
