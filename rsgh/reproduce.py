"""Run the book's notebooks with papermill, as listed in a plan file (``notebooks/plan.yml``).

Each notebook has a parameter set per profile (``paper``: the patents' settings; ``smoke``: a
few minutes in all, to check the machinery). Executed notebooks are written into ``book/``.
An entry may name its source notebook (``notebook: NAME``), so one notebook can appear
several times with different parameters. A notebook whose executed copy already ran to the end
with the same parameters, from the same cells (an edited notebook runs again), is skipped unless
``redo``; trained models are reused from their run directories anyway, so a rerun only redraws.
A failure stops the plan with the notebook's name; its partial output is kept for inspection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_plan(path: str | Path) -> dict:
    plan = yaml.safe_load(Path(path).read_text())
    if not isinstance(plan, dict) or not isinstance(plan.get("notebooks"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'notebooks' section")
    return plan


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]


def finished_with(path: Path, parameters: dict, source: Path) -> bool:
    """Did the executed notebook at ``path`` run to the end with exactly these parameters, from
    the cells that the notebook ``source`` holds now (an edited notebook must run again)?"""
    if not path.exists():
        return False
    nb = nbformat.read(path, as_version=4)
    pm = nb.metadata.get("papermill", {})
    if pm.get("exception") or pm.get("parameters") != parameters:
        return False
    if _cells(nb) != _cells(nbformat.read(source, as_version=4)):
        return False
    return not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def _hide_injected_parameters(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
    nbformat.write(nb, path)


def run_plan(plan_path: str | Path, profile: str, out_dir: str | Path = ROOT / "book",
             only: Sequence[str] = (), redo: bool = False, cwd: str | Path = ROOT,
             extra_parameters: dict | None = None) -> list[dict]:
    """Execute the plan's notebooks for ``profile``; returns one record per notebook."""
    import papermill as pm

    plan = load_plan(plan_path)
    notebooks = plan["notebooks"]
    unknown = set(only) - set(notebooks)
    if unknown:
        raise ValueError(f"unknown notebook(s) {', '.join(sorted(unknown))}; the plan has {', '.join(notebooks)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    selected = [n for n in notebooks if not only or n in only]
    for i, name in enumerate(selected, 1):
        entry = notebooks[name]
        if not isinstance(entry, dict) or profile not in entry:
            raise ValueError(f"notebook {name} has no '{profile}' profile in {plan_path}")
        parameters = dict(entry[profile] or {}, **(extra_parameters or {}))
        source = Path(plan_path).parent / f"{entry.get('notebook', name)}.ipynb"
        target = out_dir / f"{name}.ipynb"
        if not redo and finished_with(target, parameters, source):
            print(f"[{i}/{len(selected)}] {name}: already executed from this notebook with these parameters, "
                  "skipped", flush=True)
            records.append({"notebook": name, "status": "skipped", "seconds": 0.0})
            continue
        print(f"[{i}/{len(selected)}] {name}: running ({profile})", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(source), str(target), parameters=parameters, cwd=str(cwd),
                                kernel_name="python3", progress_bar=True, log_output=False)
        except pm.PapermillExecutionError as err:
            raise RuntimeError(f"notebook {name} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                               f"(partial output kept in {target})") from None
        _hide_injected_parameters(target)
        seconds = time.perf_counter() - t0
        print(f"[{i}/{len(selected)}] {name}: done in {seconds:.0f} s", flush=True)
        records.append({"notebook": name, "status": "executed", "seconds": seconds})
    return records
