import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

# The pages of book/ that the current notebooks have not rendered from the results store yet (the previous
# round's, kept until every run and study they read is in the store). Tests of the published pages expect
# them to fail (strictly: a page rendered again must leave this set) and hold every other page to the rules.
# Empty: every page of the book is rendered from the store by its current notebook.
NOT_YET_RENDERED: set[str] = set()


def page_of(problem: str) -> str:
    """The page a problem line names ("…: study_mnist.html: overflows …" -> "study_mnist")."""
    found = re.search(r"([\w-]+)\.(?:html|ipynb|md)\b", problem)
    return found.group(1) if found else ""


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_data_root() -> Path | None:
    """The real datasets: $RSGH_DATA if set, else ../shared/data beside the checkout."""
    env = os.environ.get("RSGH_DATA")
    root = Path(env) if env else SHARED_DATA
    return root if (root / "MNIST" / "raw").is_dir() else None


@pytest.fixture
def mnist_root():
    root = real_data_root()
    if root is None:
        pytest.skip("real MNIST not found: set RSGH_DATA or provide ../shared/data/MNIST/raw")
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def blobs():
    """A small clustered dataset (train, eval) in [0, 1]^20."""
    rng = np.random.default_rng(0)
    centres = rng.random((5, 20))
    x = np.clip(centres[rng.integers(0, 5, 700)] + 0.1 * rng.standard_normal((700, 20)), 0, 1)
    return x[:512].astype(np.float32), x[512:].astype(np.float32)
