"""The book's figures draw what the runs hold."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from rsgh.book import figures as report


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
    if shared_legend:  # one row, no spare panel: below the panels
        assert ax.get_legend() is None
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]
    else:
        assert ax.get_legend() is not None and not fig.legends


def test_curves_over_epochs_grid():
    curves = pd.DataFrame([{"method": m, "seed": s, "epoch": e, "a": e + s, "b": -e, "c": s}
                           for m in ("SGH", "R-SGH") for s in range(2) for e in (1, 2)])
    fig = report.curves_over_epochs(curves, ["a", "b", "c"], ["A", "B", "C"], ncols=2, shared_legend=True)
    assert [ax.get_title() for ax in fig.axes] == ["A", "B", "C", ""]
    spare = fig.axes[3]  # the unused fourth panel holds the legend
    assert not spare.axison and [t.get_text() for t in spare.get_legend().get_texts()] == ["SGH", "R-SGH"]
    assert fig.get_size_inches() == pytest.approx((7.2, 5.8))  # the book's width, two rows of 2.9 inches


def test_findings_name_the_runs_that_never_trained():
    """A run that ends with no active code unit is named with its test mAP beside the means that include it."""
    from rsgh.book.pages import findings

    finals = pd.DataFrame({"method": ["SGH", "R-SGH"] * 2, "bits": [128] * 4, "seed": [0, 0, 1, 1],
                           "map": [0.137, 0.140, 0.1002, 0.1002], "active_units_001": [128, 128, 0, 0]})
    baselines = pd.DataFrame({"method": ["ITQ"], "bits": [128], "map": [0.16]})
    text = findings("e2", finals, baselines)
    assert "**2 of 4 runs ended with no active code unit**" in text
    assert "R-SGH at K = 128, seed 1 (test mAP 0.100), SGH at K = 128, seed 1 (test mAP 0.100)" in text
    assert "ended with no active" not in findings("e2", finals[finals.seed == 0], baselines)
