"""Speed of rsgh.metrics.mean_average_precision against a straightforward argsort mAP.

1,000 queries x 59,000 database codes x 64 random bits, 10 classes (the CIFAR-10 protocol's
sizes). The argsort reference computes each block's distance matrix (same Hamming kernel),
ranks it with a stable argsort and scores the ordinary AP: its value depends on the database
order within Hamming ties, ours is the exact expectation over tie orders, so both values are
printed. Run: ``python benchmarks/map_speed.py [--repeats 3]``; the last line is
``map_vs_argsort=<speedup>``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rsgh.metrics import hamming_distances, mean_average_precision


def argsort_map(q, db, ql, dbl, block=256):
    aps = []
    for i in range(0, len(q), block):
        d = hamming_distances(q[i:i + block], db)
        order = np.argsort(d, axis=1, kind="stable")
        rel = dbl[order] == ql[i:i + block, None]
        hits = np.cumsum(rel, axis=1)
        prec_at_hits = np.where(rel, hits / np.arange(1, db.shape[0] + 1), 0.0)
        n_rel = rel.sum(1)
        aps.append(np.where(n_rel > 0, prec_at_hits.sum(1) / np.maximum(n_rel, 1), 0.0))
    return float(np.concatenate(aps).mean())


def best_time(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return min(times), value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--database", type=int, default=59000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    q = rng.integers(0, 2, (a.queries, a.bits), dtype=np.uint8)
    db = rng.integers(0, 2, (a.database, a.bits), dtype=np.uint8)
    ql = rng.integers(0, a.classes, a.queries)
    dbl = rng.integers(0, a.classes, a.database)
    print(f"{a.queries} queries x {a.database} database x {a.bits} bits, {a.classes} classes")
    t_ours, m_ours = best_time(lambda: mean_average_precision(q, db, ql, dbl), a.repeats)
    t_ref, m_ref = best_time(lambda: argsort_map(q, db, ql, dbl), max(1, a.repeats - 2))
    print(f"rsgh.metrics (exact expected AP over tie orders): {t_ours * 1e3:8.1f} ms  mAP={m_ours:.6f}")
    print(f"stable argsort (database order within ties):     {t_ref * 1e3:8.1f} ms  mAP={m_ref:.6f}")
    print(f"map_vs_argsort={t_ref / t_ours:.1f}")


if __name__ == "__main__":
    main()
