"""One figure style for the whole book: a fixed colour and marker per method, human axis labels with
units, integer epoch ticks, at most two panels per row, and every figure shown with a caption and alt
text.

Sizes: a figure is at most ``WIDTH`` inches wide at ``DPI`` dots per inch, i.e. about the book's content
column (about 700 px), so it is shown at (nearly) its own size and a ``FONT``-point label stays at least
9 pt on the page. With two panels per row each panel is 3.6 inches wide.

The colours are Okabe and Ito's colour-blind-safe set; a method keeps its colour and marker on every
page. Variants of a method ("SGH, tuned", "R-SGH, patents' settings", "SGH, epoch 50") keep the
method's colour and differ by line style; other labels (an ablation's readings) take colours that no
method uses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

DPI = 100
WIDTH = 7.2  # inches: two panels, 720 px at DPI, the book's content column
PANEL_WIDTH = WIDTH / 2
PANEL_HEIGHT = 2.9
FONT = 10  # points; shown at >= 9 pt when a WIDTH-inch figure is fitted into 700 px
MAX_COLUMNS = 2


@dataclass(frozen=True)
class Look:
    color: str
    marker: str


# the methods and baselines of the book, each with its colour and marker on every page
METHODS: dict[str, Look] = {
    "SGH": Look("#0072B2", "o"),                             # blue
    "R-SGH": Look("#D55E00", "s"),                           # vermillion
    "SGH, R-SGH's architecture": Look("#CC79A7", "D"),       # reddish purple
    "ITQ": Look("#009E73", "^"),                             # bluish green
    "LSH": Look("#7F7F7F", "v"),                             # grey
    "PCAH": Look("#E69F00", "P"),                            # orange
    "SH": Look("#56B4E9", "X"),                              # sky blue
    "linear SGH (reference code)": Look("#000000", "*"),    # black
}
# other names of the same methods (as runs, arms and older pages spell them)
ALIASES = {
    "sgh": "SGH", "rsgh": "R-SGH", "r-sgh": "R-SGH", "sgh-arch": "SGH, R-SGH's architecture",
    "sgh in r-sgh's architecture": "SGH, R-SGH's architecture", "sgh (r-sgh's architecture)": "SGH, R-SGH's architecture",
    "sgh, r-sgh architecture": "SGH, R-SGH's architecture", "sgh-reference": "linear SGH (reference code)",
    "linear sgh": "linear SGH (reference code)", "sgh (reference code)": "linear SGH (reference code)",
    "itq": "ITQ", "lsh": "LSH", "pcah": "PCAH", "sh": "SH", "spectral hashing": "SH",
}
# colours for labels that are not a method (an ablation's readings, a dataset): none of the methods'
EXTRA = ["#8C564B", "#9467BD", "#BCBD22", "#17BECF", "#393B79", "#E377C2", "#637939", "#843C39"]
EXTRA_MARKERS = ["p", "h", "<", ">", "d", "8", "H", "1"]
# qualifiers of a method's variant and the line style each gets (the method's colour is kept)
VARIANT_STYLES = {"tuned": "-", "best validation epoch": "-", "kept model": "-", "patents' settings": "--",
                  "patents": "--", "last epoch": ":", "epoch": ":", "default": "-"}

# axis labels: a metric's column name -> what a reader sees (with units where there are units)
LABELS = {
    "epoch": "epoch", "iteration": "training step", "bits": "code length K (bits)", "K": "code length K (bits)",
    "recon_mse": "test reconstruction error (MSE)", "recon_half_sse": "test reconstruction error (half SSE per image)",
    "train_recon_mse": "training reconstruction error (MSE)",
    "active_units_001": "active units (A > 0.01)", "active_units_005": "active units (A > 0.05)",
    "kl": "KL divergence per bit (nats)", "mean_kl": "mean KL per bit (nats)", "kl_total": "total KL (nats)",
    "bit_balance_min": "balance of the least balanced bit", "constant_bits": "constant bits",
    "bit_corr_mean": "mean |correlation| between bits", "lambda_mean": "mean adversary weight λ",
    "lambda_max": "largest adversary weight λ",
    "val_map": "validation mAP", "map": "test mAP", "test_map": "test mAP", "best_val_map": "best validation mAP",
    "train_loss": "training loss (per image)", "train_rec": "training reconstruction loss", "train_kl": "training KL",
    "train_tie": "tie term", "train_red": "redundancy term",
    "precision": "precision", "recall": "Recall10@N", "N": "N (items retrieved)", "k": "k (items retrieved)",
    "precision_at_k": "precision@k", "precision_within_radius": "precision within Hamming radius 2",
    "elapsed_s": "elapsed time (s)", "wall_time_s": "wall time (s)", "wall_time_h": "wall time (hours)",
    "hours": "wall time (hours)", "seconds": "time (s)", "steps_per_second": "training steps per second",
    "radius": "Hamming radius", "validation_map": "validation mAP", "value": "validation mAP",
}

# datasets as a reader names them (figure titles, table headings)
DATASET_NAMES = {"mnist": "MNIST (pixels)", "fashion-mnist": "Fashion-MNIST (pixels)", "cifar10": "CIFAR-10 (GIST-512)",
                 "caltech256": "Caltech-256 (GIST-512)"}


def _method(text: str) -> str | None:
    for candidate in (text, text.lower()):
        if candidate in METHODS:
            return candidate
        if candidate in ALIASES:
            return ALIASES[candidate]
    return None


def canonical(name: str) -> tuple[str | None, str]:
    """(the method a label names, its qualifier): ``"SGH, tuned"`` -> ``("SGH", "tuned")``,
    ``"rsgh"`` -> ``("R-SGH", "")``, ``"R-SGH redundancy-kl"`` -> ``("R-SGH", "redundancy-kl")``;
    ``(None, name)`` for a label that names no method."""
    text = str(name).strip()
    if (hit := _method(text)) is not None:
        return hit, ""
    for sep in (", ", " (", " "):  # "SGH, tuned", "SGH (tuned)", "R-SGH default": the longest head that is a method
        parts = text.split(sep)
        for cut in range(len(parts) - 1, 0, -1):
            if (hit := _method(sep.join(parts[:cut]))) is not None:
                return hit, sep.join(parts[cut:]).rstrip(")").strip()
    return None, text


def _known_variant(qualifier: str) -> str | None:
    """The line style of a known qualifier ("tuned", "patents' settings", "epoch 50"), else None."""
    q = qualifier.lower()
    for key, linestyle in VARIANT_STYLES.items():
        if q == key or q.startswith(key + " "):
            return linestyle
    return None


def looks(names: Iterable[str]) -> dict[str, dict]:
    """Matplotlib keywords (``color``, ``marker``, ``linestyle``) for each label of one figure.

    A method (or its alias) gets its own colour and marker, always the same. A variant of a method
    with a known qualifier ("tuned", "patents' settings", "epoch 50") keeps the method's colour and
    marker with its own line style. Of labels that would look the same (an ablation's readings "R-SGH
    default", "R-SGH redundancy-kl" ...), the first keeps the method's look and the others take colours
    that no method uses, in order; so do labels that name no method."""
    out, used, extra = {}, set(), 0
    for name in dict.fromkeys(names):
        method, qualifier = canonical(name)
        linestyle = _known_variant(qualifier) if qualifier else "-"
        if method is not None and (method, linestyle or "-") not in used:
            look = METHODS[method]
            out[name] = {"color": look.color, "marker": look.marker, "linestyle": linestyle or "-"}
            used.add((method, linestyle or "-"))
            continue
        out[name] = {"color": EXTRA[extra % len(EXTRA)], "marker": EXTRA_MARKERS[extra % len(EXTRA_MARKERS)],
                     "linestyle": "-"}
        extra += 1
    return out


def palette(names: Iterable[str]) -> dict[str, str]:
    """Colour per label (for seaborn's ``palette=``)."""
    return {k: v["color"] for k, v in looks(names).items()}


def method_color(name: str) -> str:
    """The colour of a method (or of a variant of it) on every page of the book."""
    method, _ = canonical(name)
    if method is None:
        raise KeyError(f"{name!r} is not one of the book's methods ({', '.join(METHODS)})")
    return METHODS[method].color


def axis_label(column: str) -> str:
    """What a reader sees for a column name (``recon_mse`` -> "test reconstruction error (MSE)");
    an unknown name has its underscores turned into spaces."""
    if column in LABELS:
        return LABELS[column]
    m = re.fullmatch(r"precision_at_(\d+)", str(column))
    if m:
        return f"precision@{m.group(1)}"
    return str(column).replace("_", " ")


def apply() -> None:
    """The book's matplotlib settings (font sizes, resolution, grid): called by every figure function."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "figure.facecolor": "white", "savefig.facecolor": "white",
        "font.size": FONT, "axes.titlesize": FONT + 1, "axes.labelsize": FONT, "xtick.labelsize": FONT - 1,
        "ytick.labelsize": FONT - 1, "legend.fontsize": FONT - 1, "legend.title_fontsize": FONT - 1,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "lines.linewidth": 1.6, "lines.markersize": 4.5, "legend.frameon": False,
    })


def subplots(n: int, ncols: int | None = None, height: float = PANEL_HEIGHT, width: float | None = None,
             **kw):
    """``n`` panels, at most two per row, in a figure of the book's width (one panel: 5 inches wide).
    Unused panels of the last row are switched off. Returns (figure, flat list of the n axes, spare axes)."""
    import matplotlib.pyplot as plt

    apply()
    ncols = max(1, min(ncols or MAX_COLUMNS, MAX_COLUMNS, n))
    nrows = math.ceil(n / ncols)
    width = width or (WIDTH if ncols > 1 else 5.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False, **kw)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n], axes[n:]


def integer_ticks(ax, axis: str = "x") -> None:
    """Ticks at whole numbers only (epochs, code lengths, counts)."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True, nbins=6))


def label_axes(ax, x: str, y: str) -> None:
    """Human labels for the columns ``x`` and ``y``; integer ticks on an epoch or step axis."""
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    if x in ("epoch", "iteration", "bits", "K", "trial"):
        integer_ticks(ax, "x")
    if y in ("active_units_001", "active_units_005", "constant_bits"):
        integer_ticks(ax, "y")


def legend_below(fig, handles, labels, title: str | None = None, ncol: int = 3) -> None:
    """One legend for the whole figure, centred below its panels."""
    rows = math.ceil(len(labels) / ncol)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, min(0.4, (0.12 + 0.2 * rows) / height), 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), ncol), title=title)


def nothing_to_show(text: str) -> None:
    """A sentence in place of a figure whose panels would show nothing (shown as the cell's output)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def glue_figure(name: str, fig, caption: str, alt: str, show: bool = True, page: str = "") -> None:
    """Show ``fig`` as a numbered figure with ``caption`` and the alt text ``alt``, and close it.

    The figure is glued (myst-nb ``glue``, so the image is in the executed notebook) and a MyST
    ``{glue:figure}`` directive carrying the caption and alt text is the cell's visible output (its
    label is ``fig-NAME``, or ``fig-PAGE-NAME`` for a notebook that several pages run, since a label is
    the book's and not the page's, for ``{numref}``); a Markdown cell can paste the same figure again with
    ``{glue:figure} NAME``. The figure's ``notes`` (panels left out) end the caption. When there is
    nothing to draw (``fig`` None, or a figure function's ``NothingToShow``), its sentence is shown
    instead (for None: ``caption``)."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        nothing_to_show(getattr(fig, "text", None) or caption)
        return
    if not alt or not alt.strip():
        raise ValueError(f"figure {name}: give its alt text (what the figure shows, for a reader who cannot see it)")
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)
    notes = " ".join(getattr(fig, "notes", None) or [])
    if show:
        display(Markdown(figure_directive(name, f"{caption.strip()} {notes}".strip(), alt, page)))


def figure_directive(name: str, caption: str, alt: str, page: str = "") -> str:
    """The MyST directive that pastes the glued figure ``name`` with its caption and alt text."""
    alt = " ".join(alt.split())
    label = f"fig-{page}-{name}" if page else f"fig-{name}"
    return f"```{{glue:figure}} {name}\n:alt: {alt}\n:name: {label}\n\n{caption.strip()}\n```\n"


def sentence_list(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""
