"""Image collections and retrieval splits, on small synthetic archives built here in the official
layouts, and (index plus a handful of members) on the real CIFAR-10 JPEG copy when present."""

import io
import json
import os
import pickle
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsgh.data import archives, cifar10, collections
from rsgh.data.archives import ImageDatasetWarning
from rsgh.data.cifar10 import CIFAR10_CLASSES, cifar10_jpeg_index, load_cifar10
from rsgh.data.collections import load_caltech256, load_image_folder
from rsgh.data.split import Split, retrieval_split

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Derived files go to a fresh folder; nothing is downloaded."""
    monkeypatch.setenv("RSGH_CACHE", str(tmp_path / "derived"))
    monkeypatch.setenv("RSGH_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------
# Builders


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw) -> bytes:
    im = Image.fromarray(array, mode) if mode is None else Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def flat(h: int, w: int, rgb) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (h, w, 3)).copy()


def cifar_python_tar(path: Path, per_batch: int = 4, seed: int = 0) -> dict:
    """A tiny cifar-10-python.tar.gz with the official keys (bytes, as Python 2 wrote them)."""
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as tf:
        meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
        add_bytes(tf, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for name in cifar10.CIFAR10_BATCHES[::-1]:  # stored out of order on purpose
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, per_batch)]
            files = [f"{name}_img{i}.png".encode() for i in range(per_batch)]
            batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": files}
            add_bytes(tf, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
            batches[name] = (data, labels, files)
    return batches


CLASS_COLOURS = {c: (25 * i, 255 - 20 * i, (90 * i) % 256) for i, c in enumerate(CIFAR10_CLASSES)}


def cifar_jpeg_tar(path: Path, n_train: int = 2, n_test: int = 1, extra: dict | None = None) -> None:
    members = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for c in CIFAR10_CLASSES:
            for k in range(n):
                members[f"{split}/{c}/{k:04d}.jpg"] = encode(flat(32, 32, CLASS_COLOURS[c]), quality=95)
    members.update(extra or {})
    names = sorted(members, reverse=True)  # archive order differs from load order
    with tarfile.open(path, "w:gz") as tf:
        for name in names:
            add_bytes(tf, name, members[name])


def caltech_tar(path: Path) -> dict:
    """A small archive in the official Caltech-256 layout; returns {member: expected shape}."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (30, 22), dtype=np.uint8)
    members = {
        "001.ak47/001_0001.jpg": (encode(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)), (40, 30, 3)),
        "001.ak47/001_0002.jpg": (encode(rng.integers(0, 256, (25, 50, 3), dtype=np.uint8)), (25, 50, 3)),
        "002.american-flag/002_0001.jpg": (encode(grey), (30, 22, 3)),  # greyscale JPEG
        "002.american-flag/002_0002.jpg": (encode(flat(20, 24, (200, 30, 40)), mode="CMYK"), (20, 24, 3)),
        "003.backpack/003_0001.jpg": (encode(flat(33, 33, (10, 200, 10))), (33, 33, 3)),
        "257.clutter/257_0001.jpg": (encode(flat(17, 19, (90, 90, 90))), (17, 19, 3)),
    }
    with tarfile.open(path, "w") as tf:
        for folder in ("", "001.ak47/", "002.american-flag/", "003.backpack/", "257.clutter/"):
            info = tarfile.TarInfo("256_ObjectCategories/" + folder.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, (data, _) in members.items():
            add_bytes(tf, "256_ObjectCategories/" + name, data)
        add_bytes(tf, "256_ObjectCategories/003.backpack/RENAME2", b"not an image")
    return {"256_ObjectCategories/" + k: v[1] for k, v in members.items()}


# ----------------------------------------------------------------------------------------------
# CIFAR-10, official python archive


def test_cifar_python_archive_read_back_exactly(tmp_path):
    batches = cifar_python_tar(tmp_path / cifar10.CIFAR10_FILE)
    with pytest.warns(ImageDatasetWarning, match="not the official"):
        s = load_cifar10(tmp_path, source="official", download=False, verify=False)
    assert s.images.shape == (24, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.labels.dtype == np.int64 and s.class_names == list(CIFAR10_CLASSES)
    # order: data_batch_1..5 then test_batch; pixel (r, c) of channel k is data[k * 1024 + r * 32 + c]
    i = 0
    for name in cifar10.CIFAR10_BATCHES:
        data, labels, files = batches[name]
        for j in range(len(labels)):
            for k in range(3):
                for r in range(32):
                    assert list(s.images[i, r, :, k]) == list(data[j, k * 1024 + r * 32: k * 1024 + r * 32 + 32])
            assert s.labels[i] == labels[j] and s.names[i] == f"{name}/{files[j].decode()}"
            i += 1
    assert s.source.startswith("CIFAR-10 (non-official archive") and s.source != "CIFAR-10"
    assert s.checksum == archives.file_md5(tmp_path / cifar10.CIFAR10_FILE)


@pytest.mark.filterwarnings("ignore::rsgh.data.archives.ImageDatasetWarning")
def test_cifar_python_limit_per_class_takes_first_of_train_and_test(tmp_path):
    cifar_python_tar(tmp_path / cifar10.CIFAR10_FILE, per_batch=12)
    full = load_cifar10(tmp_path, source="official", download=False, verify=False)
    few = load_cifar10(tmp_path, source="official", download=False, verify=False, limit_per_class=1)
    is_test = np.array([n.startswith("test_batch/") for n in full.names])
    expected = sorted({int(np.flatnonzero((full.labels == c) & (is_test == t))[0])
                       for c in np.unique(full.labels) for t in (False, True)
                       if np.any((full.labels == c) & (is_test == t))})
    assert few.names == [full.names[i] for i in expected]
    np.testing.assert_array_equal(few.images, full.images[expected])


def test_cifar_md5_mismatch_names_expected_and_got(tmp_path):
    cifar_python_tar(tmp_path / cifar10.CIFAR10_FILE)
    got = archives.file_md5(tmp_path / cifar10.CIFAR10_FILE)
    with pytest.raises(ValueError) as err:
        load_cifar10(tmp_path, source="official", download=False)
    assert cifar10.CIFAR10_MD5 in str(err.value) and got in str(err.value) and "expected" in str(err.value)
    cifar_jpeg_tar(tmp_path / cifar10.CIFAR10_JPEG_FILE)
    with pytest.raises(ValueError, match=cifar10.CIFAR10_JPEG_MD5):
        load_cifar10(tmp_path, source="jpeg")


def test_cifar_truncated_archives(tmp_path):
    for build, name, source in ((cifar_python_tar, cifar10.CIFAR10_FILE, "official"),
                                (cifar_jpeg_tar, cifar10.CIFAR10_JPEG_FILE, "jpeg")):
        path = tmp_path / name
        build(path)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(ValueError, match="md5 is .*truncated"):
            load_cifar10(tmp_path, source=source, download=False)
        with pytest.warns(ImageDatasetWarning), pytest.raises(ValueError, match="truncated or corrupt"):
            load_cifar10(tmp_path, source=source, download=False, verify=False)
        path.write_bytes(b"")
        with pytest.warns(ImageDatasetWarning), pytest.raises(ValueError, match="empty"):
            load_cifar10(tmp_path, source=source, download=False, verify=False)
        path.unlink()


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path, download=False)
    msg = str(err.value)
    for part in (str(tmp_path / cifar10.CIFAR10_FILE), str(tmp_path / cifar10.CIFAR10_JPEG_FILE), cifar10.CIFAR10_URL,
                 "--data-root", "RSGH_DATA"):
        assert part in msg
    with pytest.raises(FileNotFoundError, match="RSGH_DATA"):
        load_cifar10(tmp_path, source="jpeg")
    cifar_jpeg_tar(tmp_path / cifar10.CIFAR10_JPEG_FILE)
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path, source="official", download=False)
    msg = str(err.value)
    assert str(tmp_path / cifar10.CIFAR10_FILE) in msg and cifar10.CIFAR10_URL in msg and "source='jpeg'" in msg
    with pytest.raises(ValueError, match="source must be"):
        load_cifar10(tmp_path, source="cifar")


def test_cifar_cache_and_md5_memo(tmp_path, monkeypatch):
    cifar_python_tar(tmp_path / cifar10.CIFAR10_FILE)
    with pytest.warns(ImageDatasetWarning):
        first = load_cifar10(tmp_path, source="official", verify=False)
    cached = list((tmp_path / "derived").glob("cifar10-official-*.npz"))
    assert len(cached) == 1 and first.checksum in cached[0].name
    assert first.checksum in json.loads((tmp_path / "derived" / "md5-memo.json").read_text()).values()
    assert not list((tmp_path / "derived").glob("*.tmp"))

    def no_decoding(*args):
        raise AssertionError("the second load should come from the cache")

    def no_hashing(*args, **kw):
        raise AssertionError("the md5 should come from the memo")

    monkeypatch.setattr(cifar10, "_read_cifar_batches", no_decoding)
    monkeypatch.setattr(archives.hashlib, "md5", no_hashing)
    with pytest.warns(ImageDatasetWarning):
        second = load_cifar10(tmp_path, source="official", verify=False)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.names == second.names and first.source == second.source


# ----------------------------------------------------------------------------------------------
# CIFAR-10, JPEG layout


def test_cifar_jpeg_layout(tmp_path):
    cifar_jpeg_tar(tmp_path / cifar10.CIFAR10_JPEG_FILE)
    with pytest.warns(ImageDatasetWarning):
        s = load_cifar10(tmp_path, verify=False)  # auto: no official archive, so the JPEG copy
    assert s.images.shape == (30, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.source.startswith("CIFAR-10 (JPEG copy") and s.source != "CIFAR-10"
    expected = [f"{split}/{c}/{k:04d}.jpg" for split, n in (("train", 2), ("test", 1))
                for c in CIFAR10_CLASSES for k in range(n)]
    assert s.names == expected
    assert s.labels.tolist() == [CIFAR10_CLASSES.index(n.split("/")[1]) for n in expected]
    for im, name in zip(s.images, s.names):
        assert np.abs(im.astype(int) - CLASS_COLOURS[name.split("/")[1]]).max() <= 3
    with pytest.warns(ImageDatasetWarning):
        few = load_cifar10(tmp_path, source="jpeg", verify=False, limit_per_class=1)
    assert few.names == [f"{split}/{c}/0000.jpg" for split in ("train", "test") for c in CIFAR10_CLASSES]


def test_auto_prefers_the_official_archive(tmp_path):
    cifar_jpeg_tar(tmp_path / cifar10.CIFAR10_JPEG_FILE)
    cifar_python_tar(tmp_path / cifar10.CIFAR10_FILE)
    with pytest.warns(ImageDatasetWarning):
        s = load_cifar10(tmp_path, verify=False)
    assert "JPEG" not in s.source and s.names[0].startswith("data_batch_1/")


@pytest.mark.parametrize("extra,match", [
    ({"train/unicorn/0000.jpg": encode(flat(32, 32, (1, 2, 3)))}, "not one of the 10"),
    ({"valid/cat/0000.jpg": encode(flat(32, 32, (1, 2, 3)))}, "unknown layout"),
    ({"train/cat/0099.jpg": encode(flat(16, 16, (1, 2, 3)))}, "expected 32 x 32"),
    ({"train/cat/0099.jpg": b"not a jpeg"}, "not a decodable image"),
])
def test_cifar_jpeg_bad_layouts(tmp_path, extra, match):
    cifar_jpeg_tar(tmp_path / cifar10.CIFAR10_JPEG_FILE, extra=extra)
    with pytest.warns(ImageDatasetWarning), pytest.raises(ValueError, match=match):
        load_cifar10(tmp_path, source="jpeg", verify=False)


def test_cifar_jpeg_missing_class(tmp_path):
    path = tmp_path / cifar10.CIFAR10_JPEG_FILE
    with tarfile.open(path, "w:gz") as tf:
        add_bytes(tf, "train/cat/0000.jpg", encode(flat(32, 32, (1, 2, 3))))
    with pytest.warns(ImageDatasetWarning), pytest.raises(ValueError, match="no images in train/airplane"):
        load_cifar10(tmp_path, source="jpeg", verify=False)


# ----------------------------------------------------------------------------------------------
# Image folders


def make_folder(root: Path) -> None:
    rng = np.random.default_rng(2)
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "cats" / "b.png").write_bytes(encode(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), "PNG"))
    (root / "cats" / "a.jpg").write_bytes(encode(flat(8, 9, (250, 10, 10))))
    (root / "cats" / "grey.png").write_bytes(encode(np.full((6, 7), 77, np.uint8), "PNG"))
    rgba = np.dstack([flat(5, 5, (10, 20, 30)), np.full((5, 5), 128, np.uint8)])
    (root / "dogs" / "rgba.png").write_bytes(encode(rgba, "PNG"))
    (root / "dogs" / "cmyk.jpg").write_bytes(encode(flat(9, 8, (0, 0, 250)), mode="CMYK"))
    (root / "dogs" / "pal.gif").write_bytes(encode(flat(4, 6, (0, 255, 0)), "GIF"))
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "dogs" / "notes.txt").write_text("ignored")
    (root / ".DS_Store").write_bytes(b"hidden")


def test_image_folder_mixed_sizes_conversions_and_skips(tmp_path):
    root = tmp_path / "set"
    make_folder(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = load_image_folder(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, ImageDatasetWarning)]
    assert any("skipped 1 undecodable files: dogs/broken.jpg" in m for m in messages)
    assert any("notes.txt" in m for m in messages)
    assert isinstance(s.images, list) and all(im.dtype == np.uint8 and im.shape[2] == 3 for im in s.images)
    assert s.class_names == ["cats", "dogs"]
    assert s.names == ["cats/a.jpg", "cats/b.png", "cats/grey.png", "dogs/cmyk.jpg", "dogs/pal.gif", "dogs/rgba.png"]
    assert s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [im.shape for im in s.images] == [(8, 9, 3), (12, 10, 3), (6, 7, 3), (9, 8, 3), (4, 6, 3), (5, 5, 3)]
    by_name = dict(zip(s.names, s.images))
    assert (by_name["cats/grey.png"] == 77).all()
    assert (by_name["dogs/rgba.png"] == (10, 20, 30)).all()  # alpha dropped
    assert (by_name["dogs/pal.gif"] == (0, 255, 0)).all()
    assert np.abs(by_name["dogs/cmyk.jpg"].astype(int) - (0, 0, 250)).max() <= 6
    assert s.source == f"image folder {root}" and s.checksum.startswith("sha256:")

    with pytest.warns(ImageDatasetWarning):
        resized = load_image_folder(root, image_size=(6, 5))
    assert resized.images.shape == (6, 6, 5, 3) and resized.names == s.names


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_image_folder_archives_match_the_folder(tmp_path, kind):
    root = tmp_path / "set"
    make_folder(root)
    archive = tmp_path / f"set.{kind}"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in files:
                zf.write(p, "top/" + p.relative_to(root).as_posix())
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(root, arcname="top")
    with pytest.warns(ImageDatasetWarning):
        from_folder = load_image_folder(root, image_size=(4, 4))
        from_archive = load_image_folder(archive, image_size=(4, 4))
    assert from_archive.names == ["top/" + n for n in from_folder.names]
    np.testing.assert_array_equal(from_archive.images, from_folder.images)
    assert from_archive.class_names == from_folder.class_names
    assert from_archive.checksum == archives.file_md5(archive)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "cats").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(encode(flat(3, 3, (1, 1, 1)), "PNG"))
    (tmp_path / "flat" / "cats" / "y.png").write_bytes(encode(flat(3, 3, (1, 1, 1)), "PNG"))
    with pytest.raises(ValueError, match="unknown layout"):
        load_image_folder(tmp_path / "flat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "junk.bin").write_bytes(b"0123456789" * 100)
    with pytest.raises(ValueError, match="unknown archive type"):
        load_image_folder(tmp_path / "junk.bin")
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(tmp_path / "flat", image_size=(0, 3))


# ----------------------------------------------------------------------------------------------
# Caltech-256


def test_caltech_synthetic_archive(tmp_path):
    shapes = caltech_tar(tmp_path / collections.CALTECH256_FILE)
    with pytest.warns(ImageDatasetWarning, match="not the official Caltech-256"):
        s = load_caltech256(tmp_path)
    assert s.class_names == ["ak47", "american-flag", "backpack"]
    assert s.labels.tolist() == [0, 0, 1, 1, 2]
    assert isinstance(s.images, list) and [im.shape for im in s.images] == [shapes[n] for n in s.names]
    assert all(im.dtype == np.uint8 for im in s.images)
    assert s.source.startswith("Caltech-256 (non-official archive") and "clutter" not in s.source
    cmyk = s.images[s.names.index("256_ObjectCategories/002.american-flag/002_0002.jpg")]
    assert np.abs(cmyk.astype(int) - (200, 30, 40)).max() <= 8
    grey = s.images[s.names.index("256_ObjectCategories/002.american-flag/002_0001.jpg")]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()

    with pytest.warns(ImageDatasetWarning):
        c = load_caltech256(tmp_path, include_clutter=True, image_size=(16, 20))
    assert c.class_names == ["ak47", "american-flag", "backpack", "clutter"]
    assert c.images.shape == (6, 16, 20, 3) and c.labels.tolist() == [0, 0, 1, 1, 2, 3]
    assert c.source.startswith("Caltech-256 (with clutter, non-official archive")
    assert c.checksum == s.checksum == archives.file_md5(tmp_path / collections.CALTECH256_FILE)


def test_caltech_official_size_is_md5_checked(tmp_path, monkeypatch):
    path = tmp_path / collections.CALTECH256_FILE
    caltech_tar(path)
    monkeypatch.setattr(collections, "CALTECH256_SIZE", path.stat().st_size)
    with pytest.raises(ValueError, match=f"expected {collections.CALTECH256_MD5}"):
        load_caltech256(tmp_path)
    monkeypatch.setattr(collections, "CALTECH256_MD5", archives.file_md5(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official archive loads without warnings
        s = load_caltech256(tmp_path, include_clutter=True)
    assert s.source == "Caltech-256 (with clutter)"
    assert load_caltech256(tmp_path).source == "Caltech-256"


def test_caltech_missing_truncated_and_bad_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_caltech256(tmp_path)
    assert collections.CALTECH256_URL in str(err.value) and str(tmp_path / collections.CALTECH256_FILE) in str(err.value)
    assert "RSGH_DATA" in str(err.value)
    path = tmp_path / collections.CALTECH256_FILE
    caltech_tar(path)
    raw = path.read_bytes()
    with tarfile.open(path) as tf:
        last = tf.getmembers()[-1]
    end_of_members = last.offset_data + (last.size + 511) // 512 * 512
    for cut in (len(raw) // 2, end_of_members):  # inside a member; at a member boundary (no end marker)
        path.write_bytes(raw[:cut])
        with pytest.warns(ImageDatasetWarning), pytest.raises(ValueError, match="truncated or corrupt"):
            load_caltech256(tmp_path)
    with tarfile.open(path, "w") as tf:
        add_bytes(tf, "256_ObjectCategories/ak47/001_0001.jpg", encode(flat(4, 4, (1, 2, 3))))
    with pytest.warns(ImageDatasetWarning), pytest.raises(ValueError, match="unknown layout"):
        load_caltech256(tmp_path)


# ----------------------------------------------------------------------------------------------
# The tar reader


def test_tar_reader_pax_names_and_git_archive_comment(tmp_path):
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        add_bytes(tf, "x/one.bin", b"1" * 700)
        add_bytes(tf, "x/two.bin", b"")
        add_bytes(tf, "x/" + "y" * 120 + ".bin", b"long name: a pax header")
    with archives.open_reader(path) as reader:
        assert sorted(reader.names()) == sorted(["x/one.bin", "x/two.bin", "x/" + "y" * 120 + ".bin"])
        assert dict(reader.read(reader.names()))["x/one.bin"] == b"1" * 700
    with tarfile.open(path, "w") as tf:
        tf.pax_headers = {"comment": "like git archive"}
        add_bytes(tf, "x/one.bin", b"1" * 700)
        add_bytes(tf, "x/two.bin", b"22")
    with archives.open_reader(path) as reader:
        assert reader.names() == ["x/one.bin", "x/two.bin"]
        assert dict(reader.read(["x/two.bin", "x/one.bin"])) == {"x/one.bin": b"1" * 700, "x/two.bin": b"22"}


# ----------------------------------------------------------------------------------------------
# Splits


def test_split_per_class():
    labels = np.repeat(np.arange(5), [12, 15, 11, 30, 20])
    np.random.default_rng(0).shuffle(labels)
    s = retrieval_split(labels, per_class=10, seed=3)
    assert s.query.dtype == np.int64 and s.database.dtype == np.int64
    assert np.all(np.diff(s.query) > 0) and np.all(np.diff(s.database) > 0)
    assert np.intersect1d(s.query, s.database).size == 0
    np.testing.assert_array_equal(np.union1d(s.query, s.database), np.arange(len(labels)))
    assert np.bincount(labels[s.query]).tolist() == [10] * 5
    assert s.per_class == 10 and s.n_queries is None and s.seed == 3 and s.train is s.database
    again = retrieval_split(labels, per_class=10, seed=3)
    np.testing.assert_array_equal(s.query, again.query)
    assert not np.array_equal(s.query, retrieval_split(labels, per_class=10, seed=4).query)


def test_split_n_queries_save_load(tmp_path):
    labels = np.random.default_rng(1).integers(0, 7, 300)
    s = retrieval_split(labels, n_queries=40, seed=5)
    assert len(s.query) == 40 and len(s.database) == 260
    np.testing.assert_array_equal(np.sort(np.concatenate([s.query, s.database])), np.arange(300))
    path = tmp_path / "runs" / "split.json"
    s.save(path)
    loaded = Split.load(path)
    np.testing.assert_array_equal(loaded.query, s.query)
    np.testing.assert_array_equal(loaded.database, s.database)
    assert (loaded.n, loaded.seed, loaded.n_queries, loaded.per_class) == (300, 5, 40, None)
    loaded.check(labels)
    with pytest.raises(ValueError, match="not from"):
        loaded.check(labels[::-1].copy())
    doc = json.loads(path.read_text())
    doc["database"] = doc["database"][1:]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="covering"):
        Split.load(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a saved"):
        Split.load(path)


@pytest.mark.parametrize("labels,kw,match", [
    (np.repeat(np.arange(3), [5, 5, 4]), {"per_class": 4}, "class 2 has 4"),
    (np.arange(10) % 2, {"n_queries": 10}, "smaller than"),
    (np.arange(10) % 2, {}, "exactly one"),
    (np.arange(10) % 2, {"per_class": 1, "n_queries": 2}, "exactly one"),
    (np.arange(10) % 2, {"per_class": 0}, "positive"),
    (np.zeros((4, 3), int), {"n_queries": 2}, "1-D integer"),
    (np.linspace(0, 1, 10), {"n_queries": 2}, "1-D integer"),
])
def test_split_errors(labels, kw, match):
    with pytest.raises(ValueError, match=match):
        retrieval_split(labels, **kw)


# ----------------------------------------------------------------------------------------------
# The real JPEG copy (index and a handful of members only)


def _real_root() -> Path | None:
    root = Path(os.environ.get("RSGH_DATA") or SHARED_DATA)
    return root if (root / cifar10.CIFAR10_JPEG_FILE).is_file() else None


@pytest.mark.skipif(_real_root() is None, reason=f"the CIFAR-10 JPEG copy {cifar10.CIFAR10_JPEG_FILE} is not in "
                    "$RSGH_DATA or ../shared/data")
@pytest.mark.slow
def test_real_cifar10_jpeg_copy():
    root = _real_root()
    index = cifar10_jpeg_index(root)
    assert len(index) == 60_000
    labels = np.array([label for _, _, label in index])
    splits = np.array([split for _, split, _ in index])
    assert np.bincount(labels).tolist() == [6000] * 10
    assert np.bincount(labels[splits == "train"]).tolist() == [5000] * 10
    assert (splits[:50_000] == "train").all() and (splits[50_000:] == "test").all()
    assert np.all(np.diff(labels[:50_000]) >= 0) and np.all(np.diff(labels[50_000:]) >= 0)
    assert index[0][0] == "train/airplane/0000.jpg" and index[-1][0] == "test/truck/0999.jpg"

    s = load_cifar10(root, source="jpeg", limit_per_class=2, download=False)
    assert s.source == "CIFAR-10 (JPEG copy)" and s.checksum == cifar10.CIFAR10_JPEG_MD5
    assert s.images.shape == (40, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.class_names == list(CIFAR10_CLASSES)
    assert s.labels.tolist() == [c for _ in range(2) for c in range(10) for _ in range(2)]
    assert s.names[:2] == ["train/airplane/0000.jpg", "train/airplane/0001.jpg"]
    assert s.names[20] == "test/airplane/0000.jpg"
    assert 20 < s.images.mean() < 235 and s.images.std() > 10


def test_cifar_download_is_attempted_when_online(tmp_path, monkeypatch):
    import pooch

    monkeypatch.delenv("RSGH_OFFLINE")
    calls = []

    def offline(url, known_hash, fname, path, progressbar):
        calls.append((url, known_hash, fname, Path(path)))
        raise ConnectionError("no route to host")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(FileNotFoundError, match="no download"):
        load_cifar10(tmp_path)
    assert calls == [(cifar10.CIFAR10_URL, f"md5:{cifar10.CIFAR10_MD5}", cifar10.CIFAR10_FILE, tmp_path)]

    def fetch(url, known_hash, fname, path, progressbar):
        cifar_python_tar(Path(path) / fname)
        return str(Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", fetch)
    with pytest.warns(ImageDatasetWarning):
        s = load_cifar10(tmp_path, source="official", verify=False)
    assert len(s) == 24
