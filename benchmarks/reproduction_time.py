"""Wall time of the paper-scale reproduction, by stage, from the runs this machine made.

Every run directory records its steps and wall time (``summary.json``); a stage's paper-scale
time is its groups' measured seconds per step times the steps the patents' settings need
(E1: 50 epochs, E2: 200 epochs; other runs at the epochs they ran). Groups that ran in parallel processes are summed as CPU time and
also shown as wall time on the given number of cores.

    python benchmarks/reproduction_time.py [--runs runs] [--cores 2]
"""

import argparse
import json
from pathlib import Path

import pandas as pd

PAPER_EPOCHS = {"e1": 50, "e2": 200}


def stage(config: dict) -> str:
    """e1 (MNIST reconstruction), e2 (CIFAR-10 GIST retrieval) or the run folder's parent otherwise."""
    if config.get("task") == "reconstruction" and config.get("dataset") == "mnist":
        return "e1"
    if config.get("dataset") == "cifar10" and config.get("features") == "gist":
        return "e2"
    return ""


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", default="runs")
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    rows = []
    for summary in sorted(Path(args.runs).glob("*/*/summary.json")):
        s = json.loads(summary.read_text())
        c = s["config"]
        # a training process is known by its group's runs; older summaries lack them (then: bits and group size)
        process = " ".join(s.get("group_runs", [])) or f"{c['bits']}/{s.get('group_size', 1)}"
        rows.append({"stage": stage(c) or summary.parent.parent.name, "run": summary.parent.name, "process": process,
                     "bits": c["bits"], "group": s.get("group_size", 1), "epochs": s["epochs"],
                     "wall_s": s["wall_time_s"],
                     "compiled": s.get("runtime", {}).get("compile_step", c.get("compile_step", False))})
    if not rows:
        raise SystemExit(f"no finished runs under {args.runs}/<stage>/<run>")
    df = pd.DataFrame(rows)
    # one training process per group: its wall time is shared by the group's models
    groups = df.groupby(["stage", "process", "bits", "group", "compiled"]).agg(
        models=("run", "count"), epochs=("epochs", "max"), wall_s=("wall_s", "max")).reset_index()
    groups["s_per_epoch"] = groups["wall_s"] / groups["epochs"]
    groups["paper_epochs"] = [PAPER_EPOCHS.get(s) or e for s, e in zip(groups["stage"], groups["epochs"])]
    # a legacy row may hold several processes of one size (models / group of them), each taking wall_s
    groups["paper_s"] = groups["s_per_epoch"] * groups["paper_epochs"] * -(-groups["models"] // groups["group"])
    print(groups.drop(columns="process").to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    by_stage = groups.groupby("stage")["paper_s"].sum()
    print("\npaper-scale CPU time by stage (s):")
    print(by_stage.to_string(float_format=lambda v: f"{v:.0f}"))
    total = by_stage.sum()
    print(f"\ntotal CPU time {total / 60:.1f} min; on {args.cores} cores at best "
          f"{total / 60 / args.cores:.1f} min wall")
    print("(measured while other jobs shared the cores: an upper bound for a quiet machine)")


if __name__ == "__main__":
    main()
