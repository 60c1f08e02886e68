"""The book's pages, executed with papermill from a plan (``notebooks/plan.yml``), and the
reproduction: every page re-executed into a separate folder and every published number compared.

Each page of the plan has a parameter set per profile (``paper``: what the book shows; ``quick``:
one seed per page; ``smoke``: minutes, to check the machinery). An entry may name its source
notebook (``notebook: NAME``), so one notebook serves several pages.

``reproduce`` never writes into the published ``book/``: it copies the book's text pages into
``reproduction/<profile>/``, executes every page there (a page is skipped only when that folder
already holds it finished from the same cells and parameters: an interrupted reproduction
continues), reads the numbers each notebook glued (myst-nb ``glue``) from both executed copies,
writes ``reproduction_report.json`` and a report page, and builds that folder's book.

Tolerance of a number: ``max(3 * sd * sqrt(1/n_published + 1/n_reproduced), 1% of the published
value)``, where ``sd`` is the seed spread the published page glued with it (else the reproduced
one's): a re-run with other seeds or on another CPU differs from the published mean by the seed
spread (training is chaotic: a rounding difference grows to a seed-sized one), not by rounding.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import nbformat
import yaml

from ..errors import NotebookFailed
from .notebook import strip_stderr
from ..files import atomic_text, check_writable
from ..paths import check_outside_book

ROOT = Path(__file__).resolve().parent.parent.parent
PLAN = ROOT / "notebooks" / "plan.yml"


def load_plan(path: str | Path = PLAN) -> dict:
    try:
        plan = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{path} is not a readable YAML plan{where}: {what}; fix the file or give another --plan") \
            from None
    if not isinstance(plan, dict) or not isinstance(plan.get("notebooks"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'notebooks' section")
    return plan


# One BLAS thread in the pages' kernels (the baselines' numpy products run there; Dask's nanny starts its
# workers so too: distributed.nanny.pre-spawn-environ). Measured on 2 busy cores: an ITQ fit at 64 bits on
# 59,000 x 512 took 36 s with one OpenBLAS thread and more than 300 s with two (idle OpenBLAS threads spin).
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
BOOK = "book"  # the published book's parameters; every profile lists what it changes
PROFILES = ("render", "quick", "paper", "full", "smoke")


def pages(plan_path: str | Path, profile: str, only: Sequence[str] = ()) -> list[tuple[str, Path, dict]]:
    """(page name, source notebook, parameters) of the plan's pages for ``profile`` ("book": the
    published book's; a profile's entry changes the book's parameters, and ``{skip: true}`` leaves the
    page out)."""
    if profile != BOOK and profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; the profiles are {', '.join(PROFILES)}")
    notebooks = load_plan(plan_path)["notebooks"]
    unknown = set(only) - set(notebooks)
    if unknown:
        raise ValueError(f"unknown page(s) {', '.join(sorted(unknown))}; the plan has {', '.join(notebooks)}")
    out = []
    for name, entry in notebooks.items():
        if only and name not in only:
            continue
        if not isinstance(entry, dict) or BOOK not in entry:
            raise ValueError(f"page {name} has no '{BOOK}' parameters in {plan_path}")
        change = {} if profile == BOOK else dict(entry.get(profile) or {})
        if change.pop("skip", False):
            continue
        out.append((name, Path(plan_path).parent / f"{entry.get('notebook', name)}.ipynb",
                    {**(entry[BOOK] or {}), **change}))
    return out


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]


def finished_with(path: Path, parameters: dict, source: Path) -> bool:
    """Did the executed notebook at ``path`` run to the end with exactly these parameters, from
    the cells that the notebook ``source`` holds now (an edited notebook must run again)?"""
    if not path.exists():
        return False
    nb = nbformat.read(path, as_version=4)
    pm = nb.metadata.get("papermill", {})
    if pm.get("exception") or pm.get("parameters") != parameters or not pm.get("end_time"):
        return False  # no end_time: papermill was stopped (killed) while it ran the page
    if any(c.metadata.get("papermill", {}).get("status") != "completed" for c in nb.cells if c.cell_type == "code"):
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


def run_plan(plan_path: str | Path, profile: str, out_dir: str | Path, only: Sequence[str] = (),
             redo: bool = False, cwd: str | Path = ROOT, extra_parameters: dict | None = None,
             expected: dict | None = None) -> list[dict]:
    """Execute the plan's pages for ``profile`` into ``out_dir``; returns one record per page. A page
    that ``out_dir`` already holds, finished from the same cells with the same parameters, is skipped
    unless ``redo``. A failure stops the plan with the page's name; its partial output is kept.
    ``expected``: seconds each page took the last time (for the estimate of the time left)."""
    import papermill as pm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = pages(plan_path, profile, only)
    for var in BLAS_THREADS:  # the kernels inherit it (a value the user set is kept)
        os.environ.setdefault(var, "1")
    records, start, total_runs = [], time.perf_counter(), 0
    for i, (name, source, parameters) in enumerate(selected, 1):
        if extra_parameters:  # to the pages that declare them (papermill warns of any other)
            declared = pm.inspect_notebook(str(source))
            parameters.update({k: v for k, v in extra_parameters.items() if k in declared})
        target = out_dir / f"{name}.ipynb"
        if not redo and finished_with(target, parameters, source):
            print(f"[{i}/{len(selected)}] {name}: already executed in {out_dir}, kept", flush=True)
            records.append({"notebook": name, "status": "kept", "seconds": 0.0})
            continue
        print(f"[{i}/{len(selected)}] {name}: running ({profile}){_left(selected[i - 1:], expected)}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(source), str(target), parameters=parameters, cwd=str(cwd),
                                kernel_name="python3", progress_bar=False, log_output=False,
                                kernel_manager_class=ipc_kernel_manager())
        except pm.PapermillExecutionError as err:
            raise NotebookFailed(f"notebook {name} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                                 f"(partial output kept in {target})") from None
        _hide_injected_parameters(target)
        strip_stderr(target)  # warnings and log lines (with this machine's paths) are not part of the page
        seconds = time.perf_counter() - t0
        trained = _runs_finished_since(Path(cwd) / str(parameters.get("runs_dir", "runs")), time.time() - seconds)
        total_runs += trained
        print(f"[{i}/{len(selected)}] {name}: done in {seconds:.0f} s, {trained} run(s) trained "
              f"({(time.perf_counter() - start) / 60:.1f} min and {total_runs} runs so far)", flush=True)
        records.append({"notebook": name, "status": "executed", "seconds": seconds})
    return records


def ipc_kernel_manager():
    """The kernel manager of the pages' kernels: jupyter_client's, with the kernel's sockets as Unix sockets in a
    folder of this process's own (mode 0700, removed at exit), not TCP ports on localhost that carry code and
    outputs in plain text to any local process (ipykernel warns of it at every page). jupyter_client would put
    them in the kernel's working directory (the user's) by default."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        transport = "ipc"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.ip = str(Path(_socket_folder()) / "kernel")

    return IPCKernelManager


@functools.cache
def _socket_folder() -> str:
    """The folder of this process's kernels' sockets (:func:`ipc_kernel_manager`): made once, removed at exit."""
    import atexit
    import tempfile

    folder = tempfile.mkdtemp(prefix="rsgh-kernels-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _runs_finished_since(runs_dir: Path, since: float) -> int:
    """Run folders under ``runs_dir`` that finished (wrote their summary) after ``since`` (a time.time())."""
    return sum(1 for p in runs_dir.glob("*/*/summary.json") if p.stat().st_mtime >= since) if runs_dir.is_dir() else 0


def _left(remaining: list, expected: dict | None) -> str:
    """", about N min left" from the seconds the remaining pages took the last time (when known)."""
    if not expected or any(name not in expected for name, _, _ in remaining):
        return ""
    return f", about {sum(expected[name] for name, _, _ in remaining) / 60:.0f} min left (as the last time)"


# Written first into the folder of a reproduction: a folder holding it (or under reproduction/, the default
# place) is one rsgh made, which a reproduction may continue and whose copy of the book's text it renews.
MARKER = ".rsgh-reproduction"


def _check_out(out: Path, published: Path) -> None:
    """Refuse an ``--out`` that is (inside) the published book, a file, or a folder holding files that no
    reproduction wrote (it must be new, empty or marked), or that is not writable. Writes nothing."""
    check_outside_book(out, "--out", published)
    check_outside_book(out, "--out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and out.parent != ROOT / "reproduction":
        names = sorted(p.name for p in out.iterdir())
        raise ValueError(f"--out {out} holds files that are not a reproduction ({', '.join(names[:3])}"
                         f"{', ...' if len(names) > 3 else ''}); choose a new or empty folder (nothing was written)")
    check_writable(out)


def _prepare_out(out: Path, published: Path) -> None:
    """The reproduction's folder, marked as rsgh's, with the published book's text."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / MARKER, "a reproduction of the book, made by python -m rsgh reproduce\n")
    _copy_book_text(published, out)


def _copy_book_text(published: Path, out: Path) -> None:
    """The published book's text pages and configuration (not its executed notebooks) into ``out``."""
    for item in published.iterdir():
        if item.name.startswith(("_build", ".")) or item.suffix == ".ipynb":
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, out / item.name)


def _write_toc(out: Path) -> None:
    """The published table of contents, less the pages not re-executed (``--only``), plus the report."""
    toc = yaml.safe_load((out / "_toc.yml").read_text())

    def present(entries):
        kept = []
        for e in entries:
            if (out / f"{e['file']}.ipynb").exists() or (out / f"{e['file']}.md").exists():
                kept.append(dict(e, **({"sections": present(e["sections"])} if "sections" in e else {})))
        return kept

    parts = [dict(p, chapters=present(p["chapters"])) for p in toc.get("parts", []) if p.get("caption") != "Reproduction"]
    toc["parts"] = [p for p in parts if p["chapters"]] + [
        {"caption": "Reproduction", "chapters": [{"file": "reproduction_report"}]}]
    (out / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))


def reproduce(profile: str = "quick", out: str | Path | None = None, plan: str | Path = PLAN, only: Sequence[str] = (),
              scheduler: str | None = None, build: bool = True, published: str | Path = ROOT / "book",
              runs_dir: str | None = None, publish: bool = False) -> int:
    """:func:`_reproduce`, the scheduler it hands the pages' kernels (``RSGH_SCHEDULER``) taken back after it:
    a later call in this process starts or finds its own."""
    before = os.environ.get("RSGH_SCHEDULER")
    try:
        return _reproduce(profile, out, plan, only, scheduler, build, published, runs_dir, publish)
    finally:
        if before is None:
            os.environ.pop("RSGH_SCHEDULER", None)
        else:
            os.environ["RSGH_SCHEDULER"] = before


def _reproduce(profile: str, out, plan, only: Sequence[str], scheduler: str | None, build: bool, published,
               runs_dir: str | None, publish: bool) -> int:
    """Re-execute the plan into ``out`` (default ``reproduction/<profile>``), compare with the published
    book, write the report and build the reproduction's book. Returns 0 when the misses are consistent
    with chance and no claim changed, else 1 (:mod:`rsgh.book.report`). ``runs_dir``: where trained runs
    are kept and reused (default: the plan's). ``publish`` (the book's maintainers): every page executed
    in mode ``publish`` (making what the results store lacks, writing it there), then rendered from the
    store with the book's parameters into ``published``."""
    from . import store as results_store
    from .report import claim_changes, compare, numbers, overall, report_page

    if publish:
        return _publish(plan, only, scheduler, Path(published), runs_dir)
    published = Path(published).resolve()
    out = Path(out or ROOT / "reproduction" / profile).expanduser().resolve()
    _check_out(out, published)  # outside the book; new, empty or a reproduction; writable: before anything is written
    selected = pages(plan, profile, only)  # an unknown profile or page is said before anything is written
    _prepare_out(out, published)
    _use_cluster(scheduler)
    last = results_store.last_reproduction(profile)
    t0 = time.perf_counter()
    records = run_plan(plan, profile, out, only, extra_parameters={"runs_dir": str(runs_dir)} if runs_dir else None,
                       expected=(last or {}).get("page_seconds"))
    seconds = time.perf_counter() - t0
    report = compare(published, out, [r["notebook"] for r in records])
    rerun = {r["notebook"] for r in records}
    for name, _, _ in pages(plan, BOOK):  # pages not re-executed: the published copies, said so
        if name not in rerun and (published / f"{name}.ipynb").exists():
            shutil.copy2(published / f"{name}.ipynb", out / f"{name}.ipynb")
    (out / "reproduction_report.json").write_text(json.dumps(report, indent=2))
    copied = sorted(name for name, _, _ in pages(plan, BOOK) if name not in rerun and (out / f"{name}.ipynb").exists())
    (out / "reproduction_report.md").write_text(report_page(report, profile, seconds, copied))
    _write_toc(out)
    status, line = overall(report)
    if not only:  # a whole reproduction is recorded in the store (the book's Reproducibility page reads it)
        results_store.record_reproduction(profile, line, status, report, records, seconds)
    print(f"{len(records)} page(s) in {seconds / 60:.1f} min; {line}; report: {out / 'reproduction_report.json'}")
    for r in numbers(report):
        if not r["ok"]:
            print(f"  outside tolerance: {r['page']} {r['quantity']}: published {r['published']:.4g}, reproduced "
                  f"{r['reproduced']}, tolerance {r['tolerance']:.3g}")
    for c in claim_changes(report):
        print(f"  claim changed: {c['page']} {c['claim']}: {c['reason']}")
    if build:
        _build(out)
    return status


def _use_cluster(scheduler: str | None) -> None:
    if scheduler:
        os.environ["RSGH_SCHEDULER"] = scheduler  # the notebooks' kernels inherit it
    else:
        from .schedule import get_client

        os.environ["RSGH_SCHEDULER"] = get_client().scheduler.address  # one local cluster for every page


def _publish(plan, only: Sequence[str], scheduler: str | None, published: Path, runs_dir: str | None) -> int:
    """Make what the store lacks (mode publish), then render every page from the store into the book."""
    _use_cluster(scheduler)
    making = ROOT / "reproduction" / "publish"
    import papermill as pm

    # the pages whose notebook reads from the store (a page lists only the parameters it changes)
    selected = [name for name, source, _ in pages(plan, BOOK, only) if "mode" in pm.inspect_notebook(str(source))]
    extra = {"mode": "publish", **({"runs_dir": str(runs_dir)} if runs_dir else {})}
    if selected:
        run_plan(plan, BOOK, making, selected, extra_parameters=extra)
    rendered = ROOT / "reproduction" / "book"
    records = run_plan(plan, BOOK, rendered, only, redo=True)
    for r in records:
        shutil.copy2(rendered / f"{r['notebook']}.ipynb", published / f"{r['notebook']}.ipynb")
    print(f"published {len(records)} page(s) into {published}")
    return 0


def _build(out: Path) -> None:
    jb = Path(sys.executable).parent / "jupyter-book"
    done = subprocess.run([str(jb) if jb.exists() else "jupyter-book", "build", "-W", "-n", "--keep-going",
                           str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        problems = [line for line in (done.stdout + done.stderr).splitlines()
                    if ("WARNING" in line or "ERROR" in line) and "IPKernelApp" not in line]  # a kernel's own note
        raise NotebookFailed(f"the reproduction's book in {out} did not build strictly: " + " | ".join(problems[:5]))
    print(f"book: {out / '_build' / 'html' / 'index.html'}")
