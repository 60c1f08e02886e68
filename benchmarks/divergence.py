"""Why do published numbers move between machines? How far a rounding-sized change carries.

Trains the same embodiment-2 model (CIFAR-10 GIST, M = 4, batch 32, seed 0) several ways that a
different CPU, thread count or compile setting would change only at the level of float32 rounding:

- ``reference``: eager step, one thread;
- ``features+1ulp``: the GIST features multiplied by (1 + 1e-7 * u), u ~ U(-1, 1) (what a CPU with
  other GEMM kernels does to the float32 Gabor stage of GIST);
- ``threads=2``: two threads (other reduction order in the products);
- ``compiled``: the compiled step (other fused kernels);

and the same model with seeds 1 and 2 (the seed spread). For each it records the validation mAP and
the weights at every evaluation, and prints how far each variant's weights and validation mAP are
from the reference, against the distance between seeds.

    python benchmarks/divergence.py [--epochs 10] [--bits 32] [--out /tmp/divergence]

Ends with ``final_map_spread_rounding=<max |difference| of the rounding variants>`` and
``final_map_spread_seeds=<the seeds' standard deviation>``.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rsgh.config import Runtime, make_config
from rsgh.data.task import TaskData
from rsgh.eval.retrieval import map_evaluator
from rsgh.train.loop import train_group
from rsgh.train.task import task_data


def weights(run: Path) -> torch.Tensor:
    state = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    return torch.cat([t.flatten() for _, t in sorted(state.items())])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--out", default="/tmp/divergence")
    args = p.parse_args()
    out = Path(args.out)
    base = dict(bits=args.bits, epochs=args.epochs, eval_epochs=1, validation_per_class=100)
    cfg = make_config("e2-rsgh", base)
    data = task_data(cfg, progress=False)
    noise = np.random.default_rng(1).uniform(-1, 1, data.train_x.shape).astype(np.float32)
    perturbed = TaskData((data.train_x * (1 + 1e-7 * noise)).astype(np.float32), data.eval_x, data.source,
                         data.checksums, data.retrieval)
    quiet = Runtime(progress=False)
    variants = {"reference": (cfg, data, quiet), "features+1ulp": (cfg, perturbed, quiet),
                "threads=2": (cfg, data, Runtime(threads=2, progress=False)),
                "compiled": (cfg, data, Runtime(compile_step=True, progress=False)),
                "seed 1": (make_config("e2-rsgh", dict(base, seed=1)), data, quiet),
                "seed 2": (make_config("e2-rsgh", dict(base, seed=2)), data, quiet)}
    curves = {}
    for name, (c, d, runtime) in variants.items():
        run = out / name.replace(" ", "-").replace("+", "-").replace("=", "")
        train_group([c], d, [run], runtime, resume=True, extra_eval=map_evaluator(d.retrieval))
        curves[name] = pd.read_csv(run / "metrics.csv").set_index("epoch")["val_map"]
        print(f"{name}: final validation mAP {curves[name].iloc[-1]:.4f}", flush=True)
    torch.set_num_threads(1)
    ref = weights(out / "reference")
    rows = []
    for name in variants:
        run = out / name.replace(" ", "-").replace("+", "-").replace("=", "")
        rows.append({"variant": name, "relative weight distance": float((weights(run) - ref).norm() / ref.norm()),
                     "final val mAP": curves[name].iloc[-1],
                     "max |val mAP - reference| over epochs": float((curves[name] - curves["reference"]).abs().max())})
    table = pd.DataFrame(rows).set_index("variant")
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    diff = pd.DataFrame({n: curves[n] - curves["reference"] for n in variants}).round(4)
    print(diff.to_string())
    rounding = table.loc[["features+1ulp", "threads=2", "compiled"], "final val mAP"] - table.loc["reference", "final val mAP"]
    seeds = table.loc[["reference", "seed 1", "seed 2"], "final val mAP"]
    (out / "divergence.json").write_text(json.dumps({"table": table.reset_index().to_dict(orient="records"),
                                                     "curves": {n: c.to_dict() for n, c in curves.items()}}, indent=1))
    print(f"final_map_spread_rounding={rounding.abs().max():.4f}")
    print(f"final_map_spread_seeds={seeds.std(ddof=1):.4f}")
    from record import record

    record("divergence", {"curves": {n: {str(int(e)): round(float(v), 6) for e, v in c.items()} for n, c in curves.items()},
                          "final_map_spread_rounding": float(rounding.abs().max()),
                          "final_map_spread_seeds": float(seeds.std(ddof=1))}, args)


if __name__ == "__main__":
    main()
