"""The book's figures draw what the runs hold."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from rsgh import report


@pytest.mark.parametrize("shared_legend", [False, True])
def test_curves_over_epochs_draws_the_mean_over_seeds(shared_legend):
    rng = np.random.default_rng(0)
    curves = pd.DataFrame([{"reading": r, "seed": s, "epoch": e, "map": rng.random()}
                           for r in ("a", "b", "c") for s in range(3) for e in (1, 2, 3)])
    fig = report.curves_over_epochs(curves, ["map"], ["mAP"], hue="reading", shared_legend=shared_legend)
    ax = fig.axes[0]
    expected = curves.groupby(["reading", "epoch"])["map"].mean()
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]
    assert len(lines) == 3
    for line, reading in zip(lines, ("a", "b", "c")):
        np.testing.assert_allclose(line.get_ydata(), expected[reading].to_numpy())
    if shared_legend:
        assert ax.get_legend() is None
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]
    else:
        assert ax.get_legend() is not None and not fig.legends
