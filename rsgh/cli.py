"""The command line: every subcommand, one ``main``, one error handler.

    python -m rsgh train --config NAME [NAME ...] [--set key=value ...] --out DIR [DIR ...]
    python -m rsgh summarize RUN [RUN ...]
    python -m rsgh reproduce [--profile quick] [--out DIR] [--scheduler tcp://HOST:PORT]
    python -m rsgh study --arm rsgh --dataset cifar10 --bits 64 --trials 100 --out DIR
    python -m rsgh encode --model RUN --images PATH --out INDEX
    python -m rsgh search --index INDEX QUERY_IMAGE ... [--top 10]
    python -m rsgh evaluate --index INDEX --queries PATH

A mistake of the user's (a bad value, a missing or damaged file, a full disk, a read-only folder)
is one line on stderr naming the file or value and the fix, with exit status 2; anything else is a
bug in rsgh: one line too (exit status 3), and its traceback with ``RSGH_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from .config import PRESETS, Runtime, config_help, make_config, parse_overrides
from .errors import UserError
from .files import printable

ROOT = Path(__file__).resolve().parent.parent


def cmd_train(args) -> int:
    from .train.rundir import RunDir, RunExistsError
    from .train.task import run_group

    overrides, settings = parse_overrides(args.set or [])
    names = args.config or [None]
    if len(names) != len(args.out):
        raise ValueError(f"{len(names)} config(s) but {len(args.out)} --out folder(s): give one --out per config")
    configs = [make_config(name, overrides) for name in names]  # every value checked before any folder exists
    runtime = Runtime(**dict(settings, progress=not args.quiet)).validate()
    if len(set(map(os.path.abspath, args.out))) != len(args.out):
        raise RunExistsError("the same --out folder is given twice: give one folder per config")
    for cfg, out in zip(configs, args.out):
        RunDir(out).check(cfg, args.resume)
    summaries = run_group(configs, args.out, args.data_root, runtime, resume=args.resume)
    for out, summary in zip(args.out, summaries):
        final = summary["final"]
        line = {"out": str(out), "recon_mse": final["recon_mse"], "recon_half_sse": final["recon_half_sse"],
                "active_units_001": final["active_units_001"], "active_units_005": final["active_units_005"],
                "wall_time_s": round(summary["wall_time_s"], 1)}
        retrieval = RunDir(out).read_retrieval()
        if retrieval is not None:
            line["map"] = retrieval["map"]
        print(json.dumps(line))
    return 0


def cmd_summarize(args) -> int:
    """Final numbers of finished runs, and their curves every ``--every`` evaluations."""
    import pandas as pd

    from .train.rundir import RunDir

    if args.every < 0:
        raise ValueError(f"--every must be 0 (no curves) or a positive number of evaluations, got {args.every}")
    rows, curves = [], {}
    for run in map(RunDir, args.runs):
        s = run.read_summary()
        f = s["final"]
        rows.append({"run": run.path.name, "epochs": s["epochs"], "recon_mse": f["recon_mse"],
                     "recon_half_sse": f["recon_half_sse"], "train_half_sse": s["train_recon_half_sse"],
                     "active_001": f["active_units_001"], "active_005": f["active_units_005"],
                     "mean_kl": f["mean_kl"], "bit_corr": f["bit_corr_mean"],
                     "wall_s": s["wall_time_s"], "s_per_epoch": s["seconds_per_epoch"]})
        if args.every:
            curves[run.path.name] = run.read_metrics().iloc[::args.every].set_index("epoch")[
                ["recon_mse", "active_units_001", "active_units_005"]]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if args.every:
            print()
            print(pd.concat(curves, axis=1).to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_reproduce(args) -> int:
    from .book.reproduce import reproduce

    return reproduce(args.profile, out=args.out, plan=args.plan, only=args.only or (), scheduler=args.scheduler,
                     build=not args.no_build, published=args.published, runs_dir=args.runs_dir,
                     publish=args.publish)


def cmd_study(args) -> int:
    from .book.study import run_study

    if args.trials < 1 or (args.max_epochs is not None and args.max_epochs < 1):
        raise ValueError(f"--trials and --max-epochs must be positive, got {args.trials} and {args.max_epochs}")
    if (args.patience is not None and args.patience < 1) or (args.warmup is not None and args.warmup < 0):
        raise ValueError(f"--patience must be positive and --warmup not negative, got {args.patience} and {args.warmup}")
    best = run_study(args.arm, args.dataset, args.bits, args.trials, args.max_epochs, args.out, args.scratch,
                     args.data_root, args.scheduler, progress=not args.quiet, patience=args.patience,
                     warmup=args.warmup, known_point=args.known_point, keep_trials=args.keep_trials)
    print(json.dumps(best))
    return 0


def cmd_encode(args) -> int:
    from .index.store import encode

    result = encode(args.model, args.images, args.out, progress=not args.quiet, quiet=args.quiet)
    manifest = result["manifest"]
    n, k = manifest["count"], manifest["bits"]
    print(f"index {printable(args.out)}: {n:,} images ({manifest['labelled']:,} labelled), {k} bits, "
          f"{len(manifest['shards'])} shard(s); this encode added {result['added']:,} in {result['seconds']:.1f} s")
    print(f"memory for the codes: {n:,} x {k} bits / 8 = {manifest['memory_bytes']:,} bytes "
          f"({_human_bytes(manifest['memory_bytes'])})")
    return 0


def cmd_search(args) -> int:
    from .index.query import TIE_NOTE, search

    results = search(args.index, args.queries, args.top, quiet=args.quiet)
    count = json.loads((Path(args.index) / "manifest.json").read_text())
    print(f"# {count['count']:,} indexed images, {count['bits']} bits; {TIE_NOTE}")
    for r in results:  # names and labels come from the index (perhaps a received one): printed safely
        print(f"query {printable(r['query'])}: top {len(r['results'])}")
        width = max(len(printable(h["name"])) for h in r["results"])
        print(f"  {'rank':>4}  {'distance':>8}  {'name':<{width}}  label")
        for h in r["results"]:
            print(f"  {h['rank']:>4}  {h['distance']:>8}  {printable(h['name']):<{width}}  {printable(h['label'] or '-')}")
    return 0


def cmd_evaluate(args) -> int:
    from .index.query import evaluate

    s = evaluate(args.index, args.queries, ks=args.k, radius=args.radius, progress=not args.quiet, quiet=args.quiet)
    print(f"{s['n_queries']:,} queries ({s['query_classes']} classes) against {s['n_database']:,} indexed images "
          f"({s['index_classes']} classes), {s['bits']} bits")
    print(f"mAP (exact expectation over the order within Hamming ties): {s['map']:.4f}")
    for k, v in s["precision_at_k"].items():
        print(f"precision@{k}: {v:.4f}")
    if s["ks_dropped"]:
        print(f"(precision@k not computed for k > {s['n_database']:,}: {', '.join(map(str, s['ks_dropped']))})")
    print(f"precision within Hamming radius {s['radius']}: {s['precision_within_radius']:.4f}")
    return 0


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class _Once(argparse._StoreAction):
    """An option that takes one value: given twice, it is refused (argparse would keep the last)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, f"_given_{self.dest}", False):
            raise argparse.ArgumentError(self, "given twice; give it once")
        setattr(namespace, f"_given_{self.dest}", True)
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake said in one line and a pointer to --help (not a usage block), and
    every single-valued option refused when given twice."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)
        self.register("action", "store", _Once)

    def error(self, message):
        self.exit(2, f"error: {printable(' '.join(message.split()))}; see '{self.prog} --help'\n")


def path_arg(text: str) -> str:
    """A path from the command line, ``~`` expanded (as a ``folder=`` or ``--images`` path is)."""
    return os.path.expanduser(text)


def _study_parser(sub) -> None:
    """The ``study`` sub-command's arguments."""
    st = sub.add_parser("study", help="a hyperparameter study (Optuna) of one arm, tuned on validation queries")
    st.add_argument("--arm", required=True, choices=["sgh", "sgh-arch", "rsgh"],
                    help="sgh: SGH in any architecture; sgh-arch: SGH in R-SGH's architecture; rsgh: R-SGH")
    st.add_argument("--dataset", required=True, choices=["cifar10", "mnist", "fashion-mnist"],
                    help="cifar10: GIST-512 of CIFAR-10; mnist, fashion-mnist: pixels")
    st.add_argument("--bits", type=int, default=64, help="code length K (default 64)")
    st.add_argument("--trials", type=int, required=True, help="finished trials wanted (complete or pruned)")
    st.add_argument("--max-epochs", type=int,
                    help="a new study's trials train this many epochs at most (early stopping); default: the "
                         "dataset's protocol, 200 on MNIST and Fashion-MNIST, else 100")
    st.add_argument("--out", required=True, help="study folder: journal.log (the Optuna journal) and best.json")
    st.add_argument("--scratch", default="studies",
                    help="where the trials' run folders (models, checkpoints) go (default: studies/)")
    st.add_argument("--data-root", type=path_arg,
                    help="folder holding the datasets (default: $RSGH_DATA, else data/cache)")
    st.add_argument("--scheduler", help="a running Dask scheduler (default $RSGH_SCHEDULER, else a local cluster)")
    st.add_argument("--patience", type=int,
                    help="a new study's trials stop after this many epochs without a better validation mAP "
                         "(default: the dataset's protocol, 20 on MNIST and Fashion-MNIST, else 5; a study keeps the protocol it was "
                         "created with)")
    st.add_argument("--warmup", type=int,
                    help="a new study prunes no trial before this epoch (default: the dataset's protocol, 20 on "
                         "MNIST and Fashion-MNIST, else 0: from the first epoch on)")
    st.add_argument("--known-point", action="store_true",
                    default=None, help="a new study asks its arm's method at the patents' settings first (pruned like "
                                       "any trial; default: the dataset's protocol, on MNIST and Fashion-MNIST)")
    st.add_argument("--keep-trials", type=path_arg,
                    help="a folder that receives each trial's small files (configuration, metrics, summary; no "
                         "weights, no per-unit statistics) as it ends, e.g. results/trials/<study name> beside the store's study")
    st.add_argument("--quiet", action="store_true", help="no line per trial")
    st.set_defaults(func=cmd_study)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m rsgh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    presets = "\n".join(f"  {name}: {', '.join(f'{k}={v}' for k, v in values.items())}"
                        for name, values in PRESETS.items())
    t = sub.add_parser(
        "train", help="train one SGH or R-SGH model into a run directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"configs (presets over the defaults):\n{presets}\n\nparameters for --set (the last "
               f"{len(fields(Runtime))} are runtime settings, never part of a run's identity):\n{config_help()}")
    t.add_argument("--config", nargs="+", action="extend", choices=sorted(PRESETS),
                   help="a preset (the defaults below when omitted); several presets (--config A B, or --config A "
                        "--config B) are trained together as one group in lock-step, on one stream of batches (they "
                        "must share the architecture), one --out each")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    t.add_argument("--out", nargs="+", action="extend", required=True, type=path_arg,
                   help="run directory, one per config, in the order of the configs (must be new or empty, "
                        "unless --resume)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--data-root", type=path_arg,
                   help="folder holding MNIST/raw etc. (default: $RSGH_DATA, else data/cache)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("summarize", help="print final numbers and curves of finished runs")
    s.add_argument("runs", nargs="+", type=path_arg, help="run directories")
    s.add_argument("--every", type=int, default=5, help="print the curves every N evaluations (0: none)")
    s.set_defaults(func=cmd_summarize)
    r = sub.add_parser("reproduce", help="re-execute the book's notebooks into a separate folder and compare every "
                                         "published number (notebooks/plan.yml)")
    r.add_argument("--profile", default="quick", choices=["render", "quick", "paper", "full", "smoke"],
                   help="render: every page from the results store, nothing trained (minutes); quick (default): one "
                        "seed per page retrained with the stored best configurations (about an hour on 2 cores); "
                        "paper: everything retrained and the studies rerun (a cluster or a GPU); full: paper with "
                        "twice the studies' budgets; smoke: minutes, checks the machinery only")
    r.add_argument("--out", type=path_arg, help="folder of the re-executed book (default: reproduction/<profile>): "
                                                 "new, empty, or a reproduction made by rsgh")
    r.add_argument("--plan", type=path_arg, default=str(ROOT / "notebooks" / "plan.yml"))
    r.add_argument("--only", nargs="+", action="extend", help="run only these pages of the plan")
    r.add_argument("--scheduler", help="a running Dask scheduler (tcp://HOST:PORT; default $RSGH_SCHEDULER, else "
                                       "a local cluster of one worker per core)")
    r.add_argument("--published", type=path_arg, default=str(ROOT / "book"), help="the published book to compare with")
    r.add_argument("--no-build", action="store_true", help="do not build the reproduction's book")
    r.add_argument("--runs-dir", type=path_arg,
                   help="where trained runs are kept and reused (default: the plan's, e.g. runs/)")
    r.add_argument("--publish", action="store_true",
                   help="(the book's maintainers) make what the results store lacks, writing it there, then render "
                        "every page from the store into the published book (--published)")
    r.set_defaults(func=cmd_reproduce)
    _study_parser(sub)
    _add_index_parsers(sub)
    return parser


def _add_index_parsers(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    e = sub.add_parser(
        "encode", help="hash a folder or archive of images into a searchable index (or add to one)",
        formatter_class=fmt, description=(
            "Compute each image's code with a trained model, exactly as in training (the run's feature kind,\n"
            "image size, grey/RGB handling and feature scaling; other sizes and modes are converted and\n"
            "counted), and store the codes in INDEX (a folder: faiss IndexBinaryFlat shards, name/label lists,\n"
            "manifest.json, a copy of the model). Encoding onto an existing INDEX adds the images whose names\n"
            "are not there yet, as a new shard, and refuses a different model or feature pipeline.\n"
            "Undecodable files are reported and skipped. A kill at any moment leaves the previous index intact."),
        epilog="labels: an image's label is the name of the folder holding it (PATH/<class>/<image>)")
    e.add_argument("--model", metavar="RUN_DIR", type=path_arg,
                   help="finished run directory (model.pt, config.json[, feature_scaling.npz]); optional when "
                        "adding to an existing index (its own copy of the model is used)")
    e.add_argument("--images", required=True, metavar="PATH", type=path_arg,
                   help="folder of images (flat or <class>/<image>), a .tar/.tar.gz/.zip of one, or one image")
    e.add_argument("--out", required=True, metavar="INDEX", type=path_arg,
                   help="index folder (new, empty, or an existing index)")
    e.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    e.set_defaults(func=cmd_encode)

    s = sub.add_parser(
        "search", help="nearest indexed images of query images, by Hamming distance",
        formatter_class=fmt, description=(
            "Encode each query image with the index's model and print its TOP nearest indexed images:\n"
            "rank, Hamming distance, file name and label. The search is exact (faiss IndexBinaryFlat);\n"
            "images at equal distance are listed in insertion order."))
    s.add_argument("--index", required=True, metavar="INDEX", type=path_arg, help="index folder made by encode")
    s.add_argument("queries", nargs="+", metavar="QUERY_IMAGE", type=path_arg, help="image file(s)")
    s.add_argument("--top", type=int, default=10, metavar="K", help="results per query (default 10)")
    s.add_argument("--quiet", action="store_true", help="no notes about converted images")
    s.set_defaults(func=cmd_search)

    v = sub.add_parser(
        "evaluate", help="mAP, precision@k and radius-2 precision of labelled queries against an index",
        formatter_class=fmt, description=(
            "Encode a labelled query collection (PATH/<class>/<image>, folder or archive) and rank the whole\n"
            "labelled index for each query: mAP (exact expectation over the order within Hamming ties,\n"
            "rsgh.eval.metrics), precision@k and precision within Hamming radius R. A database image is\n"
            "relevant to a query when their class folder names are equal."))
    v.add_argument("--index", required=True, metavar="INDEX", type=path_arg,
                   help="index folder made by encode (labelled)")
    v.add_argument("--queries", required=True, metavar="PATH", type=path_arg,
                   help="labelled query images: <class>/<image>")
    v.add_argument("--k", type=int, nargs="+", default=[100, 500, 1000], help="precision@k (default 100 500 1000)")
    v.add_argument("--radius", type=int, default=2, help="Hamming radius of the radius precision (default 2)")
    v.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    v.set_defaults(func=cmd_evaluate)


# The user's mistakes, said in one line. Everything else is a bug. A MemoryError is the size of the input
# (a dataset larger than this machine's memory, or a damaged file declaring a huge size), not a bug.
USER_ERRORS = (ValueError, FileNotFoundError, OSError, UserError, MemoryError)


def describe(err: BaseException) -> str:
    """One line for a user-facing error: what went wrong, on which file, and the fix."""
    if isinstance(err, MemoryError):
        return (f"out of memory ({' '.join(str(err).split()) or 'an allocation failed'}): the input needs more memory "
                "than this machine has; use a smaller dataset or a machine with more memory")
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        if err.errno == errno.ENOSPC:
            return f"{where}the disk is full; free some space and rerun the same command (train: with --resume)"
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            kind = "on a read-only filesystem" if err.errno == errno.EROFS else "not writable (permission denied)"
            return f"{where}the folder is {kind}; choose a writable --out (or RSGH_CACHE for the caches)"
        if err.errno == errno.ENOTDIR:
            return f"{where}a part of this path is a file, not a folder; choose another path"
        if err.errno == errno.EEXIST:
            return f"{where}a file of that name is in the way; choose another path or move that file"
        if err.errno == errno.ELOOP:
            return f"{where}a symbolic link is in the way (rsgh does not follow links there); remove it"
        return f"{where}{err.strerror or err}"
    return " ".join(str(err).split()) or type(err).__name__


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line (what was skipped or repaired), without the source line under it."""
    return f"warning: {printable(' '.join(str(message).split()))}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = os.environ.get("RSGH_DEBUG", "") not in ("", "0")
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _warning_line
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # the Dask client's event loop, interrupted in the middle of a call, logs its own traceback: not news
        for name in ("tornado.application", "tornado.general", "distributed", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        print("interrupted: rerun the same command (train: with --resume) to continue", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"error: {printable(describe(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug in rsgh
        if debug:
            raise
        what = printable(" ".join(str(err).split())[:300])
        print(f"internal error ({type(err).__name__}: {what}); please report it, with the traceback that RSGH_DEBUG=1 "
              "shows", file=sys.stderr)
        return 3
    finally:
        warnings.formatwarning = formatwarning
        _close_local_cluster()


def _close_local_cluster() -> None:
    """Close the local Dask cluster a command started, before the interpreter's shutdown (closed from
    atexit, after an interrupt, its scheduler logged errors after the command's one line)."""
    schedule = sys.modules.get("rsgh.book.schedule")
    if schedule is not None:
        with contextlib.suppress(Exception):
            schedule._close()


if __name__ == "__main__":
    sys.exit(main())
