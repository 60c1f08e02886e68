"""Classic baselines on real MNIST pixels: a sanity check of rsgh.baselines and rsgh.metrics.

Protocol: the 70,000 MNIST images (train + test), pixels / 255; 1,000 queries (100 per class,
drawn with a seeded generator); the other 69,000 are both the training set and the database.
mAP = exact expected AP over Hamming tie orders, full ranking, relevant = same digit.
Published ballparks under this protocol (32 bits): ITQ ~0.38-0.40, LSH ~0.2-0.3,
SH ~0.25-0.27, PCAH ~0.2-0.27.

Run: ``python benchmarks/baselines_mnist.py [--data ../shared/data] [--bits 32 64 128]``.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

from rsgh.eval.baselines import fit_baseline
from rsgh.eval.metrics import mean_average_precision

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def read_idx_gz(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    x = np.concatenate([read_idx_gz(raw / f"{s}-images-idx3-ubyte.gz") for s in ("train", "t10k")])
    y = np.concatenate([read_idx_gz(raw / f"{s}-labels-idx1-ubyte.gz") for s in ("train", "t10k")])
    return (x.reshape(len(x), -1) / np.float32(255)).astype(np.float32), y.astype(np.int64)


def split(y: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    query = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                            for c in np.unique(y)])
    mask = np.ones(len(y), dtype=bool)
    mask[query] = False
    return np.sort(query), np.flatnonzero(mask)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--methods", nargs="+", default=["lsh", "pcah", "itq", "sh"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    x, y = load_mnist(a.data)
    qi, di = split(y, 100, a.seed)
    print(f"MNIST pixels: {len(qi)} queries, {len(di)} training/database images, seed {a.seed}")
    rows = {}
    for method in a.methods:
        for bits in a.bits:
            t = time.perf_counter()
            h = fit_baseline(method, x[di], bits, seed=a.seed)
            m = mean_average_precision(h.encode(x[qi]), h.encode(x[di]), y[qi], y[di])
            rows[method, bits] = m
            print(f"  {method:5s} {bits:4d} bits  mAP {m:.4f}  ({time.perf_counter() - t:.1f} s)", flush=True)
    print()
    print("| method | " + " | ".join(f"{b} bits" for b in a.bits) + " |")
    print("| --- | " + " | ".join("---" for _ in a.bits) + " |")
    for method in a.methods:
        print(f"| {method.upper()} | " + " | ".join(f"{rows[method, b]:.4f}" for b in a.bits) + " |")


if __name__ == "__main__":
    main()
