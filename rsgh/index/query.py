"""Using an index: the nearest indexed images of query images, mAP etc. of labelled queries, and a
picture grid of results."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.archives import decode_image
from .encoder import SearchError, encode_collection, encode_files, open_images, read_images, say, shown
from .store import HashIndex, _write_atomic, load_index

TIE_NOTE = "ties in distance are listed in insertion order (the order images were added to the index)"


def search(index_dir: str | os.PathLike, queries: Sequence[str | os.PathLike], top: int = 10,
           quiet: bool = False) -> list[dict]:
    """The ``top`` nearest indexed images of each query image: one dict per decodable query."""
    _check_top(top)
    return search_index(load_index(index_dir), queries, top, quiet)


def search_index(index: HashIndex, queries: Sequence[str | os.PathLike], top: int = 10,
                 quiet: bool = False) -> list[dict]:
    _check_top(top)
    if len(index) == 0:
        raise SearchError(f"index {index.path} is empty")
    codes, kept = encode_files(index.encoder(), queries, quiet)
    dist, ids = index.search(codes, top)
    return [{"query": q, "results": [{"rank": r + 1, "distance": int(d), "id": int(i), "name": index.names[i],
                                      "label": index.labels[i]} for r, (d, i) in enumerate(zip(drow, irow))]}
            for q, drow, irow in zip(kept, dist, ids)]


def _check_top(top) -> None:
    if not isinstance(top, (int, np.integer)) or isinstance(top, bool) or top < 1:
        raise SearchError(f"--top must be a positive integer, got {top!r}")


def evaluate(index_dir: str | os.PathLike, queries: str | os.PathLike, ks: Sequence[int] = (100, 500, 1000),
             radius: int = 2, progress: bool = True, quiet: bool = False) -> dict:
    """mAP (exact under random order within Hamming ties), precision@k and precision within
    ``radius`` of a labelled query collection against the labelled index."""
    import warnings

    from ..eval.metrics import retrieval_summary

    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise SearchError(f"--k must be positive integers, got {' '.join(map(str, ks))}")
    if not isinstance(radius, (int, np.integer)) or radius < 0:
        raise SearchError(f"--radius must be a non-negative integer, got {radius}")
    index = load_index(index_dir)
    unlabelled = sum(lab is None for lab in index.labels)
    if len(index) == 0 or unlabelled:
        raise SearchError(f"index {index_dir} has {unlabelled:,} unlabelled image(s) of {len(index):,}: evaluate needs "
                          "every indexed image in a class folder (<class>/<image>)")
    if len(set(index.labels)) < 2:
        raise SearchError(f"index {index_dir} holds one class only ({index.labels[0]}): evaluation needs at least two "
                          "(with one, every image is relevant and mAP is 1.0 whatever the codes)")
    encoder = index.encoder()
    with open_images(queries) as collection:
        missing = [n for n in collection.names if collection.labels[n] is None]
        if missing:
            raise SearchError(f"{queries}: {len(missing)} query image(s) have no label ({shown(missing, 3)}); put "
                              "each query in a folder named after its class")
        codes, names, hashes, prep = encode_collection(encoder, collection, collection.names, progress)
    prep.report(quiet)
    if not names:
        raise SearchError(f"none of the {len(collection.names)} query images in {queries} could be decoded")
    q_labels = [collection.labels[n] for n in names]
    classes = sorted(set(index.labels) | set(q_labels))
    number = {c: i for i, c in enumerate(classes)}
    shared = set(q_labels) & set(index.labels)
    if not shared:
        raise SearchError(f"the query classes ({shown(sorted(set(q_labels)), 5)}) share no class with the index "
                          f"({shown(sorted(set(index.labels)), 5)})")
    alone = sum(lab not in shared for lab in q_labels)
    if alone:
        say(f"note: {alone} query image(s) are in classes absent from the index; they count with AP 0", quiet)
    indexed = set(index.hashes)
    dup = sum(h in indexed for h in hashes)
    if dup:
        say(f"note: {dup} query image(s) are byte-identical to indexed images (found at distance 0)", quiet)
    ndb = len(index)
    dropped = [k for k in ks if k > ndb]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note above says it already
        s = retrieval_summary(codes, _unpack(index.packed, index.bits), np.array([number[c] for c in q_labels]),
                              np.array([number[c] for c in index.labels]), ks=[k for k in ks if k <= ndb],
                              radius=radius)
    return {"map": s["map"], "precision_at_k": s["precision_at_k"], "radius": radius,
            "precision_within_radius": s["precision_within_radius"], "n_queries": len(names),
            "n_database": ndb, "bits": index.bits, "ks_dropped": dropped, "query_classes": len(set(q_labels)),
            "index_classes": len(set(index.labels)), "skipped": len(prep.bad)}


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1, bitorder="little")[:, :bits]


def result_grid(index_dir: str | os.PathLike, query_paths: Sequence[str | os.PathLike], top: int,
                out_png: str | os.PathLike) -> Path:
    """Save a PNG grid: one row per query, the query then its ``top`` results (Hamming distance and
    label above each; when the query's folder names a class of the index, a green frame around results
    of that class and a red one around the others)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    index = load_index(index_dir)
    results = search_index(index, query_paths, top, quiet=True)
    wanted: dict[int, set] = {}
    for r in results:
        for hit in r["results"]:
            wanted.setdefault(index.sources[hit["id"]], set()).add(hit["name"])
    pictures = {}
    for shard, names in wanted.items():
        source = Path(index.manifest["shards"][shard]["source"])
        with contextlib.suppress(Exception), open_images(source) as coll:  # a moved source: no thumbnails
            for name, data in read_images(coll, sorted(names)):
                pictures[(shard, name)] = decode_image(data, name)
    classes = set(index.labels) - {None}
    cols = 1 + max(len(r["results"]) for r in results)
    fig = Figure(figsize=(1.3 * cols, 1.5 * len(results)))
    axes = fig.subplots(len(results), cols, squeeze=False)
    for row, r in zip(axes, results):
        for ax in row:
            ax.axis("off")
        q_label = Path(r["query"]).parent.name
        with open(r["query"], "rb") as fh:
            row[0].imshow(decode_image(fh.read(), r["query"]))
        row[0].set_title(f"query\n{q_label}", fontsize=7)
        for ax, hit in zip(row[1:], r["results"]):
            image = pictures.get((index.sources[hit["id"]], hit["name"]))
            if image is None:
                ax.text(0.5, 0.5, hit["name"], ha="center", va="center", fontsize=5, wrap=True)
            else:
                ax.imshow(image)
            ax.set_title(f"d={hit['distance']}\n{hit['label'] or '-'}", fontsize=7)
            if hit["label"] is not None and q_label in classes:  # the query's folder names a class
                ax.axis("on")
                ax.set_xticks([]), ax.set_yticks([])
                colour = "tab:green" if hit["label"] == q_label else "tab:red"
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2)
    fig.suptitle(f"{Path(index_dir).name}: top {top} of {len(index):,} by Hamming distance "
                 f"({index.bits} bits; ties in insertion order)", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_png, lambda p: fig.savefig(p, dpi=130, format="png"))
    return out_png
