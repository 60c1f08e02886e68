"""IDX readers on synthetic files written independently here, and on the real MNIST files."""

import gzip
import hashlib
import struct

import numpy as np
import pytest

from rsgh.data import mnist as data
from rsgh.data.mnist import REGISTRY, load_mnist_like, parse_idx, read_idx_file


def write_idx(array: np.ndarray, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_parse_synthetic_idx():
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(write_idx(images)), images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(write_idx(labels)), labels)
    ints = np.array([[1, -2], [300000, 7]], dtype=">i4")
    np.testing.assert_array_equal(parse_idx(write_idx(ints, 0x0C)), ints.astype(np.int32))


@pytest.mark.parametrize("raw,msg", [
    (b"", "not an IDX file"),
    (b"\x50\x4b\x03\x04rest", "not an IDX file"),
    (bytes([0, 0, 8, 3]) + struct.pack(">2I", 2, 2), "truncated"),
    (bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 9, "truncated or corrupt"),
])
def test_corrupt_idx(raw, msg):
    with pytest.raises(ValueError, match=msg):
        parse_idx(raw)


def _fake_root(tmp_path, stems, payload=b"not the official content"):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for stem in stems:
        with gzip.open(folder / f"{stem}.gz", "wb") as fh:
            fh.write(payload)
    return folder


def test_missing_files_name_the_files_and_the_fix(tmp_path):
    _fake_root(tmp_path, ["train-images-idx3-ubyte"])
    with pytest.raises(FileNotFoundError) as err:
        load_mnist_like("mnist", tmp_path, download=False)
    message = str(err.value)
    assert "train-labels-idx1-ubyte.gz" in message and "t10k-images-idx3-ubyte.gz" in message
    assert "RSGH_DATA" in message and "--data-root" in message and str(tmp_path / "MNIST" / "raw") in message


def test_md5_mismatch_is_refused(tmp_path):
    labels = write_idx(np.zeros(60000, dtype=np.uint8))
    _fake_root(tmp_path, ["train-labels-idx1-ubyte"], labels)
    with pytest.raises(ValueError, match="md5 of the uncompressed content"):
        read_idx_file("mnist", "train-labels-idx1-ubyte", tmp_path, download=False)


def test_corrupt_gzip_is_refused(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    good = gzip.compress(b"x" * 1000)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a readable gzip"):
        read_idx_file("mnist", "train-labels-idx1-ubyte", tmp_path, download=False)


def test_uncompressed_files_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("RSGH_OFFLINE", "1")
    """Either twin (.gz or uncompressed) is read; the md5 is that of the content."""
    labels = np.arange(10, dtype=np.uint8)
    raw = write_idx(labels)
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(raw)
    patched = dict(REGISTRY["mnist"][2])
    patched["t10k-labels-idx1-ubyte"] = (hashlib.md5(raw).hexdigest(), "unused")
    monkeypatch.setitem(data.REGISTRY, "mnist", (REGISTRY["mnist"][0], REGISTRY["mnist"][1], patched))
    for stem in patched:  # the other files need only exist for locate()
        if stem != "t10k-labels-idx1-ubyte":
            (folder / stem).write_bytes(b"")
    np.testing.assert_array_equal(read_idx_file("mnist", "t10k-labels-idx1-ubyte", tmp_path, False), labels)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_mnist_like("kmnist")


def test_real_mnist(mnist_root):
    d = load_mnist_like("mnist", mnist_root, download=False)
    assert d.train_x.shape == (60000, 784) and d.test_x.shape == (10000, 784)
    assert d.train_x.dtype == np.float32 and d.train_x.min() == 0.0 and d.train_x.max() == 1.0
    assert d.train_y[:5].tolist() == [5, 0, 4, 1, 9] and d.test_y[:3].tolist() == [7, 2, 1]
    assert np.bincount(d.train_y).tolist()[:2] == [5923, 6742]
    assert d.source == "MNIST"


def test_real_fashion_mnist(mnist_root):
    if not (mnist_root / "FashionMNIST" / "raw").is_dir():
        pytest.skip("Fashion-MNIST not in the data root")
    d = load_mnist_like("fashion-mnist", mnist_root, download=False)
    assert d.train_x.shape == (60000, 784) and np.bincount(d.test_y).tolist() == [1000] * 10
    assert d.train_y[:3].tolist() == [9, 0, 0]
