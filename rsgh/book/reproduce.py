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

import ast
import json
import math
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
FULL = "full"  # the sources' budgets (200 epochs, 60 / 30 trials, 5 seeds): its entries change the paper profile


def pages(plan_path: str | Path, profile: str, only: Sequence[str] = ()) -> list[tuple[str, Path, dict]]:
    """(page name, source notebook, parameters) of the plan's pages for ``profile``."""
    notebooks = load_plan(plan_path)["notebooks"]
    unknown = set(only) - set(notebooks)
    if unknown:
        raise ValueError(f"unknown page(s) {', '.join(sorted(unknown))}; the plan has {', '.join(notebooks)}")
    out = []
    for name, entry in notebooks.items():
        if only and name not in only:
            continue
        if profile == FULL and isinstance(entry, dict) and "paper" in entry:  # full: changes to the paper profile
            params = {**(entry["paper"] or {}), **(entry.get(FULL) or {})}
        elif isinstance(entry, dict) and profile in entry:
            params = dict(entry[profile] or {})
        else:
            raise ValueError(f"page {name} has no '{profile}' profile in {plan_path}")
        out.append((name, Path(plan_path).parent / f"{entry.get('notebook', name)}.ipynb", params))
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
             redo: bool = False, cwd: str | Path = ROOT, extra_parameters: dict | None = None) -> list[dict]:
    """Execute the plan's pages for ``profile`` into ``out_dir``; returns one record per page. A page
    that ``out_dir`` already holds, finished from the same cells with the same parameters, is skipped
    unless ``redo``. A failure stops the plan with the page's name; its partial output is kept."""
    import papermill as pm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = pages(plan_path, profile, only)
    for var in BLAS_THREADS:  # the kernels inherit it (a value the user set is kept)
        os.environ.setdefault(var, "1")
    records = []
    for i, (name, source, parameters) in enumerate(selected, 1):
        if extra_parameters:  # to the pages that declare them (papermill warns of any other)
            declared = pm.inspect_notebook(str(source))
            parameters.update({k: v for k, v in extra_parameters.items() if k in declared})
        target = out_dir / f"{name}.ipynb"
        if not redo and finished_with(target, parameters, source):
            print(f"[{i}/{len(selected)}] {name}: already executed in {out_dir}, kept", flush=True)
            records.append({"notebook": name, "status": "kept", "seconds": 0.0})
            continue
        print(f"[{i}/{len(selected)}] {name}: running ({profile})", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(source), str(target), parameters=parameters, cwd=str(cwd),
                                kernel_name="python3", progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as err:
            raise NotebookFailed(f"notebook {name} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                                 f"(partial output kept in {target})") from None
        _hide_injected_parameters(target)
        seconds = time.perf_counter() - t0
        print(f"[{i}/{len(selected)}] {name}: done in {seconds:.0f} s", flush=True)
        records.append({"notebook": name, "status": "executed", "seconds": seconds})
    return records


def glued(path: Path) -> dict[str, float]:
    """The numbers a notebook glued (``rsgh.book.notebook.glue_number``), by name."""
    out = {}
    for cell in nbformat.read(path, as_version=4).cells:
        for o in cell.get("outputs", []):
            scrapbook = o.get("metadata", {}).get("scrapbook", {})
            name = scrapbook.get("name")
            text = o.get("data", {}).get(scrapbook.get("mime_prefix", "") + "text/plain")
            if name is not None and text is not None:
                try:
                    out[name] = float(ast.literal_eval(text))
                except (ValueError, SyntaxError, TypeError):
                    continue  # a glued text or figure: not a number
    return out


def tolerance(published: float, sd: float | None, n_pub: int, n_rep: int) -> float:
    spread = 3 * sd * math.sqrt(1 / max(n_pub, 1) + 1 / max(n_rep, 1)) if sd is not None else 0.0
    return max(spread, 0.01 * abs(published), 1e-9)


def compare(published_dir: Path, reproduced_dir: Path, names: Sequence[str]) -> list[dict]:
    """One record per headline number of each page: published, reproduced, tolerance, ok."""
    records = []
    for page in names:
        pub_path, rep_path = published_dir / f"{page}.ipynb", reproduced_dir / f"{page}.ipynb"
        if not pub_path.exists() or not rep_path.exists():
            continue
        pub, rep = glued(pub_path), glued(rep_path)
        for name in sorted(k for k in pub if not k.endswith(("__sd", "__n"))):
            n_pub, n_rep = int(pub.get(f"{name}__n", 1)), int(rep.get(f"{name}__n", 1))
            sd = pub.get(f"{name}__sd", rep.get(f"{name}__sd"))
            tol = tolerance(pub[name], sd, n_pub, n_rep)
            value = rep.get(name)
            ok = value is not None and abs(value - pub[name]) <= tol
            records.append({"page": page, "quantity": name, "published": pub[name], "reproduced": value,
                            "difference": None if value is None else value - pub[name], "tolerance": tol,
                            "seeds_published": n_pub, "seeds_reproduced": n_rep,
                            "spread_published": pub.get(f"{name}__sd"), "ok": bool(ok)})
    return records


def verdict(records: list[dict]) -> str:
    good = sum(r["ok"] for r in records)
    return f"{good} of {len(records)} numbers reproduced within tolerance"


def expected_misses(records: list[dict]) -> tuple[float, int]:
    """(how many of the numbers with a published seed spread would fall outside their tolerance by
    chance alone, how many such numbers there are). A spread measured on n_p seeds is itself uncertain:
    if the reproduced value comes from the same distribution as the published seeds (normal), the
    difference over ``s sqrt(1/n_p + 1/n_r)`` follows Student's t with n_p - 1 degrees of freedom, so
    the 3 s rule misses with probability P(|t| > 3): 9.5% with 3 seeds, 4.0% with 5, not 0.27%."""
    from scipy import stats

    expected, count = 0.0, 0
    for r in records:
        s, n_p, n_r = r.get("spread_published"), r["seeds_published"], r["seeds_reproduced"]
        if s is None or s <= 0 or n_p < 2:
            continue
        k = r["tolerance"] / (s * math.sqrt(1 / n_p + 1 / max(n_r, 1)))
        expected += 2 * float(stats.t.sf(k, n_p - 1))
        count += 1
    return expected, count


def chance_line(records: list[dict]) -> str:
    expected, count = expected_misses(records)
    return (f"by chance alone, about {expected:.1f} of the {count} numbers with a published seed spread would "
            f"fall outside (spreads from few seeds; Student's t)")


def report_page(records: list[dict], profile: str, seconds: float, copied: Sequence[str] = ()) -> str:
    """The reproduction report as a MyST page of the reproduction's book."""
    lines = ["# Reproduction report", "",
             f"Profile `{profile}`, re-executed in {seconds / 60:.1f} minutes: **{verdict(records)}**; "
             f"{chance_line(records)}.", ""]
    if copied:
        lines += [f"Pages not re-executed here (shown as published): {', '.join(copied)}.", ""]
    lines += [
             "Each number is a headline number of the published book (glued by its notebook) beside the value "
             "re-executed here. Tolerance: $\\max(3\\,s\\sqrt{1/n_p + 1/n_r},\\ 0.01\\,|\\text{published}|)$, "
             "with $s$ the seed spread and $n_p$, $n_r$ the seeds behind each value.", "",
             "| page | quantity | published | reproduced | difference | tolerance | ok |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        rep = "missing" if r["reproduced"] is None else f"{r['reproduced']:.4g}"
        diff = "" if r["difference"] is None else f"{r['difference']:+.3g}"
        lines.append(f"| {r['page']} | `{r['quantity']}` | {r['published']:.4g} | {rep} | {diff} | "
                     f"{r['tolerance']:.3g} | {'yes' if r['ok'] else '**no**'} |")
    return "\n".join(lines) + "\n"


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


def reproduce(profile: str = "paper", out: str | Path | None = None, plan: str | Path = PLAN, only: Sequence[str] = (),
              scheduler: str | None = None, build: bool = True, published: str | Path = ROOT / "book",
              runs_dir: str | None = None, publish: bool = False) -> int:
    """Re-execute the plan into ``out`` (default ``reproduction/<profile>``), compare with the published
    book, write the report and build the reproduction's book. Returns 0 when every number is within
    tolerance, else 1. ``runs_dir``: where trained runs are kept and reused (default: the plan's).
    ``publish``: then copy the executed pages into the published book (what its maintainers do to
    update it; never done otherwise)."""
    published = Path(published).resolve()
    out = Path(out or ROOT / "reproduction" / profile).expanduser().resolve()
    _check_out(out, published)  # outside the book; new, empty or a reproduction; writable: before anything is written
    pages(plan, profile, only)  # an unknown profile or page is said before anything is written
    _prepare_out(out, published)
    if scheduler:
        os.environ["RSGH_SCHEDULER"] = scheduler  # the notebooks' kernels inherit it
    else:
        from .schedule import get_client

        os.environ["RSGH_SCHEDULER"] = get_client().scheduler.address  # one local cluster for every page
    t0 = time.perf_counter()
    records = run_plan(plan, profile, out, only, extra_parameters={"runs_dir": str(runs_dir)} if runs_dir else None)
    seconds = time.perf_counter() - t0
    report = compare(published, out, [r["notebook"] for r in records])
    rerun = {r["notebook"] for r in records}
    for name, _, _ in pages(plan, profile):  # pages not re-executed (--only): the published copies, said so
        if name not in rerun and (published / f"{name}.ipynb").exists():
            shutil.copy2(published / f"{name}.ipynb", out / f"{name}.ipynb")
    (out / "reproduction_report.json").write_text(json.dumps(report, indent=2))
    copied = sorted(name for name, _, _ in pages(plan, profile) if name not in rerun and (out / f"{name}.ipynb").exists())
    (out / "reproduction_report.md").write_text(report_page(report, profile, seconds, copied))
    _write_toc(out)
    print(f"{len(records)} page(s) in {seconds:.0f} s; {verdict(report)} ({chance_line(report)}); "
          f"report: {out / 'reproduction_report.json'}")
    for r in report:
        if not r["ok"]:
            print(f"  outside tolerance: {r['page']} {r['quantity']}: published {r['published']:.4g}, reproduced "
                  f"{r['reproduced']}, tolerance {r['tolerance']:.3g}")
    if publish:
        for r in records:
            shutil.copy2(out / f"{r['notebook']}.ipynb", published / f"{r['notebook']}.ipynb")
        print(f"published {len(records)} page(s) into {published}")
    if build:
        jb = Path(sys.executable).parent / "jupyter-book"
        done = subprocess.run([str(jb) if jb.exists() else "jupyter-book", "build", "-W", "-n", "--keep-going",
                               str(out)], capture_output=True, text=True)
        if done.returncode != 0:
            problems = [line for line in (done.stdout + done.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
            raise NotebookFailed(f"the reproduction's book in {out} did not build strictly: "
                                 + " | ".join(problems[:5]))
        print(f"book: {out / '_build' / 'html' / 'index.html'}")
    return 0 if all(r["ok"] for r in report) else 1
