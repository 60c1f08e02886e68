"""Command line: ``python -m rsgh train --config NAME [NAME ...] [--set key=value ...] --out DIR [DIR ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import PRESETS, config_help, make_config, parse_overrides


def cmd_train(args) -> int:
    from .runner import run_group

    overrides = parse_overrides(args.set or [])
    names = args.config or [None]
    if len(names) != len(args.out):
        raise ValueError(f"{len(names)} config(s) but {len(args.out)} --out folder(s): give one --out per config")
    configs = [make_config(name, overrides) for name in names]
    summaries = run_group(configs, args.out, args.data_root, resume=args.resume, progress=not args.quiet)
    for out, summary in zip(args.out, summaries):
        final = summary["final"]
        line = {"out": str(out), "recon_mse": final["recon_mse"], "recon_half_sse": final["recon_half_sse"],
                "active_units_001": final["active_units_001"], "active_units_005": final["active_units_005"],
                "wall_time_s": round(summary["wall_time_s"], 1)}
        if "retrieval" in summary:
            line["map"] = summary["retrieval"]["map"]
        print(json.dumps(line))
    return 0


def cmd_summarize(args) -> int:
    """Final numbers of finished runs, and their curves every ``--every`` evaluations."""
    import pandas as pd
    from pathlib import Path

    rows, curves = [], {}
    for run in map(Path, args.runs):
        if not (run / "summary.json").exists():
            raise FileNotFoundError(f"{run}/summary.json not found: is {run} a finished run directory?")
        s = json.loads((run / "summary.json").read_text())
        f = s["final"]
        rows.append({"run": run.name, "epochs": s["epochs"], "recon_mse": f["recon_mse"],
                     "recon_half_sse": f["recon_half_sse"], "train_half_sse": s["train_recon_half_sse"],
                     "active_001": f["active_units_001"], "active_005": f["active_units_005"],
                     "mean_kl": f["mean_kl"], "bit_corr": f["bit_corr_mean"],
                     "wall_s": s["wall_time_s"], "s_per_epoch": s["seconds_per_epoch"]})
        m = pd.read_csv(run / "metrics.csv")
        curves[run.name] = m.iloc[::args.every].set_index("epoch")[["recon_mse", "active_units_001",
                                                                      "active_units_005"]]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if args.every:
            print()
            print(pd.concat(curves, axis=1).to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import run_plan

    records = run_plan(args.plan, args.profile, args.out, only=args.only or (), redo=args.redo)
    total = sum(r["seconds"] for r in records)
    print(f"{len(records)} notebook(s), {total:.0f} s: " + ", ".join(f"{r['notebook']} {r['status']}" for r in records))
    if args.build:
        import subprocess

        book = Path(args.out)
        subprocess.run(["jupyter-book", "build", "-W", "-n", "--keep-going", str(book)], check=True)
        print(f"book: {(book / '_build' / 'html' / 'index.html').resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rsgh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    presets = "\n".join(f"  {name}: {', '.join(f'{k}={v}' for k, v in values.items())}"
                        for name, values in PRESETS.items())
    t = sub.add_parser(
        "train", help="train one SGH or R-SGH model into a run directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"configs (presets over the defaults):\n{presets}\n\nparameters for --set:\n{config_help()}")
    t.add_argument("--config", nargs="+", choices=sorted(PRESETS),
                   help="a preset (the defaults below when omitted); several presets are trained together as "
                        "one group in lock-step, on one stream of batches (they must share the architecture)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    t.add_argument("--out", nargs="+", required=True,
                   help="run directory, one per config (must be new or empty, unless --resume)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--data-root", help="folder holding MNIST/raw etc. (default: $RSGH_DATA, else data/cache)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("summarize", help="print final numbers and curves of finished runs")
    s.add_argument("runs", nargs="+", help="run directories")
    s.add_argument("--every", type=int, default=5, help="print the curves every N evaluations (0: none)")
    s.set_defaults(func=cmd_summarize)
    r = sub.add_parser("reproduce", help="execute the book's notebooks with papermill (notebooks/plan.yml)")
    r.add_argument("--profile", default="paper", help="parameter set of the plan: paper (default) or smoke")
    r.add_argument("--plan", default=str(Path(__file__).resolve().parent.parent / "notebooks" / "plan.yml"))
    r.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "book"),
                   help="folder of the executed notebooks (the book)")
    r.add_argument("--only", nargs="+", help="run only these notebooks of the plan")
    r.add_argument("--redo", action="store_true", help="execute again even when already executed")
    r.add_argument("--build", action="store_true", help="then build the book strictly (jupyter-book -W -n)")
    r.set_defaults(func=cmd_reproduce)
    from .search import add_subcommands

    add_subcommands(sub)  # encode, search, evaluate
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
