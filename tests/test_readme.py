"""The README as a front door: short, its headline filled in, every shell command it shows accepted by
rsgh's command line (or a Makefile target), every Python example run as it stands, every link to a
file of the repository pointing at one that exists.

The rule for the README's code blocks:

- a ``bash`` block: every line is a command; ``python -m rsgh ...`` must parse with ``rsgh.cli``'s
  parser (``--set`` keys must be configuration or runtime fields, ``--only`` pages of the plan),
  ``make X`` must name a target of the Makefile, and ``dask ...`` (another tool's command) is left alone;
- a ``python`` block runs, in order with the others in one namespace, in a fresh folder that holds
  ``my_photos/<class>/<image>`` (three classes of 40 random 32 x 32 images), unless its first line is a
  comment starting with ``# illustrative`` (it needs what a test cannot have, e.g. a SLURM cluster): such
  a block is only compiled.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
EXTERNAL = {"dask"}  # other tools' commands shown in the README


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(README.read_text()) if lang == language]


def illustrative(code: str) -> bool:
    first = next((line for line in code.splitlines() if line.strip()), "")
    return first.strip().lower().startswith("# illustrative")


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, f"the README has {len(text.splitlines())} lines: move details into the book"
    lines = text.splitlines()
    marker = [i for i, line in enumerate(lines) if line.strip() == "<!-- headline -->"]
    assert len(marker) == 1, "the README must hold one <!-- headline --> line, followed by the headline answer"
    assert lines[marker[0] + 1].strip(), "the line after <!-- headline --> must be the headline"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[0] == "## Two commands", headings
    for command in ("make reproduce", "make test"):
        assert command in text.split("## Command line")[0], command


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def command_problem(line: str) -> str | None:
    """What is wrong with one shell command of the README (None: nothing)."""
    from rsgh.book.reproduce import PLAN, load_plan
    from rsgh.cli import build_parser
    from rsgh.config import Config, Runtime

    words = shlex.split(line, comments=True)
    if not words:
        return None
    if words[0] == "make":
        unknown = [w for w in words[1:] if "=" not in w and w not in _make_targets()]
        return f"unknown make target(s) {unknown}" if unknown else None
    if words[0] in EXTERNAL:
        return None
    if words[:3] != ["python", "-m", "rsgh"]:
        return "neither python -m rsgh, make nor a known tool"
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = build_parser().parse_args(words[3:])
    except SystemExit as exit_:
        return None if exit_.code == 0 and "--help" in words else f"does not parse: {err.getvalue().strip()}"
    fields = set(Config.__dataclass_fields__) | set(Runtime.__dataclass_fields__)
    for item in getattr(args, "set", None) or []:
        if item.split("=", 1)[0] not in fields:
            return f"--set {item}: no such parameter"
    pages = load_plan(PLAN)["notebooks"]
    unknown = [p for p in getattr(args, "only", None) or [] if p not in pages]
    return f"--only names unknown page(s) {unknown}" if unknown else None


def test_every_shell_command_of_the_readme_is_accepted():
    commands = [line for code in blocks("bash") for line in code.splitlines() if line.strip()]
    assert len(commands) >= 10
    problems = [f"{line!r}: {why}" for line in commands if (why := command_problem(line))]
    assert not problems, "\n".join(problems)
    assert command_problem("python -m rsgh train --config e9-rsgh --out x")  # the check does check
    assert command_problem("python -m rsgh train --config e1-sgh --set epoch=3 --out x")
    assert command_problem("python -m rsgh reproduce --only e3")
    assert command_problem("make everything")


def test_every_python_block_compiles_and_says_whether_it_runs():
    codes = blocks("python")
    assert codes, "the README shows the Python API"
    for code in codes:
        compile(code, "README.md", "exec")
    assert any(not illustrative(c) for c in codes)


def test_every_link_to_a_file_exists():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to the book's pages"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def _photos(root: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / "my_photos" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(40):
            pixels = np.clip(rng.normal(60 + 70 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.slow
def test_the_readmes_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RSGH_CACHE", str(tmp_path / "cache"))
    _photos(tmp_path)
    namespace: dict = {}
    ran = 0
    for code in blocks("python"):
        if illustrative(code):
            continue
        exec(compile(code, "README.md", "exec"), namespace)
        ran += 1
    assert ran >= 1
    assert (tmp_path / "runs" / "mine" / "model.pt").exists()
    assert namespace["codes"].shape == (4, 16) and set(namespace["codes"].ravel()) <= {0, 1}
    assert namespace["features"].shape == (4, 512)


def test_the_architecture_table_names_every_module():
    text = README.read_text()
    package = ROOT / "rsgh"
    missing = []
    for folder in sorted(p for p in package.iterdir() if (p / "__init__.py").exists()):
        row = next((line for line in text.splitlines() if line.startswith(f"| `rsgh/{folder.name}/` |")), "")
        missing += [f"rsgh/{folder.name}/{m.name}" for m in sorted(folder.glob("*.py"))
                    if m.stem != "__init__" and f"`{m.stem}`" not in row]
    assert not missing, f"modules missing from the README's architecture table: {missing}"
