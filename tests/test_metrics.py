"""rsgh.metrics against brute force written independently here (no shared code with the module).

The reference for every tie-exact measure is the literal definition: rank the database by
Hamming distance with ties in uniformly random order and average the ordinary measure, either
over all orderings (small cases) or over many random ones (Monte Carlo)."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from rsgh.eval import metrics as M


# ----------------------------------------------------------------------------- brute force


def brute_dist(q, db):
    q, db = np.asarray(q, dtype=np.int64), np.asarray(db, dtype=np.int64)
    return (q[:, None, :] != db[None, :, :]).sum(-1)


def ap_of_rankings(rel_ranked):
    """Ordinary AP of each row of a (P, n) 0/1 matrix of ranked relevances."""
    rel_ranked = np.asarray(rel_ranked, dtype=np.float64)
    hits = np.cumsum(rel_ranked, axis=1)
    prec = hits / np.arange(1, rel_ranked.shape[1] + 1)
    n_rel = rel_ranked.sum(1)
    return np.where(n_rel > 0, (prec * rel_ranked).sum(1) / np.maximum(n_rel, 1), 0.0)


def rankings_all_orders(dist_row, rel_row):
    """Relevance in ranked order for every ordering of the database (all n! permutations, then
    a stable sort by distance): uniform random order within ties, by definition."""
    perms = np.array(list(itertools.permutations(range(len(dist_row)))))
    keys = dist_row[perms]
    order = np.argsort(keys, axis=1, kind="stable")
    return np.take_along_axis(rel_row[perms], order, 1)


def rankings_tie_patterns(dist_row, rel_row):
    """Every distinct relevance pattern within each tie group (each equally likely under a
    uniform order within ties), combined over groups: an enumeration different from the above
    that scales to larger databases."""
    per_group = []
    for d in np.unique(dist_row):
        n = int((dist_row == d).sum())
        r = int(rel_row[dist_row == d].sum())
        pats = []
        for pos in itertools.combinations(range(n), r):
            p = np.zeros(n, dtype=np.int64)
            p[list(pos)] = 1
            pats.append(p)
        per_group.append(pats)
    return np.array([np.concatenate(c) for c in itertools.product(*per_group)])


def monte_carlo_rankings(dist_row, rel_row, n_samples, rng):
    keys = dist_row[None, :] + 0.5 * rng.random((n_samples, len(dist_row)))
    return rel_row[np.argsort(keys, axis=1)]


def random_case(rng, nq, ndb, k_bits, n_classes):
    q = rng.integers(0, 2, (nq, k_bits))
    db = rng.integers(0, 2, (ndb, k_bits))
    return q, db, rng.integers(0, n_classes, nq), rng.integers(0, n_classes, ndb)


# ----------------------------------------------------------------------------- distances and packing


@pytest.mark.parametrize("k_bits", [1, 3, 8, 13, 64, 65, 130])
@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_hamming_distances_match_brute_force(k_bits, backend):
    rng = np.random.default_rng(k_bits)
    q, db = rng.integers(0, 2, (7, k_bits)), rng.integers(0, 2, (11, k_bits))
    np.testing.assert_array_equal(M.hamming_distances(q, db, backend=backend), brute_dist(q, db))


def test_histograms_backends_agree():
    rng = np.random.default_rng(3)
    q, db, ql, dbl = random_case(rng, 40, 300, 21, 4)
    a = M.hamming_histograms(q, db, ql, dbl, backend="faiss", block=7)
    b = M.hamming_histograms(q, db, ql, dbl, backend="numpy")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    d = brute_dist(q, db)
    for i in range(len(q)):
        np.testing.assert_array_equal(a[0][i], np.bincount(d[i], minlength=22))
        np.testing.assert_array_equal(a[1][i], np.bincount(d[i][dbl == ql[i]], minlength=22))


def test_pack_codes_layout():
    c = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1], [0] * 10 + [1]])
    packed = M.pack_codes(c)
    # bit k in byte k // 8 at position k % 8, least significant first; last byte zero-padded
    np.testing.assert_array_equal(packed, np.array([[1, 6], [0, 4]], dtype=np.uint8))
    assert packed.dtype == np.uint8 and packed.shape == (2, 2)


def test_pack_codes_is_faiss_layout():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2, (5, 24))
    x = np.ascontiguousarray(np.where(c > 0, 1.0, -1.0).astype(np.float32))
    ref = np.zeros((5, 3), dtype=np.uint8)
    faiss.fvecs2bitvecs(faiss.swig_ptr(x), faiss.swig_ptr(ref), 24, 5)
    np.testing.assert_array_equal(M.pack_codes(c), ref)


# ----------------------------------------------------------------------------- AP


@pytest.mark.parametrize("seed", range(6))
def test_ap_equals_average_over_all_database_orders(seed):
    rng = np.random.default_rng(seed)
    q, db, ql, dbl = random_case(rng, 3, 8, 2 + seed % 2, 2)
    dl = brute_dist(q, db)
    with warnings.catch_warnings():  # a query may have no relevant item: AP 0 on both sides
        warnings.simplefilter("ignore")
        ours = M.average_precisions(q, db, ql, dbl)
    for i in range(len(q)):
        ref = ap_of_rankings(rankings_all_orders(dl[i], (dbl == ql[i]).astype(int))).mean()
        assert ours[i] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_ap_equals_average_over_all_tie_patterns(seed):
    rng = np.random.default_rng(100 + seed)
    q, db, ql, dbl = random_case(rng, 4, 12, 3, 3)
    dbl[:3] = [0, 1, 2]  # every class present: no warning
    dl = brute_dist(q, db)
    ours = M.average_precisions(q, db, ql, dbl)
    for i in range(len(q)):
        ref = ap_of_rankings(rankings_tie_patterns(dl[i], (dbl == ql[i]).astype(int))).mean()
        assert ours[i] == pytest.approx(ref, abs=1e-12)
    assert M.mean_average_precision(q, db, ql, dbl) == pytest.approx(ours.mean(), abs=1e-15)


def test_tie_pattern_enumeration_equals_permutations():
    # the two brute forces agree with each other (guards the test helpers themselves)
    rng = np.random.default_rng(7)
    d = rng.integers(0, 3, 7)
    r = rng.integers(0, 2, 7)
    a = ap_of_rankings(rankings_all_orders(d, r)).mean()
    b = ap_of_rankings(rankings_tie_patterns(d, r)).mean()
    assert a == pytest.approx(b, abs=1e-14)


def test_ap_monte_carlo_large_ties():
    """500 items, 4 bits (5 distances: huge tie groups). Tolerance: 5 standard errors of the
    Monte Carlo mean per query (about 1 false failure in 10^6 comparisons; seeded anyway), and
    the SE is small (~2e-3), so a wrong formula would fail clearly."""
    rng = np.random.default_rng(11)
    q, db, ql, dbl = random_case(rng, 12, 500, 4, 3)
    ours = M.average_precisions(q, db, ql, dbl)
    dl = brute_dist(q, db)
    n_samples = 4000
    for i in range(len(q)):
        aps = ap_of_rankings(monte_carlo_rankings(dl[i], (dbl == ql[i]).astype(int), n_samples, rng))
        se = aps.std(ddof=1) / math.sqrt(n_samples)
        assert abs(ours[i] - aps.mean()) < 5 * se + 1e-12, (i, ours[i], aps.mean(), se)
    # tie order matters a lot here, so this is a real check: best vs worst order differ
    rel0 = (dbl == ql[0]).astype(int)
    best = ap_of_rankings(rel0[np.lexsort((-rel0, dl[0]))][None])[0]
    worst = ap_of_rankings(rel0[np.lexsort((rel0, dl[0]))][None])[0]
    assert best - worst > 0.05
    assert worst < ours[0] < best


def test_no_ties_equals_plain_sorted_ap():
    rng = np.random.default_rng(5)
    k_bits = 40
    q = rng.integers(0, 2, (1, k_bits))
    flips = np.tril(np.ones((k_bits + 1, k_bits), dtype=np.int64), -1)  # item j: first j bits flipped
    db = q ^ flips
    perm = rng.permutation(k_bits + 1)
    db, dbl = db[perm], rng.integers(0, 3, k_bits + 1)
    ql = np.array([dbl[0]])
    d = brute_dist(q, db)[0]
    assert len(np.unique(d)) == len(d)
    plain = ap_of_rankings((dbl == ql[0])[np.argsort(d)][None])[0]
    assert M.mean_average_precision(q, db, ql, dbl) == pytest.approx(plain, abs=1e-14)


def test_shuffling_database_changes_nothing():
    rng = np.random.default_rng(9)
    q, db, ql, dbl = random_case(rng, 50, 2000, 10, 5)
    base = M.average_precisions(q, db, ql, dbl, block=13)
    base_pk = M.precision_at_k(q, db, ql, dbl, ks=(1, 10, 333))
    for _ in range(3):
        p = rng.permutation(len(db))
        np.testing.assert_allclose(M.average_precisions(q, db[p], ql, dbl[p]), base, rtol=0, atol=1e-13)
        pk = M.precision_at_k(q, db[p], ql, dbl[p], ks=(1, 10, 333))
        assert pk == pytest.approx(base_pk, abs=1e-13)


def test_block_size_does_not_matter():
    rng = np.random.default_rng(2)
    q, db, ql, dbl = random_case(rng, 37, 400, 16, 4)
    ref = M.average_precisions(q, db, ql, dbl, block=1000)
    for b in (1, 5, 36):
        np.testing.assert_array_equal(M.average_precisions(q, db, ql, dbl, block=b), ref)


def test_input_types_agree():
    rng = np.random.default_rng(4)
    q, db, ql, dbl = random_case(rng, 10, 60, 12, 3)
    ref = M.mean_average_precision(q, db, ql, dbl)
    assert M.mean_average_precision(torch.tensor(q), torch.tensor(db), torch.tensor(ql),
                                    torch.tensor(dbl)) == ref
    assert M.mean_average_precision(q.astype(bool), db.astype(np.float32), ql.astype(np.int16),
                                    dbl.astype(float)) == ref
    assert M.mean_average_precision(torch.tensor(q, dtype=torch.float32), db.astype(bool),
                                    ql, dbl) == ref


def test_perfect_and_worst_codes():
    # codes = one-hot class: relevant items at distance 0, others at 2 -> AP 1
    labels = np.arange(30) % 3
    codes = np.eye(3, dtype=np.uint8)[labels]
    assert M.mean_average_precision(codes, codes, labels, labels) == pytest.approx(1.0, abs=1e-15)
    # all codes identical: one tie group of n with r relevant, expected AP known in closed form
    # from the literal definition: E[AP] = (1/r) sum_j (r/n) (1 + (j-1)(r-1)/(n-1)) / j
    same = np.zeros((30, 5), dtype=np.uint8)
    n, r = 30, 10
    ref = sum((1 / n) * (1 + (j - 1) * (r - 1) / (n - 1)) / j for j in range(1, n + 1))
    assert M.mean_average_precision(same[:1], same, labels[:1], labels) == pytest.approx(ref, abs=1e-14)


# ----------------------------------------------------------------------------- precision@k, radius, PR


@pytest.mark.parametrize("seed", range(4))
def test_precision_at_k_all_orders(seed):
    rng = np.random.default_rng(200 + seed)
    q, db, ql, dbl = random_case(rng, 3, 8, 2, 2)
    dl = brute_dist(q, db)
    ks = (1, 2, 3, 5, 8)
    ours = M.precision_at_k(q, db, ql, dbl, ks=ks)
    ranked = [rankings_all_orders(dl[i], (dbl == ql[i]).astype(int)) for i in range(len(q))]
    for k in ks:
        ref = np.mean([r[:, :k].mean() for r in ranked])
        assert ours[k] == pytest.approx(ref, abs=1e-12)


def test_precision_at_k_monte_carlo():
    rng = np.random.default_rng(21)
    q, db, ql, dbl = random_case(rng, 8, 400, 5, 4)
    ks = (10, 57, 200)
    ours = M.precision_at_k(q, db, ql, dbl, ks=ks)
    dl = brute_dist(q, db)
    n_samples = 3000
    for k in ks:
        per_q = np.array([monte_carlo_rankings(dl[i], (dbl == ql[i]).astype(int), n_samples, rng)[:, :k]
                          .mean(1) for i in range(len(q))])  # (nq, samples)
        vals = per_q.mean(0)
        se = vals.std(ddof=1) / math.sqrt(n_samples)
        assert abs(ours[k] - vals.mean()) < 5 * se + 1e-12


def test_precision_within_radius_and_pr_curve_brute_force():
    rng = np.random.default_rng(31)
    q, db, ql, dbl = random_case(rng, 25, 120, 9, 3)
    q[0] = 1 - db[0]  # ... and make sure some query has nothing within small radii
    dbl[:3] = [0, 1, 2]
    dl = brute_dist(q, db)
    rel = dbl[None, :] == ql[:, None]
    curve = M.precision_recall_curve(q, db, ql, dbl)
    assert list(curve.columns) == ["radius", "precision", "recall"]
    assert list(curve["radius"]) == list(range(10))
    for radius in range(10):
        within = dl <= radius
        prec = [(within[i] & rel[i]).sum() / within[i].sum() if within[i].any() else 0.0
                for i in range(len(q))]
        rec = [(within[i] & rel[i]).sum() / rel[i].sum() for i in range(len(q))]
        assert curve["precision"][radius] == pytest.approx(np.mean(prec), abs=1e-14)
        assert curve["recall"][radius] == pytest.approx(np.mean(rec), abs=1e-14)
        assert M.precision_within_radius(q, db, ql, dbl, radius=radius) == pytest.approx(np.mean(prec), abs=1e-14)
    assert curve["recall"].iloc[-1] == pytest.approx(1.0)
    assert M.precision_within_radius(q, db, ql, dbl, radius=50) == curve["precision"].iloc[-1]


def test_retrieval_summary_matches_individual_functions():
    rng = np.random.default_rng(41)
    q, db, ql, dbl = random_case(rng, 20, 300, 16, 4)
    s = M.retrieval_summary(q, db, ql, dbl, ks=(5, 50, 10_000))
    assert s["map"] == M.mean_average_precision(q, db, ql, dbl)
    assert s["precision_at_k"] == M.precision_at_k(q, db, ql, dbl, ks=(5, 50))
    assert s["precision_within_radius"] == M.precision_within_radius(q, db, ql, dbl)
    assert s["pr_curve"].equals(M.precision_recall_curve(q, db, ql, dbl))


# ----------------------------------------------------------------------------- conventions and errors


def test_no_relevant_queries_warn_and_count_zero():
    rng = np.random.default_rng(51)
    q, db, _, _ = random_case(rng, 5, 40, 8, 2)
    dbl = np.zeros(40, dtype=int)
    ql = np.array([0, 0, 7, 0, 9])
    with pytest.warns(UserWarning, match="2 of 5 queries have no relevant item"):
        ap = M.average_precisions(q, db, ql, dbl)
    assert ap[2] == 0 and ap[4] == 0
    with pytest.warns(UserWarning, match="2 of 5"):
        m = M.mean_average_precision(q, db, ql, dbl)
    assert m == pytest.approx(ap.sum() / 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.mean_average_precision(q, db, np.zeros(5, dtype=int), dbl)


@pytest.mark.parametrize("args, match", [
    (dict(q=np.zeros((2, 5)), db=np.zeros((3, 6))), "5 bits but db_codes have 6"),
    (dict(ql=np.zeros(3, int)), "query_labels has 3 labels but query_codes has 2"),
    (dict(dbl=np.zeros((4, 1), int)), "db_labels must be 1-D"),
    (dict(q=np.array([[0, 2, 1, 0, 1]])), "only 0 and 1"),
    (dict(q=np.array([[0, -1, 1, 1, -1]])), "codes > 0"),
    (dict(db=np.array([[0, np.nan, 1, 0, 1]] * 4)), "NaN"),
    (dict(q=np.zeros(5)), r"shape \(n, K\)"),
    (dict(q=np.zeros((0, 5))), "empty"),
    (dict(ql=np.array([0.5, 1.0])), "integer"),
    (dict(ql=np.array(["a", "b"])), "integers"),
])
def test_bad_inputs_raise(args, match):
    kw = dict(q=np.zeros((2, 5)), db=np.ones((4, 5)), ql=np.zeros(2, int), dbl=np.zeros(4, int))
    kw.update(args)
    with pytest.raises(ValueError, match=match):
        M.mean_average_precision(kw["q"], kw["db"], kw["ql"], kw["dbl"])


def test_bad_k_and_radius():
    q, db, l = np.zeros((2, 4)), np.zeros((5, 4)), np.zeros(5, int)
    with pytest.raises(ValueError, match="database size = 5"):
        M.precision_at_k(q, db, l[:2], l, ks=(1, 6))
    with pytest.raises(ValueError, match="non-negative"):
        M.precision_within_radius(q, db, l[:2], l, radius=-1)
    with pytest.raises(ValueError, match="block"):
        M.mean_average_precision(q, db, l[:2], l, block=0)
