"""The book's one figure style (``rsgh.book.style``) and the figure and table functions that use it: a
method's colour and marker on every figure, human axis labels, integer epoch ticks, at most two panels
per row at the book's width, panels that show nothing left out, tables that read and fit."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from rsgh.book import figures, style, tables


def _curves(methods=("SGH", "R-SGH"), seeds=3, epochs=(0, 1, 2, 3, 4, 5), flat=None):
    rng = np.random.default_rng(0)
    rows = []
    for m in methods:
        for s in range(seeds):
            for e in epochs:
                rows.append({"method": m, "seed": s, "epoch": float(e), "bits": 64, "val_map": 0.1 + 0.01 * e + rng.random() / 100,
                             "recon_mse": 0.1 / (e + 1) + rng.random() / 100, "active_units_001": flat if flat else 50 + e})
    return pd.DataFrame(rows)


def _line_colors(fig):
    return {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for ax in fig.axes for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def test_every_method_has_one_fixed_colour_and_marker_across_figures():
    names = ["SGH", "R-SGH", "SGH, R-SGH's architecture", "ITQ", "LSH", "PCAH", "SH", "linear SGH (reference code)"]
    colours = [style.METHODS[n].color for n in names]
    assert len(set(colours)) == len(colours) and len({style.METHODS[n].marker for n in names}) == len(names)
    assert not set(c.upper() for c in colours) & set(c.upper() for c in style.EXTRA)
    # the order and company of the labels never change a method's colour
    one = style.looks(["R-SGH", "SGH"])
    two = style.looks(["ITQ", "SGH", "LSH", "R-SGH"])
    assert one["R-SGH"] == two["R-SGH"] and one["SGH"] == two["SGH"]
    # the variant names of the pages keep their method's colour
    for variant, method in [("SGH, tuned", "SGH"), ("R-SGH (tuned)", "R-SGH"), ("R-SGH, patents' settings", "R-SGH"),
                            ("sgh-arch", "SGH, R-SGH's architecture"), ("rsgh", "R-SGH"),
                            ("SGH in R-SGH's architecture", "SGH, R-SGH's architecture"),
                            ("SGH, best validation epoch", "SGH"), ("SGH, epoch 50", "SGH")]:
        assert style.method_color(variant) == style.METHODS[method].color, variant
    both = style.looks(["SGH, tuned", "SGH, patents' settings"])
    assert both["SGH, tuned"]["color"] == both["SGH, patents' settings"]["color"]
    assert both["SGH, tuned"]["linestyle"] != both["SGH, patents' settings"]["linestyle"]
    # an ablation's readings of one method get colours no method uses (not R-SGH's red again and again)
    readings = style.looks(["R-SGH default", "R-SGH redundancy-kl", "R-SGH tie-encoder"])
    assert readings["R-SGH default"]["color"] == style.METHODS["R-SGH"].color
    assert len({v["color"] for v in readings.values()}) == 3
    # in a drawn figure
    fig = figures.curves_over_epochs(_curves(("ITQ", "R-SGH", "SGH")), ["val_map"], ["validation"])
    assert _line_colors(fig) == {m: style.METHODS[m].color.lower() for m in ("ITQ", "R-SGH", "SGH")}
    plt.close(fig)


def test_axis_labels_are_human_and_epoch_ticks_integer():
    assert style.axis_label("recon_mse") == "test reconstruction error (MSE)"
    assert style.axis_label("active_units_001") == "active units (A > 0.01)"
    assert style.axis_label("val_map") == "validation mAP"
    assert "KL" in style.axis_label("kl") and "nats" in style.axis_label("mean_kl")
    assert style.axis_label("some_new_thing") == "some new thing"
    fig = figures.curves_over_epochs(_curves(epochs=(0, 1, 2, 3)), ["recon_mse", "val_map", "active_units_001"],
                                     ["reconstruction", "validation", "units"])
    for ax in fig.axes:
        if not ax.axison:
            continue
        assert "_" not in ax.get_ylabel() and "_" not in ax.get_xlabel(), (ax.get_xlabel(), ax.get_ylabel())
        assert ax.get_xlabel() == "epoch"
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plt.close(fig)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_at_most_two_panels_per_row_at_the_books_width(n):
    columns = ["val_map", "recon_mse", "active_units_001", "val_map", "recon_mse"][:n]
    fig = figures.curves_over_epochs(_curves(), columns, [f"panel {i}" for i in range(n)])
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == n
    columns_used = {round(ax.get_position().x0, 2) for ax in shown}
    assert len(columns_used) <= 2
    width = fig.get_size_inches()[0]
    assert width <= style.WIDTH
    # a font of the figure, fitted into 700 px of the page, stays >= 9 pt (96 px per inch on the page)
    smallest = min(t.get_fontsize() for ax in shown for t in ax.get_xticklabels() + ax.get_yticklabels())
    assert smallest * min(1.0, 700 / (width * style.DPI)) * style.DPI / 96 >= 9 - 1e-9
    plt.close(fig)


def test_a_panel_that_shows_nothing_becomes_a_sentence():
    curves = _curves(flat=64)
    fig = figures.curves_over_epochs(curves, ["val_map", "active_units_001"], ["validation", "active units"])
    assert [ax.get_title() for ax in fig.axes if ax.axison] == ["validation"]
    assert any("active units: 64 for every run" in n for n in fig.notes)
    plt.close(fig)
    nothing = figures.curves_over_epochs(curves, ["active_units_001"], ["active units"])
    assert not nothing and "64" in nothing.text and nothing._repr_markdown_() == nothing.text


def _run_with_retrieval(tmp_path, name, seed, shift):
    d = tmp_path / name
    d.mkdir()
    radius = list(range(9))
    recall = [0.0, 0.0002, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 1.0]
    precision = [0.0, 0.01, 0.6 + shift, 0.55 + shift, 0.5, 0.4, 0.3, 0.2, 0.1]
    (d / "retrieval.json").write_text(json.dumps({"map": 0.3, "precision_at_k": {"100": 0.5 + shift, "500": 0.4},
                                                  "pr_curve": {"radius": radius, "precision": precision,
                                                               "recall": recall}}))
    return d


def test_precision_recall_is_pooled_over_seeds_without_the_recall_zero_spike(tmp_path):
    dirs = [_run_with_retrieval(tmp_path, f"sgh-{s}", s, 0.1 * s) for s in range(2)]
    dirs += [_run_with_retrieval(tmp_path, f"rsgh-{s}", s, 0.0) for s in range(2)]
    fig = figures.pr_and_precision_at_k(dirs, ["SGH", "SGH", "R-SGH", "R-SGH"])
    pr_axis = fig.axes[0]
    lines = {ln.get_label(): ln for ln in pr_axis.get_lines()}
    assert set(lines) == {"SGH", "R-SGH"}  # one pooled line per method, not one per seed
    sgh = lines["SGH"]
    assert min(sgh.get_xdata()) >= figures.MIN_RECALL  # no point at recall 0
    assert min(sgh.get_ydata()) > 0.05  # no spike to zero
    np.testing.assert_allclose(sgh.get_ydata()[0], 0.65)  # the mean of the seeds' 0.6 and 0.7 at radius 2
    assert _line_colors(fig)["R-SGH"] == style.METHODS["R-SGH"].color.lower()
    plt.close(fig)


def test_glue_figure_gives_a_caption_and_alt_text(monkeypatch):
    shown, glued = [], {}
    import myst_nb
    import IPython.display

    monkeypatch.setattr(myst_nb, "glue", lambda name, fig, display=False: glued.setdefault(name, fig))
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    fig = figures.curves_over_epochs(_curves(), ["val_map"], ["validation"])
    style.glue_figure("e2_val", fig, "Validation mAP over epochs.", "Two rising curves, R-SGH above SGH.")
    assert glued["e2_val"] is fig
    text = shown[0].data
    assert text.startswith("```{glue:figure} e2_val") and ":alt: Two rising curves, R-SGH above SGH." in text
    assert "Validation mAP over epochs." in text and ":name: fig-e2_val" in text
    # a notebook that several pages run labels its figures by page (a label is the whole book's)
    assert ":name: fig-mnist-pixels-kl\n" in style.figure_directive("kl", "c", "a", page="mnist-pixels")
    with pytest.raises(ValueError, match="alt text"):
        style.glue_figure("x", figures.curves_over_epochs(_curves(), ["val_map"]), "caption", " ")
    shown.clear()
    style.glue_figure("none", figures.curves_over_epochs(_curves(flat=3), ["active_units_001"]), "unused", "unused")
    assert "3 for every run" in shown[0].data


def test_tables_read_as_tables():
    frame = pd.DataFrame({"method": ["SGH", "R-SGH"], "epochs": [50.0, 50.0], "hours": [1.806670, 0.5],
                          "map": ["0.150 ± 0.002", "0.148 ± 0.001"], "missing": [np.nan, 0.25]})
    text = tables.show(frame).to_markdown()
    assert "| 50 |" in text and "50.0" not in text  # epochs as integers
    assert "1.81" in text and "1.806670" not in text  # hours with two decimals
    assert "nan" not in text.lower() and "rows ×" not in text and "dtype" not in text
    assert text.splitlines()[0] == "| method | epochs | hours | map | missing |"  # no index column
    assert "0.150\u00a0±\u00a00.002" in text  # a mean and its spread stay on one line
    wide = pd.DataFrame({"arm": ["SGH", "R-SGH", "SGH, R-SGH's architecture"],
                         **{f"parameter_number_{i}": [0.001 * i, 0.1, 3.0] for i in range(14)}}).set_index("arm")
    table = tables.show(wide)
    for part in table.parts():
        assert sum(tables._width(c, part[c]) for c in part.columns) <= tables.CONTENT_CHARS or len(part.columns) <= 2
    assert len(table.parts()) >= 1 and all(p.columns[0] in ("arm", "") for p in table.parts())
    long_and_wide = pd.DataFrame({"trial": range(8), **{f"parameter_number_{i}": [0.5] * 8 for i in range(12)}})
    parts = tables.show(long_and_wide).parts()
    assert len(parts) > 1 and all(p.columns[0] == "trial" for p in parts)  # split, the key repeated


def test_provenance_table_says_what_was_grouped_and_the_time_per_run():
    summaries = [{"name": f"runs/{m}-k64-s0-0123456789", "config": {"method": m, "bits": 64, "seed": 0},
                  "group_size": 2, "group_runs": ["sgh-k64-s0-0123456789", "rsgh-k64-s0-0123456789"],
                  "epochs": 50.0, "wall_time_s": 7200.0, "data_source": "MNIST", "git_commit": "abcdef0123456789",
                  "device": "cpu", "versions": {"cpu": "AMD EPYC", "torch": "2.13.0"}} for m in ("sgh", "rsgh")]
    table = tables.provenance_table(summaries)
    text = table.to_markdown()
    assert "trained in one group with" in text and "| rsgh-k64-s0 |" in text
    assert "| 120.0 | 60.0 |" in text  # the group's two hours in minutes, one hour per run
    assert "| 50 |" in text and "commit abcdef0123" in text and "AMD EPYC" in text


def test_benchmark_result_files_say_where_each_number_was_measured(tmp_path, monkeypatch):
    """Every record of ``results/benchmarks/`` names its CPU and its source (measured, or where it was
    transcribed from); a benchmark script's record goes to ``$RSGH_RESULTS/benchmarks/<name>.json``."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "results" / "benchmarks").glob("*.json"))
    assert {"paper_scale_estimate", "paper_scale_run", "adam_floor", "subnormals", "divergence"} <= {f.stem for f in files}
    for f in files:
        frame = figures.benchmark(f.stem)
        assert len(frame) and frame["cpu"].notna().all() and frame["source"].notna().all(), f.name
        assert frame.attrs["script"], f.name
    monkeypatch.setenv("RSGH_RESULTS", str(tmp_path))
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    sys.modules.pop("record", None)
    from record import record

    for value in (1.5, 1.25):
        path = record("demo", {"ratio": value}, label="a test")
    assert path == tmp_path / "benchmarks" / "demo.json"
    frame = figures.benchmark("demo")
    assert frame["ratio"].tolist() == [1.5, 1.25] and (frame["source"] == "measured").all()
    assert frame["cpu"].iloc[-1] and frame["date"].iloc[-1].endswith("Z")
    plt.close(figures.benchmark_history(frame, {"ratio": [("ratio", "ratio")]}))


def test_recall_and_study_figures_keep_two_panels_per_row():
    import optuna

    table = pd.DataFrame([{"dataset": d, "bits": k, "method": m, "seed": s, "N": n, "recall": n / 1000 + s / 100}
                          for d in ("mnist", "cifar10") for k in (16, 32, 64) for m in ("SGH", "ITQ", "LSH")
                          for s in range(2) for n in (1, 10, 100, 1000)])
    fig = figures.recall_curves(table)
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == 6 and len({round(ax.get_position().x0, 2) for ax in shown}) == 2
    assert all(ax.get_ylabel() == "Recall10@N" for ax in shown) and fig.get_size_inches()[0] <= style.WIDTH
    assert _line_colors(fig)["ITQ"] == style.METHODS["ITQ"].color.lower()
    plt.close(fig)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {}
    for arm in ("SGH", "R-SGH"):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) + t.suggest_int("layers", 1, 4) / 10,
                       n_trials=6)
        studies[arm] = study
    fig = figures.study_figures(studies)
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == 4 and len({round(ax.get_position().x0, 2) for ax in shown}) == 2
    plt.close(fig)
    assert not figures.study_figures({})


def test_provenance_line_sums_each_groups_time_once_and_names_commits_and_cpus():
    from rsgh.book.notebook import provenance_text

    group = ["sgh-k64-s0-0123456789", "rsgh-k64-s0-0123456789"]
    runs = [{"git_commit": "abcdef0123456789", "wall_time_s": 3600.0, "group_runs": group, "group_size": 2,
             "versions": {"cpu": "AMD EPYC", "torch": "2.13.0"}} for _ in group]
    runs.append({"git_commit": "fedcba9876543210-dirty", "wall_time_s": 1800.0, "versions": {"cpu": "Intel Xeon",
                                                                                              "torch": "2.13.0"}})
    text = provenance_text(runs)
    assert text.startswith("*Runs shown:* 3 runs") and "commits abcdef0123, fedcba9876-dirty" in text
    assert "AMD EPYC, Intel Xeon" in text and "torch 2.13.0" in text
    assert "90 min of training in all" in text  # the group's hour once, and half an hour
    assert " to " not in text  # no date in these summaries: none is made up from file times
    runs[0]["finished_at"], runs[2]["finished_at"] = "2026-12-01T10:00:00Z", "2026-12-03T09:00:00Z"
    assert "2026-12-01 to 2026-12-03" in provenance_text(runs)


def test_a_glued_table_is_markdown_on_its_page_and_html_on_another(monkeypatch):
    import IPython.display
    import myst_nb

    glued, shown = {}, []
    monkeypatch.setattr(myst_nb, "glue", lambda name, obj, display=False: glued.setdefault(name, obj))
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    frame = pd.DataFrame({"claim": ["(a) R-SGH beats SGH <tuned>"], "verdict": ["no"], "mAP": ["0.150 ± 0.002"]})
    tables.glue_table("headline", frame)
    value = glued["headline"]
    assert value._repr_markdown_().startswith("| claim | verdict | mAP |")
    html = value._repr_html_()
    assert "<table" in html and "&lt;tuned&gt;" in html and "0.150&nbsp;±&nbsp;0.002" in html
    assert shown[0].data == value._repr_markdown_()


def test_a_glued_sentence_is_markdown_on_its_page_and_html_on_another(monkeypatch):
    import myst_nb

    from rsgh.book import notebook as nbk

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, obj, display=False: glued.setdefault(name, obj))
    nbk.glue_markdown("headline", "**No**: R-SGH trails SGH *by 0.01* <at K = 64> in `test` mAP.")
    value = glued["headline"]
    assert value._repr_markdown_() == "**No**: R-SGH trails SGH *by 0.01* <at K = 64> in `test` mAP."
    assert value._repr_html_() == ("<p><strong>No</strong>: R-SGH trails SGH <em>by 0.01</em> &lt;at K = 64&gt; in "
                                   "<code>test</code> mAP.</p>\n")
