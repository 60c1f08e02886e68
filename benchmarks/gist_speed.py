"""Speed of rsgh.gist against torchgist (a direct, per-image port of LMgist).

    python benchmarks/gist_speed.py [--n 512] [--n-ref 50] [--threads 1] [--size 32]
                                    [--full] [--jpeg 5000]

Times our batched ``gist`` on ``--n`` random uint8 images (speed does not depend on content)
and torchgist on ``--n-ref`` of them, prints the time per image of each, the speed-up and the
extrapolated time for CIFAR-10's 60,000 images. ``--full`` also times all 60,000 (at --size);
``--jpeg K`` decodes the first K images of ../shared/data/cifar10-jpeg.tar.gz in memory, times
them and checks a few against torchgist. The last line is ``gist_vs_torchgist=<speed-up>``
(torchgist's time per image divided by ours).
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from rsgh.gist import gist

CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def torchgist_features(images: np.ndarray) -> np.ndarray:
    from torchgist.models.models import GIST

    warnings.filterwarnings("ignore", message="torch.meshgrid")
    model = GIST(image_size=images.shape[1:3])
    with torch.no_grad():
        return np.stack([model(torch.from_numpy(im).permute(2, 0, 1).float()).numpy() for im in images])


def read_cifar_jpegs(path: Path, k: int) -> np.ndarray:
    """The first k JPEGs of the archive, decoded in memory (nothing is unpacked to disk)."""
    from PIL import Image

    out = []
    with tarfile.open(path, "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    out.append(np.asarray(im.convert("RGB")))
                if len(out) == k:
                    break
    return np.stack(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=512, help="images for our gist")
    ap.add_argument("--n-ref", type=int, default=50, help="images for torchgist")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--size", type=int, default=32, help="image side")
    ap.add_argument("--full", action="store_true", help="also time 60,000 random images")
    ap.add_argument("--jpeg", type=int, default=0, help="also time the first K real CIFAR-10 JPEGs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.size}x{args.size} RGB, CPU")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(args.n, args.n_ref), args.size, args.size, 3), dtype=np.uint8)
    gist(images[:8], device="cpu")  # builds and caches the matrices for this size
    ours, t_ours = timed(gist, images[:args.n], device="cpu")
    ref, t_ref = timed(torchgist_features, images[:args.n_ref])
    per_ours, per_ref = t_ours / args.n, t_ref / args.n_ref
    err = np.linalg.norm(ours[:args.n_ref] - ref, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"rsgh.gist : {per_ours * 1e3:8.3f} ms/image ({args.n} images in {t_ours:.2f} s)")
    print(f"torchgist : {per_ref * 1e3:8.3f} ms/image ({args.n_ref} images in {t_ref:.2f} s)")
    print(f"max relative difference on these images: {err.max():.2e}")
    print(f"extrapolated to 60,000 images: rsgh.gist {60000 * per_ours:.1f} s, torchgist {60000 * per_ref / 3600:.2f} h")

    if args.full:
        big = rng.integers(0, 256, (60000, args.size, args.size, 3), dtype=np.uint8)
        _, t_full = timed(gist, big, device="cpu")
        print(f"measured: 60,000 random images in {t_full:.1f} s ({t_full / 60000 * 1e3:.3f} ms/image)")

    if args.jpeg:
        if not CIFAR_JPEG.is_file():
            print(f"no {CIFAR_JPEG}: real-JPEG check skipped")
        else:
            real, t_read = timed(read_cifar_jpegs, CIFAR_JPEG, args.jpeg)
            feats, t = timed(gist, real, device="cpu")
            ref = torchgist_features(real[:10])
            err = np.linalg.norm(feats[:10] - ref, axis=1) / np.linalg.norm(ref, axis=1)
            print(f"real CIFAR-10 (JPEG copy): {len(real)} images decoded in {t_read:.1f} s, GIST in {t:.1f} s "
                  f"({t / len(real) * 1e3:.3f} ms/image, 60,000 -> {60000 * t / len(real):.0f} s); "
                  f"max relative difference to torchgist on 10: {err.max():.2e}")

    print(f"gist_vs_torchgist={per_ref / per_ours:.1f}")
    values = {"ms_per_image": per_ours * 1e3, "torchgist_ms_per_image": per_ref * 1e3,
              "gist_vs_torchgist": per_ref / per_ours, "max_relative_difference": float(err.max())}
    if args.full:
        values["random_60000_s"] = t_full
    from record import record

    record("gist_speed", values, args)


if __name__ == "__main__":
    main()
