"""Trust, second pass (issue 36): the command line and the values it takes.

- argparse mistakes are one line and a pointer to ``--help``; an option given twice is refused or,
  for the lists (``--config``, ``--out``, ``--only``), honoured; ``~`` is expanded in every path;
- every value is checked in its real domain before a folder is made; a training whose losses become
  NaN or infinite stops with an error naming the epoch and the value (exit 2, not 0);
- lock files are opened without following links, and only regular files are read (a FIFO named
  ``*.png`` is skipped or refused, never waited on);
- names from received files are printed without their escape sequences, newlines or bidi overrides.

Each case checks the exit status, the one line on stderr and a snapshot of the folder before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rsgh import cli as rsgh_cli
from rsgh.paths import BOOK
from test_faults import _own_cache, cli, colour_images, grey_images, one_line, shared, snapshot, tiny_args  # noqa: F401


@pytest.fixture
def alarm():
    """Fail instead of hanging: a read that blocks (a FIFO) ends the test after 60 s."""
    def hung(signum, frame):
        raise TimeoutError("the command hung (it waited on a FIFO?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------- argparse


@pytest.mark.parametrize("args,fragment", [
    (["train", "--config", "e1-sgh"], "the following arguments are required: --out"),
    (["train", "--out", "x", "--colour", "red"], "unrecognized arguments: --colour red"),
    (["train", "--config", "e9", "--out", "x"], "argument --config: invalid choice: 'e9'"),
    ([], "the following arguments are required: command"),
    (["encode", "--images", "a", "--images", "b", "--out", "c"], "argument --images: given twice"),
    (["train", "--out", "a", "--data-root", "x", "--data-root", "y"], "argument --data-root: given twice"),
    (["search", "--index", "i", "q.png", "--top", "ten"], "argument --top: invalid int value: 'ten'"),
])
def test_argparse_mistakes_are_one_line_with_a_hint(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        rsgh_cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    line = one_line(err, fragment, "--help'")
    assert "usage:" not in err and line.endswith("--help'")
    assert snapshot(tmp_path) == {}


def test_lists_given_twice_are_honoured(tmp_path, capsys):
    parse = rsgh_cli.build_parser().parse_args
    args = parse(["train", "--config", "e1-sgh", "--config", "e1-rsgh", "--out", "a", "--out", "b"])
    assert args.config == ["e1-sgh", "e1-rsgh"] and args.out == ["a", "b"]
    assert parse(["reproduce", "--only", "a", "--only", "b", "c"]).only == ["a", "b", "c"]
    # two configs and one folder: the count is said, nothing is trained into B alone
    code, _, err = cli(capsys, "train", "--config", "e1-sgh", "--config", "e1-rsgh", "--out", tmp_path / "a")
    assert code == 2
    one_line(err, "2 config(s) but 1 --out folder(s)")
    assert snapshot(tmp_path) == {}


def test_a_tilde_is_expanded_in_every_path(shared, tmp_path, capsys, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    colour_images(home / "images")
    code, _, err = cli(capsys, *tiny_args("~/images", "~/run"))
    assert code == 0, err
    assert (home / "run" / "model.pt").exists()
    code, _, err = cli(capsys, "encode", "--model", "~/run", "--images", "~/images", "--out", "~/index", "--quiet")
    assert code == 0, err
    assert (home / "index" / "manifest.json").exists()
    assert snapshot(work) == {}  # no literal "~" folder in the working directory
    assert not list(Path(work).glob("*~*"))


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("setting,fragment", [
    ("seed=1180591620717411303424", "seed=1180591620717411303424 is outside its range, 0 to 9223372036854775807"),
    ("data_seed=-1", "data_seed=-1 is outside its range"),
    ("threads=1000000", "threads=1000000 is more than"),
    ("recon_sigma=1e-300", "recon_sigma=1e-300 is outside its range, 1e-06 to 1e+06"),
    ("prior=1e-9", "prior=1e-09 is outside its range"),
    ("lr=1e39", "lr=1e+39 is not a normal float32 number"),
    ("tau=1e-45", "tau=1e-45 is not a normal float32 number"),
    ("bits=20000", "bits=20000 is outside its range, 1 to 4096"),
    ("hidden_layers=200000", "hidden_layers=200000 is outside its range"),
    ("iterations=18446744073709551616", "larger than a 64-bit integer"),
])
def test_values_outside_their_domain_leave_no_folder(shared, tmp_path, capsys, setting, fragment):
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, *tiny_args(shared["images"], tmp_path / "run", "--set", setting))
    assert code == 2
    one_line(err, fragment)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_diverging_training_stops_with_the_epoch_and_the_value(shared, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(capsys, *tiny_args(shared["images"], run, "--set", "lr=1e30"))
    assert code == 2 and out == ""
    one_line(err, str(run), "the training diverged", "train_loss became nan", "by epoch", "(iteration 10)",
             "lower lr (now 1e+30)")
    # nothing of the diverged evaluation was written: the log and checkpoint are those of iteration 0
    assert pd.read_csv(run / "metrics.csv")["iteration"].tolist() == [0]
    assert not (run / "model.pt").exists() and not (run / "summary.json").exists()


# ---------------------------------------------------------------------------------------------- links and FIFOs


def test_a_lock_that_is_a_link_is_not_followed(shared, tmp_path, capsys):
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    index = tmp_path / "index"
    shutil.copytree(shared["index"], index)
    (index / ".lock").unlink(missing_ok=True)
    (index / ".lock").symlink_to(victim)
    before = snapshot(tmp_path)
    for args, folder in ((tiny_args(shared["images"], run), run),
                         (tiny_args(shared["images"], run, "--resume"), run),
                         (["encode", "--images", shared["more"], "--out", index, "--quiet"], index)):
        code, _, err = cli(capsys, *args)
        assert code == 2
        one_line(err, str(folder / ".lock"), "is a symbolic link, not rsgh's lock file", "remove it")
        assert not victim.exists() and snapshot(tmp_path) == before


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_named_png_is_skipped_in_a_folder(shared, tmp_path, capsys, alarm):
    images = tmp_path / "images"
    shutil.copytree(shared["images"], images)
    fifo(images / "ant" / "evil.png")
    with pytest.warns(UserWarning, match=r"skipped 1 entries that are not regular files.*ant/evil\.png"):
        code, _, err = cli(capsys, "encode", "--model", shared["run"], "--images", images, "--out",
                           tmp_path / "index", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["count"] == 8
    folder = colour_images(tmp_path / "colour")
    fifo(folder / "x" / "evil.png")
    with pytest.warns(UserWarning, match="not regular files"):
        code, _, err = cli(capsys, *tiny_args(folder, tmp_path / "run"))
    assert code == 0, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_given_as_a_file_is_refused(shared, tmp_path, capsys, alarm):
    pipe = fifo(tmp_path / "query.png")
    archive = fifo(tmp_path / "images.zip")
    before = snapshot(tmp_path)
    for args, named in ((["search", "--index", shared["index"], pipe], pipe),
                        (["encode", "--model", shared["run"], "--images", pipe, "--out", tmp_path / "i"], pipe),
                        (["encode", "--model", shared["run"], "--images", archive, "--out", tmp_path / "i"], archive),
                        (tiny_args(archive, tmp_path / "run"), archive)):
        code, _, err = cli(capsys, *args)
        assert code == 2
        one_line(err, str(named), "is a FIFO (named pipe), not a regular")
        assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- names


EVIL = "a\x1b[2J\x1b]0;owned\x07\nb\u202egnp.exe"


def test_names_from_received_files_are_printed_safely(shared, tmp_path, capsys):
    images = grey_images(tmp_path / "images")
    evil = images / f"cls{EVIL}"
    evil.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(evil / f"{EVIL}.png", "PNG")
    index = tmp_path / "index"
    code, out, err = cli(capsys, "encode", "--model", shared["run"], "--images", images, "--out", index, "--quiet")
    assert code == 0, err
    code, out, err = cli(capsys, "search", "--index", index, evil / f"{EVIL}.png", "--top", "3")
    assert code == 0, err
    for text in (out, err):
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "\\x1b[2J" in out and "\\u202e" in out
    assert len([line for line in out.splitlines() if line.strip().startswith("1 ")]) == 1  # no line broken in two
    # an error naming such a path is one line, escaped
    code, _, err = cli(capsys, "search", "--index", tmp_path / EVIL, evil / f"{EVIL}.png")
    assert code == 2
    line = one_line(err, "\\x1b[2J", "\\u202e")
    assert "\x1b" not in line and "\u202e" not in line


# ---------------------------------------------------------------------------------------------- the book


def test_out_inside_the_published_book_is_refused(shared, tmp_path, capsys):
    before = snapshot(BOOK)
    for args in (tiny_args(shared["images"], BOOK / "run"),
                 ["encode", "--model", shared["run"], "--images", shared["images"], "--out", BOOK / "index"],
                 ["encode", "--model", shared["run"], "--images", shared["images"], "--out", BOOK / "x" / ".." / "i"],
                 ["reproduce", "--profile", "smoke", "--out", BOOK / "_build" / "again", "--no-build"]):
        code, _, err = cli(capsys, *args)
        assert code == 2
        one_line(err, "is inside the published book", "choose a folder outside it")
        assert snapshot(BOOK) == before
