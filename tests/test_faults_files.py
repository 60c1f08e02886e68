"""Trust, second pass (issue 36): never write over a user's files, and know data by their content.

- every command that writes validates everything before its first byte, and writes only into a
  folder that is new, empty, or one rsgh made (a run: its config.json; an index: its manifest or the
  marker ``.rsgh-index``; a reproduction: ``.rsgh-reproduction``); a failure leaves nothing behind;
- a finished run whose config.json was edited is not reused;
- a folder dataset is known by the sha256 of its images' bytes, the GIST cache by that, and an
  archive's md5 memo is not fooled by a restored mtime;
- damaged or unusual inputs (encrypted zip members, a plan that is not YAML) are one line, exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsgh.data import archives
from rsgh.data.collections import load_image_folder
from rsgh.index import store
from rsgh.train import task as train_task
from rsgh.train.rundir import DamagedRunError
from rsgh.train.task import run_group
from test_faults import (_own_cache, cli, colour_images, grey_images, interrupted, one_line, shared,  # noqa: F401
                         snapshot, tiny_args, tiny_config)

# ---------------------------------------------------------------------------------------------- encode --out


def test_encode_never_treats_a_users_shard_files_as_leftovers(shared, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "shard-00000.csv").write_text("my own table\n")
    (mine / "shard-00000.faissbin").write_bytes(b"my own bytes")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "encode", "--model", shared["run"], "--images", shared["images"], "--out", mine)
    assert code == 2
    one_line(err, str(mine), "holds other files (shard-00000.csv, shard-00000.faissbin)", "nothing was written")
    assert snapshot(tmp_path) == before


def test_encode_takes_over_the_leftovers_of_its_own_killed_first_encode(shared, tmp_path, capsys):
    index = tmp_path / "index"
    index.mkdir()
    for name, data in ((store.MARKER, b"an rsgh index folder\n"), ("model.pt", b"half a model"),
                       ("shard-00000.faissbin", b"half a shard"), (".rsgh-tmp-manifest.json.x.tmp", b"")):
        (index / name).write_bytes(data)
    code, _, err = cli(capsys, "encode", "--model", shared["run"], "--images", shared["images"], "--out", index,
                       "--quiet")
    assert code == 0, err
    assert len(store.load_index(index)) == 8


def test_a_failed_first_encode_leaves_an_empty_folder_empty(shared, tmp_path, capsys):
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    (broken / "x").mkdir(parents=True)
    (broken / "x" / "0.png").write_bytes(b"not a png")
    code, _, err = cli(capsys, "encode", "--model", shared["run"], "--images", broken, "--out", empty, "--quiet")
    assert code == 2
    one_line(err.splitlines()[-1], "could be decoded", "nothing was written")  # after the note naming x/0.png
    assert list(empty.iterdir()) == []


# ---------------------------------------------------------------------------------------------- reproduce --out


def users_book(folder: Path) -> Path:
    folder.mkdir()
    for name in ("intro.md", "_config.yml", "_toc.yml"):
        (folder / name).write_text(f"the user's own {name}\n")
    return folder


@pytest.mark.parametrize("out,args,fragment", [
    ("new", ["--only", "no_such_page"], "unknown page(s) no_such_page"),
    ("mybook", ["--only", "no_such_page"], "holds files that are not a reproduction (_config.yml, _toc.yml, "
                                           "intro.md)"),
    ("mybook", ["--only", "e1_mnist_reconstruction"], "holds files that are not a reproduction"),
])
def test_reproduce_checks_everything_before_writing(tmp_path, capsys, out, args, fragment):
    users_book(tmp_path / "mybook")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "reproduce", "--out", tmp_path / out, "--no-build", *args)
    assert code == 2
    one_line(err, fragment)
    assert snapshot(tmp_path) == before  # the user's intro.md, _config.yml and _toc.yml untouched, no new folder


def test_reproduce_refuses_a_plan_that_is_not_yaml_and_an_out_that_is_a_file(tmp_path, capsys):
    plan = tmp_path / "plan.yml"
    plan.write_text("notebooks:\n  a: [unclosed\n")
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "reproduce", "--plan", plan, "--out", tmp_path / "new", "--no-build")
    assert code == 2
    one_line(err, str(plan), "is not a readable YAML plan (line 3", "fix the file")
    code, _, err = cli(capsys, "reproduce", "--out", tmp_path / "afile", "--no-build", "--only", "x")
    assert code == 2
    one_line(err, "afile is a file, not a folder")
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------- finished runs


def test_an_edited_config_of_a_finished_run_is_not_reused(tmp_path, capsys):
    folder = colour_images(tmp_path / "imgs")
    run = tmp_path / "run"
    assert cli(capsys, *tiny_args(folder, run))[0] == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(config, bits=16)))
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, *tiny_args(folder, run, "--resume", "--set", "bits=16"))
    assert code == 2 and out == ""
    one_line(err, str(run / "config.json"), "edited after the run ended", "restore it")
    assert snapshot(tmp_path) == before
    with pytest.raises(DamagedRunError, match="edited after the run ended"):  # a notebook's reuse, too
        run_group([tiny_config(folder, bits=16)], [run], resume=True)


# ---------------------------------------------------------------------------------------------- content identity


def bmp_images(root: Path, seed: int = 0) -> Path:
    """Two classes of 8 x 8 BMPs: every file is 246 bytes, whatever its pixels."""
    rng = np.random.default_rng(seed)
    for c in ("x", "y"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.bmp")
    return root


def rewrite_same_size(file: Path, seed: int = 7) -> None:
    size = file.stat().st_size
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(file)
    assert file.stat().st_size == size


def test_a_folder_is_known_by_its_images_bytes(tmp_path):
    folder = bmp_images(tmp_path / "imgs")
    first = load_image_folder(folder).checksum
    assert first.startswith("sha256:") and load_image_folder(folder).checksum == first
    rewrite_same_size(folder / "x" / "3.bmp")
    assert load_image_folder(folder).checksum != first  # before: names and sizes only, the same


def test_resume_refuses_images_rewritten_with_the_same_sizes(tmp_path, capsys, monkeypatch):
    folder = bmp_images(tmp_path / "imgs")
    run = interrupted(folder, tmp_path / "run")
    rewrite_same_size(folder / "y" / "5.bmp")
    monkeypatch.setattr(train_task, "_LOADED", {})  # a new process reads the folder again
    before = snapshot(run)
    code, _, err = cli(capsys, *tiny_args(folder, run, "--resume"))
    assert code == 2
    one_line(err, str(run), "the training data differ from those the run started on", "saved sha256:")
    assert snapshot(run) == before


def test_the_gist_cache_follows_the_images_content(tmp_path, monkeypatch):
    from rsgh.config import make_config
    from rsgh.data import gist as gist_module
    from rsgh.data.features import collection_features

    calls = []

    def fake_gist(images, **kwargs):
        calls.append(len(images))
        return np.full((len(images), 512), float(len(calls)), np.float32)

    monkeypatch.setattr(gist_module, "gist", fake_gist)
    folder = bmp_images(tmp_path / "imgs")
    cfg = make_config(None, dict(task="retrieval", dataset="folder", folder=str(folder), features="gist",
                                 image_size=8))
    first = collection_features(cfg, *(lambda s: (s.images, s.checksum))(load_image_folder(folder)), progress=False)
    again = collection_features(cfg, *(lambda s: (s.images, s.checksum))(load_image_folder(folder)), progress=False)
    assert len(calls) == 1 and np.array_equal(first, again)  # cached
    rewrite_same_size(folder / "x" / "0.bmp")
    changed = collection_features(cfg, *(lambda s: (s.images, s.checksum))(load_image_folder(folder)), progress=False)
    assert len(calls) == 2 and not np.array_equal(first, changed)  # before: the old images' features


def test_the_md5_memo_is_not_fooled_by_a_restored_mtime(tmp_path):
    archive = tmp_path / "data.tar"
    archive.write_bytes(b"a" * 4096)
    first = archives.file_md5(archive)
    stat = archive.stat()
    archive.write_bytes(b"b" * 4096)  # the same size, other bytes ...
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the mtime put back (touch -r, rsync -t)
    assert archive.stat().st_mtime_ns == stat.st_mtime_ns and archive.stat().st_size == stat.st_size
    assert archives.file_md5(archive) != first


# ---------------------------------------------------------------------------------------------- zip members


def flagged_zip(path: Path, images: Path, flag: int | None = None, method: int | None = None) -> Path:
    """A zip of ``images`` whose members claim encryption (``flag``) or another compression ``method``."""
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(images.rglob("*.png")):
            zf.write(f, f.relative_to(images).as_posix())
    data = bytearray(path.read_bytes())
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if flag is not None:
                struct.pack_into("<H", data, start + flags_at, flag)
            if method is not None:
                struct.pack_into("<H", data, start + method_at, method)
            start += 4
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("flag,method,fragment", [
    (1, None, "is encrypted (password-protected); rsgh reads no encrypted archives"),
    (None, 98, "is compressed with ppmd, which Python's zipfile does not read"),
    (None, 99, "is compressed with method 99"),
])
def test_zip_members_zipfile_cannot_read(shared, tmp_path, capsys, flag, method, fragment):
    archive = flagged_zip(tmp_path / "images.zip", shared["images"], flag, method)
    before = snapshot(tmp_path)
    for args in (["encode", "--model", shared["run"], "--images", archive, "--out", tmp_path / "index", "--quiet"],
                 tiny_args(archive, tmp_path / "run")):
        code, _, err = cli(capsys, *args)
        assert code == 2, err
        one_line(err, str(archive), fragment)
        assert snapshot(tmp_path) == before


def test_a_corrupt_cifar_archive_gives_advice_that_can_be_followed(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + bytes(100))
    monkeypatch.setenv("RSGH_OFFLINE", "1")
    code, _, err = cli(capsys, "train", "--config", "e2-sgh", "--data-root", root, "--out", tmp_path / "run",
                       "--set", "cifar_source=official")
    assert code == 2
    line = one_line(err, "cifar-10-python.tar.gz", "md5 is")
    assert "pass verify=False" not in line and "from Python" in line


def test_the_readmes_promises_name_tests_that_exist():
    """Each promise of the README's Trust paragraph names its tests: they must exist (and keep it)."""
    import re

    root = Path(__file__).resolve().parent
    text = (root.parent / "README.md").read_text()
    trust = text[text.index("**Trust.**"):text.index("**Your own images.**")]
    for promise in ("Files from someone else cannot run code", "Archives cannot exhaust memory",
                    "An existing run is never overwritten", "Resume checks data checksums"):
        assert promise in trust, promise
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", trust)
    assert len(named) >= 8
    for file, test in named:
        assert (root / file).is_file(), file
        assert test == "" or f"def {test}(" in (root / file).read_text(), f"{file}::{test}"
