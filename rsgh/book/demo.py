"""The "using the hash" page: the command line run for real on a small index, its output shown as a
reader would see it in a terminal (paths relative to a working folder, never a machine's paths)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np


def run(args: Sequence[str], workdir: Path) -> str:
    """``python -m rsgh ARGS`` run from ``workdir``, as a reader would; returns the command and what it
    printed (stdout, then stderr) as a console transcript. A failing command raises."""
    done = subprocess.run([sys.executable, "-m", "rsgh", *map(str, args)], cwd=workdir, capture_output=True,
                          text=True)
    text = f"$ python -m rsgh {shlex.join(map(str, args))}\n" + done.stdout + done.stderr
    text = text.replace(str(Path(workdir).resolve()) + "/", "").replace(str(workdir) + "/", "")
    if done.returncode != 0:
        raise RuntimeError(f"the command failed (exit status {done.returncode}):\n{text}")
    return text


def export_images(cfg, part: str, count: int, folder: Path, data_root=None, seed: int = 0) -> list[Path]:
    """``count`` images of one part ("database", "query") of the split of a retrieval configuration
    (at random, seeded), written losslessly as PNG into ``folder/<class>/<name>.png``; returns their paths."""
    from PIL import Image

    from ..data.datasets import load_images
    from ..train.task import task_data

    images, _ = load_images(cfg, data_root)
    r = task_data(cfg, data_root, progress=False).retrieval
    chosen = np.sort(np.random.default_rng(seed).choice(r.indices(part), count, replace=False))
    paths = []
    for i in chosen:
        path = folder / r.class_names[r.labels[i]] / f"{Path(r.names[i]).stem}-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(images.images[i])).save(path)
        paths.append(path)
    return paths
