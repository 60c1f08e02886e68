"""The reproduction report: every number a page glued, published beside re-executed, and a verdict
that respects multiplicity and the claims.

- **Numbers.** Each headline number (myst-nb ``glue``, :func:`rsgh.book.notebook.glue_number`) is
  compared with its published value. Tolerance: ``max(3 sd sqrt(1/n_published + 1/n_reproduced), 1% of
  the published value)``, ``sd`` the seed spread glued with it: a rerun with other seeds or on another CPU
  differs from the published mean by the seed spread (training is chaotic), not by rounding. Each number
  also gets its standardised difference ``(reproduced - published) / (sd sqrt(1/n_p + 1/n_r))``.
- **Multiplicity.** Hundreds of numbers are compared, and a correct rerun misses a few by chance: a
  spread measured on few seeds is itself uncertain, so the 3 sd rule misses with probability
  P(|t| > 3) under Student's t (9.5% with 3 seeds, 4% with 5). The overall line compares the count of
  misses with that chance: the probability of at least as many misses if every number came from the
  published distribution (a Poisson-binomial tail, :func:`chance_of_misses`). The rerun fails only when
  that probability is below ``LEVEL``.
- **Claims.** The verdicts page glues each row's effect (``verdict_<row>``, with its seed spread) and its
  Holm verdict (``verdictsign_<row>``: +1 supported, -1 not supported, 0 undecided). A claim changes when
  its effect falls outside its tolerance, or its verdict reverses (supported against not supported), or a
  decided verdict becomes undecided with as many seeds as published.

Exit status: 0 when the misses are consistent with chance and no claim changed; 1 otherwise, with the
reason in one line.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Sequence

import nbformat

LEVEL = 0.01  # the rerun fails when its misses are this improbable by chance alone


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


def miss_probability(sd: float | None, n_pub: int, n_rep: int, tol: float) -> float:
    """The chance that a correct rerun falls outside ``tol`` (Student's t with n_pub - 1 degrees of
    freedom: the spread is measured on n_pub seeds); 0 for a number without a spread (deterministic)."""
    from scipy import stats

    if sd is None or sd <= 0 or n_pub < 2:
        return 0.0
    k = tol / (sd * math.sqrt(1 / n_pub + 1 / max(n_rep, 1)))
    return float(2 * stats.t.sf(k, n_pub - 1))


def parameters(path: Path) -> dict:
    """The parameters a page ran with: its parameters cell's defaults (papermill records only the values it
    was given, and a page published with its defaults records none of them), then the values given."""
    from papermill.translators import PythonTranslator  # the pages are Python; papermill's own reading

    nb, out = nbformat.read(path, as_version=4), {}
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            for p in PythonTranslator.inspect(cell):
                try:
                    out[p.name] = ast.literal_eval(p.default)
                except (ValueError, SyntaxError, TypeError):
                    continue  # an expression, not a literal: not comparable
    out.update(nb.metadata.get("papermill", {}).get("parameters", {}) or {})
    return out


# Numbers that count what a page covers (the Holm family of the verdicts page): compared only when the rerun
# covers the published page, since a narrower rerun (fewer code lengths) has fewer rows by design.
SCOPE_COUNTS = ("verdict_rows",)


def narrower(published: dict, reproduced: dict) -> bool:
    """Did the rerun cover less than the published page, not only fewer seeds (a level that retrains one
    code length, say)? Then a published number it did not produce is out of its scope, not a miss."""
    for key, value in published.items():
        other = reproduced.get(key, value)
        if "seeds" in key or not isinstance(value, (list, dict)) or other == value:
            continue
        if (set(other) if isinstance(other, list) else set(other.items())) < (
                set(value) if isinstance(value, list) else set(value.items())):
            return True
    return False


def compare(published_dir: Path, reproduced_dir: Path, names: Sequence[str]) -> list[dict]:
    """One record per headline number of each page: published, reproduced, difference, standardised
    difference, tolerance, the chance of a miss, ok. A number a narrower rerun did not produce
    (:func:`narrower`) is left out of the comparison."""
    records = []
    for page in names:
        pub_path, rep_path = Path(published_dir) / f"{page}.ipynb", Path(reproduced_dir) / f"{page}.ipynb"
        if not pub_path.exists() or not rep_path.exists():
            continue
        pub, rep = glued(pub_path), glued(rep_path)
        scoped = narrower(parameters(pub_path), parameters(rep_path))
        for name in sorted(k for k in pub if not k.endswith(("__sd", "__n"))):
            if scoped and (name not in rep or name in SCOPE_COUNTS):
                continue
            n_pub, n_rep = int(pub.get(f"{name}__n", 1)), int(rep.get(f"{name}__n", 1))
            sd = pub.get(f"{name}__sd", rep.get(f"{name}__sd"))
            tol = tolerance(pub[name], sd, n_pub, n_rep)
            value = rep.get(name)
            ok = value is not None and abs(value - pub[name]) <= tol
            z = None
            if value is not None and sd:
                z = (value - pub[name]) / (sd * math.sqrt(1 / max(n_pub, 1) + 1 / max(n_rep, 1)))
            records.append({"page": page, "quantity": name, "published": pub[name], "reproduced": value,
                            "difference": None if value is None else value - pub[name], "z": z, "tolerance": tol,
                            "seeds_published": n_pub, "seeds_reproduced": n_rep,
                            "spread_published": pub.get(f"{name}__sd"),
                            "p_miss": miss_probability(sd, n_pub, n_rep, tol), "ok": bool(ok)})
    return records


def numbers(records: list[dict]) -> list[dict]:
    """The records judged as numbers: all but the verdicts' signs (``verdictsign_*``), which only the claim
    rule reads (a one-seed rerun decides no verdict, and that is not a miss)."""
    return [r for r in records if not r["quantity"].startswith("verdictsign_")]


def expected_misses(records: list[dict]) -> tuple[float, int]:
    """(misses expected by chance alone, how many numbers have a published seed spread)."""
    probs = [r["p_miss"] for r in numbers(records) if r.get("p_miss")]
    return float(sum(probs)), len(probs)


def chance_of_misses(records: list[dict]) -> float:
    """P(at least as many misses as observed) if every number came from its published distribution: the
    upper tail of the Poisson-binomial distribution of the per-number miss chances (exact, by convolution).
    A missing number counts as a miss that chance does not explain."""
    records = numbers(records)
    observed = sum(not r["ok"] for r in records)
    if observed == 0:
        return 1.0
    if any(r["reproduced"] is None for r in records):
        return 0.0
    dist = [1.0]
    for r in records:
        p = r.get("p_miss", 0.0)
        dist = [(dist[i] if i < len(dist) else 0.0) * (1 - p) + (dist[i - 1] * p if i > 0 else 0.0)
                for i in range(len(dist) + 1)]
    return float(min(1.0, sum(dist[observed:])))


def claim_changes(records: list[dict]) -> list[dict]:
    """The claims of the verdicts page whose effect fell outside its tolerance or whose verdict changed."""
    by = {(r["page"], r["quantity"]): r for r in records}
    out = []
    for r in records:
        row = r["quantity"][len("verdict_"):]
        sign = by.get((r["page"], f"verdictsign_{row}"))
        if not r["quantity"].startswith("verdict_") or sign is None:
            continue  # a claim's effect has its sign beside it; other verdict_ numbers are not claims
        reason = None
        if not r["ok"]:
            reason = "effect outside its tolerance" if r["reproduced"] is not None else "not reproduced"
        elif sign["reproduced"] is not None and sign["published"] != sign["reproduced"]:
            if sign["published"] * sign["reproduced"] < 0:
                reason = "verdict reversed"
            elif sign["published"] != 0 and r["seeds_reproduced"] >= r["seeds_published"]:
                reason = "decided verdict became undecided"
        if reason:
            out.append({"page": r["page"], "claim": row, "reason": reason, "published": r["published"],
                        "reproduced": r["reproduced"]})
    return out


def numbers_line(records: list[dict]) -> str:
    records = numbers(records)
    good = sum(r["ok"] for r in records)
    expected, count = expected_misses(records)
    return (f"{good} of {len(records)} numbers reproduced within tolerance; {len(records) - good} outside, about "
            f"{expected:.1f} expected by chance alone (of the {count} numbers with a published seed spread); "
            f"chance of at least as many: {chance_of_misses(records):.3g}")


def overall(records: list[dict]) -> tuple[int, str]:
    """(exit status, the verdict line)."""
    changes = claim_changes(records)
    chance = chance_of_misses(records)
    if not records:
        return 1, "FAILED: no number was compared (no page produced its glued numbers)"
    if changes:
        first = changes[0]
        return 1, (f"FAILED: {len(changes)} claim(s) of the verdicts changed (first: {first['claim']}, "
                   f"{first['reason']}); {numbers_line(records)}")
    if chance < LEVEL:
        return 1, (f"FAILED: more numbers outside tolerance than chance explains (chance {chance:.3g} < {LEVEL}); "
                   f"{numbers_line(records)}")
    return 0, f"REPRODUCED: every claim holds; {numbers_line(records)}"


def report_page(records: list[dict], profile: str, seconds: float, copied: Sequence[str] = ()) -> str:
    """The reproduction report as a MyST page of the reproduction's book."""
    status, line = overall(records)
    lines = ["# Reproduction report", "", f"Profile `{profile}`, re-executed in {seconds / 60:.1f} minutes.", "",
             f"**{line}.**", ""]
    if copied:
        lines += [f"Pages not re-executed here (shown as published): {', '.join(copied)}.", ""]
    changes = claim_changes(records)
    if changes:
        lines += ["Claims that changed:", ""] + [f"- `{c['claim']}` ({c['page']}): {c['reason']}" for c in changes] + [""]
    lines += ["Each number is a headline number of the published book (glued by its notebook) beside the value "
              "re-executed here. Tolerance: $\\max(3\\,s\\sqrt{1/n_p + 1/n_r},\\ 0.01\\,|\\text{published}|)$, with "
              "$s$ the seed spread and $n_p$, $n_r$ the seeds behind each value; $z$ is the difference in units of "
              "$s\\sqrt{1/n_p + 1/n_r}$.", "",
              "One table per page (its quantities named without the page's prefix), so that each fits the page's "
              "column.", ""]
    for page in dict.fromkeys(r["page"] for r in records):
        lines += [f"## {page}", "", "| quantity | published | reproduced | difference (z) | tolerance | ok |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in (r for r in records if r["page"] == page):
            rep = "missing" if r["reproduced"] is None else f"{r['reproduced']:.4g}"
            diff = "" if r["difference"] is None else f"{r['difference']:+.3g}"
            if r.get("z") is not None:
                diff += f" ({r['z']:+.2f})"
            name = r["quantity"].removeprefix(f"{page}_")
            lines.append(f"| `{name}` | {r['published']:.4g} | {rep} | {diff} | {r['tolerance']:.3g} | "
                         f"{'yes' if r['ok'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines) + "\n"
