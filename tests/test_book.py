"""The book machinery: a notebook of the plan through papermill (smoke profile), then a strict
Jupyter Book build of the whole book with it."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from rsgh.book.reproduce import load_plan, run_plan

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "notebooks" / "plan.yml"


def test_source_notebooks_have_typed_parameters_and_no_outputs():
    plan = load_plan(PLAN)
    sources = {entry.get("notebook", name) for name, entry in plan["notebooks"].items()}
    for name in sources:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, name
        for line in params[0].source.splitlines():
            assert ": " in line.split("=")[0] and "  # " in line, f"{name}: untyped or undocumented: {line}"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
    for entry in plan["notebooks"].values():
        assert {"paper", "smoke"} <= set(entry)


def test_book_pages_were_executed_from_the_current_notebooks():
    """Every page of the book ran to the end from its source notebook as it is now, with the
    parameters of the paper profile. An edited notebook fails here until its page is executed again:
    ``python -m rsgh reproduce --only <name> --redo``."""
    from rsgh.book.reproduce import finished_with

    for name, entry in load_plan(PLAN)["notebooks"].items():
        source = ROOT / "notebooks" / f"{entry.get('notebook', name)}.ipynb"
        assert finished_with(ROOT / "book" / f"{name}.ipynb", entry["paper"], source), \
            f"book/{name}.ipynb is not the current notebooks/{source.name} run with the paper profile"


def test_smoke_notebook_and_strict_book_build(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setenv("RSGH_DATA", str(mnist_root))
    book = tmp_path / "book"
    shutil.copytree(ROOT / "book", book, ignore=shutil.ignore_patterns("_build"))
    runs = tmp_path / "runs"
    records = run_plan(PLAN, "smoke", book, only=["e1_mnist_reconstruction"], redo=True,
                       extra_parameters={"runs_dir": str(runs)})
    assert records[0]["status"] == "executed"
    nb = nbformat.read(book / "e1_mnist_reconstruction.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"]["epochs"] == 1
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "remove-cell" in injected[0].metadata["tags"]
    # the same parameters again: skipped
    again = run_plan(PLAN, "smoke", book, only=["e1_mnist_reconstruction"], extra_parameters={"runs_dir": str(runs)})
    assert again[0]["status"] == "skipped"
    build = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", "-W", "-n", "--keep-going",
                            str(book)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    html = (book / "_build" / "html" / "e1_mnist_reconstruction.html").read_text()
    assert "R-SGH" in html and "Traceback" not in html
    assert (book / "_build" / "html" / "_static" / "mathjax").is_dir()  # MathJax served locally


def test_a_failing_notebook_is_named_and_its_output_kept(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setenv("RSGH_DATA", str(mnist_root))
    with pytest.raises(RuntimeError, match=r"notebook e1_mnist_reconstruction failed.*epochs='ten'.*partial output"):
        run_plan(PLAN, "smoke", tmp_path, only=["e1_mnist_reconstruction"],
                 extra_parameters={"epochs": "ten", "runs_dir": str(tmp_path / "runs")})
    assert (tmp_path / "e1_mnist_reconstruction.ipynb").exists()
    with pytest.raises(ValueError, match="unknown notebook"):
        run_plan(PLAN, "smoke", tmp_path, only=["e9"])
