"""Issue 4's measurement: the whole paper-scale reproduction with one seed, trained the way
`make reproduce` trains (compiled step, each group dealt out to --workers processes), timed by
stage: embodiment 2 at 128, 64 and 32 bits (SGH and R-SGH, 200 epochs), its baselines at the
three code lengths, and embodiment 1 (SGH and R-SGH, 50 epochs).

    python benchmarks/paper_scale_run.py [--runs /tmp/paper-scale] [--workers 2] [--seed 0]

Needs the data root (RSGH_DATA) and a fresh --runs folder: finished runs there are reused, so
a second call only measures what is left.
"""

import argparse
import time

from rsgh import experiments as ex


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="/tmp/paper-scale")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.time()

    def timed(label, work):
        t = time.time()
        work()
        print(f"{label}: {time.time() - t:.0f} s", flush=True)

    e2 = ex.retrieval_configs(("e2-sgh", "e2-rsgh"), [128, 64, 32], [args.seed], 200, compile_step=True,
                              cifar_source="auto")
    for bits in (128, 64, 32):
        timed(f"E2 {bits} bits", lambda: ex.train_variants("e2", [v for v in e2 if v[1].bits == bits], args.runs,
                                                           None, progress=False, workers=args.workers))
    timed("baselines", lambda: ex.baselines_table(e2[0][1], [32, 64, 128], [args.seed]))
    timed("E1", lambda: ex.train_variants("e1", ex.e1_configs([args.seed], 50, compile_step=True), args.runs, None,
                                          progress=False, workers=args.workers))
    print(f"paper_scale_run_min={(time.time() - t0) / 60:.1f}")

if __name__ == "__main__":
    main()
