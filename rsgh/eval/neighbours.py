"""SGH's own evaluation protocol: Recall@N of true Euclidean nearest neighbours.

Dai et al. (2017, "Stochastic Generative Hashing", ICML) judge codes by how well Hamming
ranking recovers the geometry of the input features, not the class labels: each query's
R = 10 nearest database items by Euclidean distance in feature space are its true
neighbours, the database is ranked by the Hamming distance of the codes, and Recall10@N is
the fraction of those 10 found among the top N, averaged over queries, plotted for
N = 1 .. 10,000 (:func:`euclidean_neighbours` gives the ground truth, :func:`recall_at_n`
the curve).

Ties. Many database items share a Hamming distance with a query, and which of them make the
top N would depend on database order. As in :mod:`rsgh.eval.metrics`, the measure is the
**exact expectation under a uniformly random order within each tie group**: the groups at
distances below the one that position N cuts are wholly in the top N, and from the cut group
of n items, r of them neighbours, with m places left, the expected number taken is r m / n
(the mean of a hypergeometric draw). Per query, with histograms c_d (all database items) and
r_d (its true neighbours) over distances d = 0..K, and d* the group that position N falls in,

    expected hits(N) = sum_{d < d*} r_d + r_{d*} (N - sum_{d < d*} c_d) / c_{d*},

i.e. the linear interpolation of the cumulative counts (sum c, sum r) at N. Recall is hits / R.
Only the two histograms are kept per query (the Hamming distances are computed per block of
queries with the kernels of :mod:`rsgh.eval.metrics` and discarded), and every N is read off
them at once.
"""

from __future__ import annotations

import numpy as np

from rsgh.eval.metrics import (_MAX_BLOCK_ELEMENTS, _as_numpy, _backend, _check_inputs,
                               _distance_block, _pack_words)

__all__ = ["recall_at_n", "euclidean_neighbours"]


# --------------------------------------------------------------------------- validation


def _check_block(block) -> int:
    if isinstance(block, bool) or not (isinstance(block, (int, np.integer)) and block >= 1):
        raise ValueError(f"block must be a positive integer, got {block!r}")
    return int(block)


def _check_neighbours(neighbours, nq: int, ndb: int) -> np.ndarray:
    """(nq, R) integer indices into the database, distinct within a row -> int64 array."""
    a = _as_numpy(neighbours, "neighbours")
    if a.ndim != 2 or a.shape[0] != nq or a.shape[1] == 0:
        raise ValueError(f"neighbours must have shape (nq, R) = ({nq}, R >= 1), one row of true "
                         f"neighbour indices per query, got shape {a.shape}")
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise ValueError(f"neighbours has dtype {a.dtype}; pass integer database indices "
                         f"(e.g. the output of euclidean_neighbours, or .astype(np.int64))")
    a = a.astype(np.int64)
    if a.min() < 0 or a.max() >= ndb:
        raise ValueError(f"neighbours holds indices in [{a.min()}, {a.max()}] but the database has "
                         f"{ndb} items; every index must be in [0, {ndb - 1}]")
    s = np.sort(a, axis=1)
    dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
    if dup.any():
        raise ValueError(f"neighbours has repeated indices within row(s) "
                         f"{np.flatnonzero(dup)[:5].tolist()}; each query's R neighbours must be distinct")
    return a


def _check_ns(ns, ndb: int) -> np.ndarray:
    ns_list = [ns] if np.ndim(ns) == 0 else list(ns)
    if not ns_list:
        raise ValueError("ns is empty; pass at least one N, e.g. ns=[1, 10, 100]")
    for n in ns_list:
        if isinstance(n, bool) or not (isinstance(n, (int, np.integer)) and 1 <= n <= ndb):
            raise ValueError(f"each N in ns must be an integer in [1, database size = {ndb}], got "
                             f"{n!r}; drop or clip the larger Ns")
    return np.asarray(ns_list, dtype=np.int64)


def _check_features(x, name: str) -> np.ndarray:
    a = _as_numpy(x, name)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, D) array of feature vectors, got shape {a.shape}")
    if a.dtype == bool or a.dtype.kind not in "iuf":
        raise ValueError(f"{name} has dtype {a.dtype}; pass real-valued features")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; features must be finite")
    return a


# --------------------------------------------------------------------------- histograms and recall


def _neighbour_histograms(q: np.ndarray, db: np.ndarray, nb: np.ndarray,
                          block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query Hamming-distance histograms ``(cnt, rel)``, both (nq, K + 1) int64: all
    database items, and the query's true neighbours. The neighbours' distances are gathered
    from the same distance block, so no second distance computation is needed."""
    be = _backend("auto")
    nq, m = q.shape[0], q.shape[1] + 1
    ndb = db.shape[0]
    qp, dbp = _pack_words(q), _pack_words(db)
    b = int(max(1, min(block, _MAX_BLOCK_ELEMENTS // ndb)))
    cnt = np.empty((nq, m), dtype=np.int64)
    rel = np.empty((nq, m), dtype=np.int64)
    buf = np.empty((min(b, nq), ndb), dtype=np.int32)
    for i0 in range(0, nq, b):
        i1 = min(i0 + b, nq)
        dist = buf[: i1 - i0]
        _distance_block(qp[i0:i1], dbp, dist, be)
        for r in range(i1 - i0):  # per-row bincount, as in metrics.hamming_histograms
            cnt[i0 + r] = np.bincount(dist[r], minlength=m)
        nd = np.take_along_axis(dist, nb[i0:i1], axis=1) + m * np.arange(i1 - i0)[:, None]
        rel[i0:i1] = np.bincount(nd.ravel(), minlength=(i1 - i0) * m).reshape(i1 - i0, m)
    return cnt, rel


def _expected_hits(cnt: np.ndarray, rel: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """(b, L) expected number of true neighbours in the top N of each query, for every N.

    The group cut by position N is the number of groups whose cumulative count is < N. One
    ``searchsorted`` finds it for all queries and Ns at once: row i of the cumulative counts
    (values in [0, ndb]) is shifted by i (ndb + 1), which makes the flattened rows one sorted
    array with each query's Ns landing in its own row."""
    b, m = cnt.shape
    ccum = np.cumsum(cnt, axis=1)
    rcum = np.cumsum(rel, axis=1)
    shift = (int(ccum[0, -1]) + 1) * np.arange(b, dtype=np.int64)[:, None]
    g = np.searchsorted((ccum + shift).ravel(), (ns[None, :] + shift).ravel(), side="left")
    g = g.reshape(b, ns.size) - m * np.arange(b)[:, None]
    c_g = np.take_along_axis(cnt, g, axis=1)  # > 0: the cut group holds position N
    r_g = np.take_along_axis(rel, g, axis=1)
    c_before = np.take_along_axis(ccum, g, axis=1) - c_g
    r_before = np.take_along_axis(rcum, g, axis=1) - r_g
    return r_before + (ns[None, :] - c_before) * r_g / c_g


def recall_at_n(query_codes, db_codes, neighbours, ns, *, block: int = 256) -> np.ndarray:
    """Recall@N of true neighbours under Hamming ranking, exact under random order in ties.

    ``query_codes`` (nq, K) and ``db_codes`` (ndb, K) hold only 0 and 1 (uint8, or any
    integer, bool or float dtype, as in :mod:`rsgh.eval.metrics`); ``neighbours`` (nq, R)
    are each query's R distinct true neighbours as database indices (R = 10 in the SGH
    protocol; see :func:`euclidean_neighbours`); ``ns`` one N or a sequence of them, each in
    [1, ndb]. Returns a float64 array (len(ns),): for each N the mean over queries of the
    expected |top N ∩ neighbours| / R (module docstring). ``block`` queries share a
    distance block (reduced for huge databases so a block stays within 64 MiB)."""
    q, db = _check_inputs(query_codes, db_codes)
    nb = _check_neighbours(neighbours, q.shape[0], db.shape[0])
    ns_arr = _check_ns(ns, db.shape[0])
    cnt, rel = _neighbour_histograms(q, db, nb, _check_block(block))
    total = np.zeros(ns_arr.size)
    step = max(1, _MAX_BLOCK_ELEMENTS // (8 * ns_arr.size))  # bounds the (b, len(ns)) arrays
    for i0 in range(0, q.shape[0], step):
        total += _expected_hits(cnt[i0:i0 + step], rel[i0:i0 + step], ns_arr).sum(axis=0)
    return total / (q.shape[0] * nb.shape[1])


# --------------------------------------------------------------------------- ground truth


def _nearest_in_block(qb: np.ndarray, db: np.ndarray, db_sq: np.ndarray, r: int) -> np.ndarray:
    """Exact r nearest rows of ``db`` for each row of ``qb``, ties to the lower index.

    Screen with the fast expansion |q|^2 - 2 q.d + |d|^2 (one BLAS product), keeping every
    item within a rounding-error bound of the r-th screened distance, then rank those few
    candidates by the directly computed sum((d - q)^2) and index, so that the rounding of the
    expansion (and of BLAS, which need not give equal dot products for equal rows) can
    neither drop a true neighbour nor break a tie out of index order."""
    q_sq = np.einsum("ij,ij->i", qb, qb)
    d2 = q_sq[:, None] - 2.0 * (qb @ db.T) + db_sq[None, :]
    kth = np.partition(d2, r - 1, axis=1)[:, r - 1]
    tol = 8.0 * (db.shape[1] + 4) * np.finfo(np.float64).eps * (q_sq + db_sq.max())
    out = np.empty((qb.shape[0], r), dtype=np.int64)
    for i in range(qb.shape[0]):
        cand = np.flatnonzero(d2[i] <= kth[i] + 2.0 * tol[i])
        exact = ((db[cand] - qb[i]) ** 2).sum(axis=1)
        out[i] = cand[np.lexsort((cand, exact))[:r]]
    return out


def euclidean_neighbours(query_features, db_features, r: int = 10, *, block: int = 256) -> np.ndarray:
    """The exact r nearest database items of each query by Euclidean distance, nearest first,
    ties broken by the lower database index: (nq, r) int64, the ground truth of
    :func:`recall_at_n`. Float64, in blocks of ``block`` queries (reduced so a block of
    distances stays within 64 MiB).

    numpy rather than faiss ``IndexFlatL2``: faiss computes in float32 through the same
    expansion and returns tied or nearly tied items in an unspecified order, while the ground
    truth must be exact and reproducible; one float64 BLAS product per block is fast enough
    for a one-off computation (seconds for 1,000 x 59,000 x 512)."""
    q = _check_features(query_features, "query_features")
    db = _check_features(db_features, "db_features")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query_features have {q.shape[1]} dimensions but db_features have "
                         f"{db.shape[1]}; both must be the same feature")
    if isinstance(r, bool) or not (isinstance(r, (int, np.integer)) and 1 <= r <= db.shape[0]):
        raise ValueError(f"r must be an integer in [1, database size = {db.shape[0]}], got {r!r}")
    b = int(max(1, min(_check_block(block), _MAX_BLOCK_ELEMENTS // (2 * db.shape[0]))))
    db_sq = np.einsum("ij,ij->i", db, db)
    return np.concatenate([_nearest_in_block(q[i0:i0 + b], db, db_sq, int(r))
                           for i0 in range(0, q.shape[0], b)])
