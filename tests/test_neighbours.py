"""rsgh.eval.neighbours against brute force written independently here.

The reference for recall_at_n is the literal definition: rank the database by Hamming distance
with ties in uniformly random order, count the true neighbours in the top N, and average, over
every ordering of the database (small cases) or over many random ones (Monte Carlo)."""

import itertools
import math

import numpy as np
import pytest
import torch

import rsgh
from rsgh.eval.neighbours import euclidean_neighbours, recall_at_n

# ----------------------------------------------------------------------------- brute force


def brute_dist(q, db):
    q, db = np.asarray(q, dtype=np.int64), np.asarray(db, dtype=np.int64)
    return (q[:, None, :] != db[None, :, :]).sum(-1)


def hits_of_rankings(ranked, nb_row, ns):
    """(P, len(ns)) number of true neighbours in the first N of each ranking (P, ndb)."""
    is_nb = np.isin(ranked, nb_row)
    cum = np.cumsum(is_nb, axis=1)
    return cum[:, np.asarray(ns) - 1]


def recall_all_orders(dist_row, nb_row, ns):
    """Mean recall over all ndb! orders of the database, each stably sorted by distance."""
    perms = np.array(list(itertools.permutations(range(len(dist_row)))))
    order = np.argsort(dist_row[perms], axis=1, kind="stable")
    ranked = np.take_along_axis(perms, order, 1)
    return hits_of_rankings(ranked, nb_row, ns).mean(0) / len(nb_row)


def random_case(rng, nq, ndb, k_bits, r):
    q = rng.integers(0, 2, (nq, k_bits), dtype=np.uint8)
    db = rng.integers(0, 2, (ndb, k_bits), dtype=np.uint8)
    nb = np.stack([rng.choice(ndb, r, replace=False) for _ in range(nq)])
    return q, db, nb


# ----------------------------------------------------------------------------- recall_at_n


def test_lazy_export():
    assert rsgh.recall_at_n is recall_at_n


@pytest.mark.parametrize("ndb,r,seed", [(6, 1, 0), (6, 3, 1), (7, 2, 2), (7, 4, 3), (8, 3, 4)])
def test_equals_average_over_all_database_orders(ndb, r, seed):
    rng = np.random.default_rng(seed)
    q, db, nb = random_case(rng, 3, ndb, 3, r)
    ns = list(range(1, ndb + 1))
    ours = recall_at_n(q, db, nb, ns)
    d = brute_dist(q, db)
    ref = np.mean([recall_all_orders(d[i], nb[i], ns) for i in range(len(q))], axis=0)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    # ties really matter in these cases: the result is not just a stable-sort count
    stable = np.mean([hits_of_rankings(np.argsort(d[i], kind="stable")[None], nb[i], ns)[0]
                      for i in range(len(q))], axis=0) / r
    assert not np.allclose(ours, stable, atol=1e-9)


def test_monte_carlo_large_ties():
    """300 items, 5 bits (6 distances: large tie groups), 20 queries, R = 10. Tolerance: 5
    standard errors of the Monte Carlo mean (seeded); the SE is ~3e-3 while best and worst tie
    orders differ by far more, so a wrong formula fails clearly."""
    rng = np.random.default_rng(11)
    q, db, nb = random_case(rng, 20, 300, 5, 10)
    ns = [1, 3, 10, 37, 100, 299, 300]
    ours = recall_at_n(q, db, nb, ns)
    d = brute_dist(q, db)
    n_samples = 1500
    per_sample = np.zeros((n_samples, len(ns)))
    for i in range(len(q)):
        keys = d[i][None, :] + 0.5 * rng.random((n_samples, d.shape[1]))
        per_sample += hits_of_rankings(np.argsort(keys, axis=1), nb[i], ns) / 10 / len(q)
    se = per_sample.std(axis=0, ddof=1) / math.sqrt(n_samples)
    assert np.all(np.abs(ours - per_sample.mean(0)) <= 5 * se + 1e-12), (ours, per_sample.mean(0), se)
    best = np.mean([hits_of_rankings(np.lexsort((~np.isin(np.arange(300), nb[i]), d[i]))[None],
                                     nb[i], ns)[0] for i in range(len(q))], axis=0) / 10
    worst = np.mean([hits_of_rankings(np.lexsort((np.isin(np.arange(300), nb[i]), d[i]))[None],
                                      nb[i], ns)[0] for i in range(len(q))], axis=0) / 10
    assert (best - worst)[2] > 0.05 and np.all(worst <= ours + 1e-12) and np.all(ours <= best + 1e-12)


def test_no_ties_equals_plain_top_n_count():
    rng = np.random.default_rng(5)
    k_bits = 30
    base = rng.integers(0, 2, k_bits, dtype=np.uint8)
    flips = np.tril(np.ones((k_bits + 1, k_bits), dtype=np.uint8), -1)  # item j: first j bits flipped
    db = (base ^ flips)[rng.permutation(k_bits + 1)]
    q = np.stack([base, 1 - base])  # distances j and K - j: all distinct for both queries
    d = brute_dist(q, db)
    assert all(len(np.unique(row)) == len(row) for row in d)
    nb = np.stack([rng.choice(k_bits + 1, 4, replace=False) for _ in range(2)])
    ns = [1, 2, 5, 9, 20, 31]
    plain = np.mean([[np.isin(np.argsort(d[i])[:n], nb[i]).sum() / 4 for n in ns] for i in range(2)], axis=0)
    np.testing.assert_allclose(recall_at_n(q, db, nb, ns), plain, rtol=0, atol=1e-15)


def test_full_database_is_one_and_curve_is_monotone():
    rng = np.random.default_rng(3)
    q, db, nb = random_case(rng, 40, 500, 6, 10)
    ns = np.arange(1, 501)
    curve = recall_at_n(q, db, nb, ns, block=7)
    assert curve[-1] == 1.0
    assert np.all(np.diff(curve) >= 0)
    assert curve.dtype == np.float64 and curve.shape == (500,)
    # order of ns, a scalar N, torch / bool inputs and block size change nothing
    np.testing.assert_array_equal(recall_at_n(q, db, nb, ns[::-1]), curve[::-1])
    assert recall_at_n(q, db, nb, 17)[0] == pytest.approx(curve[16], abs=1e-15)
    np.testing.assert_allclose(
        recall_at_n(torch.from_numpy(q).bool(), db.astype(np.float32), torch.from_numpy(nb), [5, 50]),
        curve[[4, 49]], rtol=0, atol=1e-15)


def test_shuffling_database_changes_nothing():
    rng = np.random.default_rng(9)
    q, db, nb = random_case(rng, 30, 1000, 8, 10)
    ns = [1, 10, 100, 999]
    base = recall_at_n(q, db, nb, ns)
    p = rng.permutation(1000)
    inv = np.argsort(p)  # item p[j] moves to position j; old index i is now at inv[i]
    np.testing.assert_allclose(recall_at_n(q, db[p], inv[nb], ns), base, rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- euclidean_neighbours


def brute_neighbours(q, db, r):
    d = ((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :r]


def test_euclidean_neighbours_random_with_planted_duplicates():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((200, 16)) * 10 + 3
    db[150:170] = db[10:30]  # duplicates later in the database: ties to the lower index
    db[180:190] = db[10]
    q = rng.standard_normal((25, 16)) * 10 + 3
    q[:5] = db[[10, 11, 12, 180, 199]]  # queries sitting on (duplicated) database items
    q[5:10] = db[10:15] + 1e-9
    for r, block in [(1, 256), (10, 256), (10, 4), (200, 3)]:
        ours = euclidean_neighbours(q, db, r, block=block)
        assert ours.dtype == np.int64 and ours.shape == (25, r)
        np.testing.assert_array_equal(ours, brute_neighbours(q, db, r))
    assert euclidean_neighbours(q, db, 3)[0].tolist() == [10, 150, 180]


def test_euclidean_neighbours_integer_grid_many_ties():
    rng = np.random.default_rng(1)
    db = rng.integers(0, 3, (300, 3)).astype(np.float64)  # 27 distinct points: many exact ties
    q = rng.integers(0, 3, (40, 3)).astype(np.float32)
    np.testing.assert_array_equal(euclidean_neighbours(q, db, 10, block=6),
                                  brute_neighbours(q.astype(np.float64), db, 10))


def test_euclidean_neighbours_far_from_origin():
    # |x|^2 ~ 1e13 while neighbour distances^2 ~ 1e-3: the expansion |q|^2 - 2 q.d + |d|^2
    # alone cancels catastrophically here, the exact re-ranking must not
    rng = np.random.default_rng(2)
    db = 1e6 + 0.01 * rng.standard_normal((200, 16))
    q = 1e6 + 0.01 * rng.standard_normal((10, 16))
    np.testing.assert_array_equal(euclidean_neighbours(q, db, 10), brute_neighbours(q, db, 10))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("change,match", [
    (lambda a: {**a, "query_codes": a["query_codes"] * 2}, "query_codes must hold only 0 and 1"),
    (lambda a: {**a, "db_codes": a["db_codes"][:, :3]}, "bits but db_codes have 3"),
    (lambda a: {**a, "db_codes": a["db_codes"][0]}, "db_codes must have shape"),
    (lambda a: {**a, "query_codes": a["query_codes"][:0], "neighbours": a["neighbours"][:0]},
     "query_codes is empty"),
    (lambda a: {**a, "db_codes": a["db_codes"].astype(str)}, "db_codes has dtype"),
    (lambda a: {**a, "neighbours": a["neighbours"] + 20}, r"every index must be in \[0, 19\]"),
    (lambda a: {**a, "neighbours": -a["neighbours"] - 1}, "every index must be"),
    (lambda a: {**a, "neighbours": np.array([[1, 2, 1]] * 4)},
     r"repeated indices within row\(s\) \[0, 1, 2, 3\]"),
    (lambda a: {**a, "neighbours": a["neighbours"][:3]}, r"shape \(nq, R\) = \(4, R >= 1\)"),
    (lambda a: {**a, "neighbours": a["neighbours"][:, :0]}, "neighbours must have shape"),
    (lambda a: {**a, "neighbours": a["neighbours"].astype(float)}, "neighbours has dtype float64"),
    (lambda a: {**a, "ns": [0, 5]}, r"integer in \[1, database size = 20\], got 0"),
    (lambda a: {**a, "ns": [5, 21]}, "got 21; drop or clip"),
    (lambda a: {**a, "ns": [2.0]}, "each N in ns"),
    (lambda a: {**a, "ns": [True]}, "each N in ns"),
    (lambda a: {**a, "ns": []}, "ns is empty"),
])
def test_recall_input_errors(change, match):
    rng = np.random.default_rng(0)
    q, db, nb = random_case(rng, 4, 20, 5, 3)
    args = change({"query_codes": q, "db_codes": db, "neighbours": nb, "ns": [1, 5]})
    with pytest.raises(ValueError, match=match):
        recall_at_n(**args)


def test_euclidean_input_errors():
    rng = np.random.default_rng(0)
    q, db = rng.random((3, 4)), rng.random((10, 4))
    with pytest.raises(ValueError, match="4 dimensions but db_features have 3"):
        euclidean_neighbours(q, db[:, :3])
    with pytest.raises(ValueError, match=r"r must be an integer in \[1, database size = 10\]"):
        euclidean_neighbours(q, db, r=11)
    with pytest.raises(ValueError, match="query_features contains NaN"):
        euclidean_neighbours(np.full((1, 4), np.nan), db)
    with pytest.raises(ValueError, match="db_features must be a non-empty"):
        euclidean_neighbours(q, db[:0])
    with pytest.raises(ValueError, match="block must be a positive integer"):
        euclidean_neighbours(q, db, block=0)
    with pytest.raises(ValueError, match="block must be a positive integer"):
        recall_at_n(q > 0.5, db > 0.5, np.zeros((3, 1), int), [1], block=-2)
