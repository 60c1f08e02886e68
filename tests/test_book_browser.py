"""The book in a real browser: every page of a built book loaded in headless Chromium after its
scripts ran (``--dump-dom``), then checked on the rendered DOM:

- every ``<img>`` refers to a file of the book that exists and is a readable image;
- every formula was typeset by the book's own MathJax (``_static/mathjax/tex-chtml.js``, loaded
  locally): each ``.math`` element holds an ``mjx-container``, no MathJax error, no raw TeX left in
  the text (``\\(``, ``\\[``, ``$$``, ``\\frac`` ... outside code);
- no page shows ``nan``, ``NaN``, ``None`` (or ``<NA>``, ``NaT``) as a table cell, an output value or
  a glued number, nor a Python traceback;
- no script, stylesheet or image comes from the network (http/https);
- no table, image or figure overflows the content column in a 1280 px wide window (its width, or the
  scroll width of a box around it, against the column's width, measured in Chromium by a script
  added to a copy of the page).

Run on the published book (built from a copy) and on a reproduction's book
(``reproduction/<profile>/_build/html``; a tiny one is made when none exists). From the command
line: ``python tests/test_book_browser.py PATH/_build/html`` prints the problems of a built book.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import NOT_YET_RENDERED, page_of

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MATHJAX = "_static/mathjax/tex-chtml.js"

# text that must not be left in a page's prose once MathJax ran
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:begin|end)\{|\\(?:frac|mathbb|mathrm|mathcal|operatorname|sum|"
                     r"sqrt|left|right|cdot|text|tfrac|dfrac|alpha|beta|lambda|sigma|tau|rho|eta|delta|pi|xi|log|max|"
                     r"min|le|ge|ne|in|mid|quad)\b")
MISSING = {"nan", "NaN", "None", "<NA>", "NaT", "-nan"}
MISSING_WORD = re.compile(r"(?<![\w.])(?:nan|NaN|None|<NA>|NaT)(?![\w])")
TRACEBACK = "Traceback (most recent call last)"
PROSE_SKIP = ("script", "style", "noscript", "template", "pre", "code", "textarea", "mjx-container", "kbd", "samp")


# what ipykernel says on stderr when a page executed at build time (book/performance.md) starts its kernel
KERNEL_NOTICE = re.compile(r"\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption")


def _jupyter_book() -> str:
    jb = Path(sys.executable).parent / "jupyter-book"
    return str(jb) if jb.exists() else "jupyter-book"


def build_book(book: Path) -> tuple[Path, list[str]]:
    """``jupyter-book build -W -n --keep-going`` of the book folder ``book``: its ``_build/html`` and
    the build's warnings and errors (with ``--keep-going`` the pages are written all the same, so a
    failed build is checked in the browser too and every problem is said at once)."""
    done = subprocess.run([_jupyter_book(), "build", "-W", "-n", "--keep-going", str(book)], capture_output=True,
                          text=True, timeout=1800)
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    problems = [f"build: {line.strip()}" for line in text.splitlines() if ("WARNING" in line or "ERROR" in line)
                and not KERNEL_NOTICE.search(line)]
    if done.returncode != 0 and not problems:
        problems = [f"build: exit {done.returncode}: {text[-2000:]}"]
    html = book / "_build" / "html"
    assert html.is_dir(), f"the book {book} was not built: {text[-3000:]}"
    return html, problems


def html_pages(html: Path) -> list[Path]:
    """Every page of a built book (not the theme's templates under ``_static``, ``_sources``...)."""
    return sorted(p for p in html.rglob("*.html")
                  if not any(part.startswith("_") for part in p.relative_to(html).parts[:-1]))


WINDOW = (1280, 1000)
OVERFLOW = "overflows the content column"
# Added to a copy of each page: after the page's scripts ran, every table, image and figure whose box
# ends right of the article column, or sits in a box that scrolls sideways, is listed in a <div>.
MEASURE = r"""<script>window.addEventListener("load", function () { setTimeout(function () {
  var article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  var right = article.getBoundingClientRect().right, found = [];
  document.querySelectorAll("article table, article img, article figure, main table, main img").forEach(function (el) {
    var r = el.getBoundingClientRect(), over = r.width > 0 && r.right > right + 1, a;
    for (a = el.parentElement; a && a !== article && !over; a = a.parentElement) {
      var x = getComputedStyle(a).overflowX;
      if ((x === "auto" || x === "scroll" || x === "hidden") && a.scrollWidth > a.clientWidth + 1) over = true;
    }
    if (over) found.push(el.tagName.toLowerCase() + " " + Math.round(r.width) + " px wide in a column of " +
      Math.round(article.clientWidth) + " px: " + (el.getAttribute("alt") || el.textContent || "").replace(/\s+/g, " ").trim().slice(0, 80));
  });
  var div = document.createElement("div");
  div.id = "rsgh-overflow";
  div.setAttribute("data-found", JSON.stringify(found));
  document.body.appendChild(div);
}, 0); });</script>"""


def dump_dom(page: Path, profile: Path, timeout: float = 120) -> str:
    """The page's DOM after its scripts ran, as headless Chromium serialises it in a 1280 px wide
    window, with the overflow measurement (``MEASURE``) added to a copy of the page beside it."""
    copy = page.with_name(f".rsgh-measure-{page.name}")
    text = page.read_text(errors="replace")
    copy.write_text(text.replace("</body>", MEASURE + "</body>") if "</body>" in text else text + MEASURE)
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars",
               "--virtual-time-budget=10000", "--dump-dom", copy.resolve().as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    finally:
        copy.unlink(missing_ok=True)
    assert done.returncode == 0 and "</html>" in done.stdout, \
        f"chromium could not load {page} (exit {done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def _local_file(page: Path, html: Path, url: str) -> Path | None:
    """The file a relative URL of ``page`` refers to (None for a network URL)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") or url.startswith("//"):
        return None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return (page.parent / unquote(parts.path)).resolve()


def _readable_image(path: Path) -> str | None:
    """None if ``path`` is a readable image with a non-zero size, else what is wrong."""
    if not path.is_file():
        return "missing file"
    if path.suffix.lower() == ".svg":
        text = path.read_text(errors="replace")
        return None if "<svg" in text and "</svg>" in text else "not an SVG image"
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            width, height = im.size
    except Exception as err:  # truncated, not an image: many kinds
        return f"unreadable image ({type(err).__name__}: {err})"
    return None if width > 0 and height > 0 else f"empty image ({width}x{height})"


def check_dom(dom: str, page: Path, html: Path) -> list[str]:
    """The problems of one rendered page."""
    import base64
    import io

    from bs4 import BeautifulSoup

    soup = BeautifulSoup(dom, "html.parser")
    name = str(page.relative_to(html))
    problems = []

    # tables and figures that do not fit the content column (measured in the browser)
    measured = soup.find(id="rsgh-overflow")
    if measured is not None:
        import json

        for what in json.loads(measured.get("data-found") or "[]"):
            problems.append(f"{name}: {OVERFLOW} at {WINDOW[0]} px: {what}")
        measured.decompose()

    # figures
    for img in soup.find_all("img"):
        src = img.get("src") or ""
        if src.startswith("data:"):
            try:
                from PIL import Image

                with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
                    im.load()
            except Exception as err:
                problems.append(f"{name}: an inline <img> is not a readable image ({err})")
            continue
        target = _local_file(page, html, src)
        if target is None:
            problems.append(f"{name}: <img src={src!r}> comes from the network")
        elif (why := _readable_image(target)) is not None:
            problems.append(f"{name}: <img src={src!r}>: {why} ({target})")

    # nothing from the network
    for script in soup.find_all("script", src=True):
        if urlsplit(script["src"]).scheme in ("http", "https") or script["src"].startswith("//"):
            problems.append(f"{name}: loads the external script {script['src']}")
    for link in soup.find_all("link", href=True):
        rel = set(link.get("rel") or [])
        if rel & {"stylesheet", "preload", "modulepreload"} and (
                urlsplit(link["href"]).scheme in ("http", "https") or link["href"].startswith("//")):
            problems.append(f"{name}: loads the external resource {link['href']}")

    # formulas: typeset by the local MathJax
    maths = soup.select(".math")
    scripts = [s["src"] for s in soup.find_all("script", src=True)]
    mathjax = [s for s in scripts if urlsplit(s).path.endswith(MATHJAX) or "mathjax" in s.lower()]
    if maths or soup.find("mjx-container"):
        local = [s for s in mathjax if urlsplit(s).path.endswith(MATHJAX) and (t := _local_file(page, html, s))
                 and t.is_file()]
        if not local:
            problems.append(f"{name}: has formulas but does not load the local {MATHJAX} (scripts: {mathjax})")
        untypeset = [m for m in maths if m.find("mjx-container") is None]
        if untypeset:
            problems.append(f"{name}: {len(untypeset)} of {len(maths)} formulas not typeset by MathJax, e.g. "
                            f"{untypeset[0].get_text()[:80]!r}")
        if not soup.find("mjx-container"):
            problems.append(f"{name}: has formulas but no mjx-container: MathJax did not run")
    for err in soup.find_all(["mjx-merror", "merror"]):
        problems.append(f"{name}: MathJax could not typeset a formula: {err.get_text()[:120]!r}")

    # tracebacks, anywhere (outputs are in <pre>)
    if TRACEBACK in soup.get_text():
        problems.append(f"{name}: shows a Python traceback")
    if soup.select(".output.traceback, .output.error"):
        problems.append(f"{name}: has an error output cell")

    # missing values: table cells, outputs, glued values
    for cell in soup.find_all(["td", "th"]):
        if cell.get_text(strip=True) in MISSING:
            row = cell.find_parent("tr")
            problems.append(f"{name}: a table cell shows {cell.get_text(strip=True)!r} (row: "
                            f"{' | '.join(c.get_text(strip=True) for c in row.find_all(['td', 'th']))[:160] if row else ''})")
    for out in soup.select(".cell_output"):
        for table in out.find_all("table"):
            table.decompose()  # said cell by cell above
        for hit in MISSING_WORD.finditer(out.get_text(" ")):
            text = out.get_text(" ")
            problems.append(f"{name}: an output shows {hit.group()!r}: "
                            f"...{text[max(0, hit.start() - 60):hit.end() + 60].strip()!r}...")
            break
    for pasted in soup.select(".pasted-text, .pasted-inline"):
        if MISSING_WORD.search(pasted.get_text(" ")):
            problems.append(f"{name}: a glued value shows {pasted.get_text(strip=True)!r}")

    # prose: no raw TeX, no missing value as a word (code, outputs and formulas aside)
    main = soup.find("main") or soup.body or soup
    for tag in main.find_all(PROSE_SKIP):
        tag.decompose()
    for out in main.select(".cell_input, .cell_output, .highlight"):
        out.decompose()
    prose = main.get_text(" ")
    for hit in RAW_TEX.finditer(prose):
        problems.append(f"{name}: raw TeX left in the page: ...{prose[max(0, hit.start() - 60):hit.end() + 60].strip()!r}...")
        break
    for hit in re.finditer(r"(?<![\w.])(?:nan|NaN|<NA>|NaT)(?![\w])", prose):
        problems.append(f"{name}: the text shows {hit.group()!r}: ...{prose[max(0, hit.start() - 60):hit.end() + 60].strip()!r}...")
        break
    for hit in re.finditer(r"(?<![\w.])None(?![\w])", prose):
        # "None" as a value (after = or :, in a cell-like position, or alone in parentheses), not English prose
        before, after = prose[max(0, hit.start() - 3):hit.start()], prose[hit.end():hit.end() + 2]
        if re.search(r"[=:(,]\s*$", before) or re.match(r"\s*[),;%]", after) or re.match(r"^\s*$", after):
            problems.append(f"{name}: the text shows the value None: "
                            f"...{prose[max(0, hit.start() - 60):hit.end() + 60].strip()!r}...")
            break
    return problems


def check_book(html: Path, progress: bool = False) -> tuple[list[str], int]:
    """Load every page of the built book ``html`` in headless Chromium and check it; returns the
    problems found and the number of pages loaded."""
    html = Path(html).resolve()
    pages = html_pages(html)
    assert pages, f"no HTML pages under {html}"
    assert (html / MATHJAX).is_file(), f"{html} has no local MathJax ({MATHJAX})"
    problems = []
    with tempfile.TemporaryDirectory(prefix="rsgh-chromium-") as profile:
        for page in pages:
            t0 = time.perf_counter()
            problems += check_dom(dump_dom(page, Path(profile)), page, html)
            if progress:
                print(f"{page.relative_to(html)}: {time.perf_counter() - t0:.1f} s", flush=True)
    return problems, len(pages)


GOOD_PAGE = """<html><head><script src="_static/mathjax/tex-chtml.js"></script></head><body><main>
<p>Prose with a formula <span class="math"><mjx-container>x</mjx-container></span>; None of the bits
collapsed.</p><img src="_images/fig.png"><table><tr><td>0.25</td><td>SGH</td></tr></table>
<div class="cell_input"><pre>x = None</pre></div><div class="cell_output"><pre>0.5</pre></div></main></body></html>"""

BAD_PAGE = """<html><head><script src="https://cdn.example.org/mathjax/tex-chtml.js"></script></head><body><main>
<p>A formula <span class="math">\\(y\\)</span> left raw, and \\frac{a}{b} in the text; mAP: None.</p>
<img src="_images/missing.png"><img src="_images/broken.png">
<table><tr><td>SGH</td><td>nan</td></tr></table>
<div class="cell_output"><pre>map    None</pre><pre>Traceback (most recent call last):</pre></div>
<mjx-merror>Undefined control sequence</mjx-merror></main>
<div id="rsgh-overflow" data-found='["table 1512 px wide in a column of 700 px: SGH"]'></div></body></html>"""


def test_the_checks_find_each_kind_of_problem(tmp_path):
    """``check_dom`` on hand-written rendered pages (no browser): a clean page passes, a bad one is
    caught on every count."""
    from PIL import Image

    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / MATHJAX).write_text("// MathJax")
    (tmp_path / "_images").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "_images" / "fig.png")
    (tmp_path / "_images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    good, bad = tmp_path / "good.html", tmp_path / "bad.html"
    assert check_dom(GOOD_PAGE, good, tmp_path) == []
    found = "\n".join(check_dom(BAD_PAGE, bad, tmp_path))
    for expected in ("external script https://cdn.example.org", "does not load the local _static/mathjax",
                     "1 of 1 formulas not typeset", "no mjx-container", "MathJax could not typeset",
                     "missing.png'>: missing file", "broken.png'>: unreadable image", "a table cell shows 'nan'",
                     "an output shows 'None'", "Python traceback", "raw TeX left", "the value None",
                     "overflows the content column at 1280 px: table 1512 px wide"):
        assert expected in found, f"{expected!r} not found in:\n{found}"
    good.write_text(GOOD_PAGE)
    bad.write_text(BAD_PAGE)
    (tmp_path / "_static" / "webpack-macros.html").write_text("<html></html>")  # a theme template, not a page
    assert html_pages(tmp_path) == [bad, good]


def _need_chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")


def split_stale(found: list[str], stale: set[str]) -> tuple[list[str], list[str]]:
    """(the problems, the overflowing tables of the previous round's pages): a page rendered at this commit
    must fit."""
    def old(p):
        return OVERFLOW in p and page_of(p) in stale
    return [p for p in found if not old(p)], [p for p in found if old(p)]


@pytest.mark.slow
def test_published_book_in_a_browser(tmp_path):
    _need_chromium()
    book = tmp_path / "book"
    shutil.copytree(ROOT / "book", book, ignore=shutil.ignore_patterns("_build"))
    html, problems = build_book(book)
    found, n = check_book(html)
    assert n >= len(list(book.glob("*.ipynb"))) + len(list(book.glob("*.md"))), n
    found, overflow = split_stale(found, NOT_YET_RENDERED)
    problems += found
    assert not problems, f"{len(problems)} problem(s) in the published book:\n" + "\n".join(problems)
    if overflow:  # the previous round's pages, not rendered again yet
        pytest.xfail("pages not rendered at this commit: " + "; ".join(overflow))


@pytest.mark.slow
def test_reproduction_book_in_a_browser(tmp_path, monkeypatch, request):
    """Every reproduction book built here (``reproduction/*/_build/html``); else a tiny one (smoke
    profile, one page) reproduced and built on a local cluster of one worker."""
    _need_chromium()
    from rsgh.errors import NotebookFailed

    books = sorted(p for p in (ROOT / "reproduction").glob("*/_build/html") if (p / "index.html").exists())
    problems = []
    if not books:
        from rsgh.book import schedule
        from rsgh.book.reproduce import reproduce

        data = request.getfixturevalue("mnist_root")  # skips without the real MNIST
        monkeypatch.setenv("RSGH_SCHEDULER", "")  # recorded, so that the address reproduce() sets is undone
        monkeypatch.delenv("RSGH_SCHEDULER")  # its own local cluster, never a running one
        monkeypatch.setenv("RSGH_WORKERS", "1")
        monkeypatch.setenv("RSGH_DATA", str(data))
        published = tmp_path / "published"
        shutil.copytree(ROOT / "book", published, ignore=shutil.ignore_patterns("_build"))
        out = tmp_path / "repro"
        try:
            reproduce("smoke", out=out, only=["mnist_pixels"], runs_dir=tmp_path / "runs", published=published,
                      build=True)  # 0 or 1: the smoke numbers need not match the published ones
        except NotebookFailed as err:  # the book did not build strictly: said, and its pages checked all the same
            if "did not build strictly" not in str(err) or not (out / "_build" / "html" / "index.html").exists():
                raise
            problems.append("build: " + re.sub(r"\x1b\[[0-9;]*m", "", str(err)))
        finally:
            schedule._close()  # the local cluster it started
        books = [out / "_build" / "html"]
    stale, overflow = NOT_YET_RENDERED - {"mnist_pixels"}, []  # the pages copied from the published book as they are
    for html in books:
        found, n = check_book(html)
        assert n >= 2 and (html / "reproduction_report.html").exists(), html
        found, old = split_stale(found, stale)
        problems += [f"{html}: {p}" for p in found]
        overflow += old
    assert not problems, f"{len(problems)} problem(s) in the reproduction's book:\n" + "\n".join(problems)
    if overflow:  # the previous round's pages, copied as published
        pytest.xfail("pages not rendered at this commit: " + "; ".join(overflow))


if __name__ == "__main__":  # python tests/test_book_browser.py PATH/_build/html ...
    status = 0
    for arg in sys.argv[1:]:
        found, n = check_book(Path(arg), progress=True)
        print(f"{arg}: {n} pages, {len(found)} problem(s)")
        for p in found:
            print("  " + p)
        status |= bool(found)
    sys.exit(status)
