import numpy as np
import pytest
import torch

from rsgh.eval import baselines as B
from rsgh.eval.metrics import mean_average_precision


@pytest.fixture(scope="module")
def clusters():
    """10 Gaussian clusters in 32-D, label = cluster: (X_query, y_query, X_db, y_db)."""
    rng = np.random.default_rng(0)
    centres = 2.0 * rng.standard_normal((10, 32))
    y = rng.integers(0, 10, 2200)
    x = (centres[y] + rng.standard_normal((2200, 32))).astype(np.float32)
    return x[:200], y[:200], x[200:], y[200:]


def anisotropic(rng, n=500, d=12):
    return rng.standard_normal((n, d)) * np.linspace(3.0, 0.5, d) + 1.0


@pytest.mark.parametrize("name", sorted(B.BASELINES))
def test_shapes_and_dtypes(name, clusters):
    xq, _, xd, _ = clusters
    h = B.fit_baseline(name, xd, 7)
    codes = h.encode(xq)
    assert codes.shape == (200, 7) and codes.dtype == np.uint8
    assert set(np.unique(codes)) <= {0, 1}
    assert h.n_bits == 7
    # torch and float64 inputs give the same codes
    np.testing.assert_array_equal(h.encode(torch.from_numpy(xq)), codes)
    np.testing.assert_array_equal(h.encode(xq.astype(np.float64)), codes)


@pytest.mark.parametrize("name", sorted(B.BASELINES))
def test_beat_random_codes_on_clusters(name, clusters):
    xq, yq, xd, yd = clusters
    h = B.fit_baseline(name, xd, 16, seed=1)
    ours = mean_average_precision(h.encode(xq), h.encode(xd), yq, yd)
    rng = np.random.default_rng(5)
    rand = mean_average_precision(rng.integers(0, 2, (200, 16)), rng.integers(0, 2, (2000, 16)), yq, yd)
    assert rand < 0.15  # about 1/10 (ten balanced classes)
    assert ours > rand + 0.3, (name, ours, rand)


@pytest.mark.parametrize("name", ["lsh", "itq"])
def test_deterministic_by_seed(name, clusters):
    xq, _, xd, _ = clusters
    a = B.fit_baseline(name, xd, 12, seed=3).encode(xq)
    b = B.fit_baseline(name, xd, 12, seed=3).encode(xq)
    c = B.fit_baseline(name, xd, 12, seed=4).encode(xq)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", ["pcah", "sh"])
def test_deterministic_methods_repeat(name, clusters):
    xq, _, xd, _ = clusters
    np.testing.assert_array_equal(B.fit_baseline(name, xd, 9).encode(xq), B.fit_baseline(name, xd, 9).encode(xq))


# ----------------------------------------------------------------------------- LSH, PCAH


def test_lsh_is_sign_of_centred_gaussian_projection():
    rng = np.random.default_rng(1)
    x = anisotropic(rng)
    h = B.fit_lsh(x, 20, seed=7)
    w = np.random.default_rng(7).standard_normal((12, 20))
    np.testing.assert_array_equal(h.encode(x), ((x - x.mean(0)) @ w > 0).astype(np.uint8))
    assert B.fit_lsh(x, 40).encode(x).shape == (500, 40)  # more bits than dimensions is fine


def test_pcah_matches_independent_svd():
    rng = np.random.default_rng(2)
    x = anisotropic(rng)
    xc = x - x.mean(0)
    vt = np.linalg.svd(xc, full_matrices=False)[2][:6]
    ref = (xc @ vt.T > 0).astype(np.uint8)
    ours = B.fit_pcah(x, 6).encode(x)
    for k in range(6):  # each principal direction is defined up to sign: a bit may be complemented
        assert np.array_equal(ours[:, k], ref[:, k]) or np.array_equal(ours[:, k], 1 - ref[:, k]), k
    h = B.fit_pcah(x, 6)
    np.testing.assert_allclose(h.variances, np.linalg.svd(xc, compute_uv=False)[:6] ** 2 / 499, rtol=1e-10)


# ----------------------------------------------------------------------------- ITQ


def test_itq_loss_non_increasing_and_rotation_orthogonal():
    rng = np.random.default_rng(3)
    x = anisotropic(rng, n=800, d=16)
    h = B.fit_itq(x, 8, seed=0)
    losses = h.loss_history
    assert len(losses) == 51  # initial + 50 iterations
    assert np.all(np.diff(losses) <= 1e-9 * losses[0])
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(h.rotation @ h.rotation.T, np.eye(8), atol=1e-12)
    # the recorded loss is ||B - V R||^2 with B the sign of V R, for the final R
    v = (x - x.mean(0)) @ h.pca @ h.rotation
    assert losses[-1] == pytest.approx(np.square(np.where(v >= 0, 1.0, -1.0) - v).sum(), rel=1e-10)
    np.testing.assert_array_equal(h.encode(x), (v >= 0).astype(np.uint8))


def test_itq_zero_iterations_is_random_rotation_of_pca():
    rng = np.random.default_rng(4)
    x = anisotropic(rng)
    h = B.fit_itq(x, 5, n_iter=0, seed=2)
    assert len(h.loss_history) == 1
    np.testing.assert_allclose(h.rotation.T @ h.rotation, np.eye(5), atol=1e-12)


# ----------------------------------------------------------------------------- SH


def test_sh_hand_checked_grid():
    """A centred 2-D grid, ranges 2.5 (x0) and 1 (x1): the principal directions are the axes,
    the box is the grid's extent, and with 3 bits trainSH keeps the modes of smallest
    (m pi / R)^2: x0 m=1 (1.58), x0 m=2 (6.32), x1 m=1 (9.87) before x0 m=3 (14.2). The bits are
    cos(pi (x0 + 1.25) / 2.5) > 0 <=> x0 < 0; cos(2 pi (x0 + 1.25) / 2.5) > 0 <=> |x0| > 0.625;
    cos(pi (x1 + 0.5)) > 0 <=> x1 < 0."""
    g0, g1 = np.meshgrid(np.linspace(-1.25, 1.25, 11), np.linspace(-0.5, 0.5, 5))
    x = np.column_stack([g0.ravel(), g1.ravel()])
    h = B.fit_sh(x, 3)
    np.testing.assert_array_equal(h.modes, [[1, 0], [2, 0], [0, 1]])
    np.testing.assert_allclose(h.eigenvalues, [(np.pi / 2.5) ** 2, (2 * np.pi / 2.5) ** 2, np.pi ** 2], rtol=1e-12)
    np.testing.assert_allclose(np.abs(h.pc), np.eye(2), atol=1e-12)
    rng = np.random.default_rng(0)
    t = rng.uniform([-1.2, -0.45], [1.2, 0.45], (300, 2))
    t = t[(np.abs(t[:, 0]) > 1e-3) & (np.abs(np.abs(t[:, 0]) - 0.625) > 1e-3) & (np.abs(t[:, 1]) > 1e-3)]
    expected = np.column_stack([t[:, 0] < 0, np.abs(t[:, 0]) > 0.625, t[:, 1] < 0]).astype(np.uint8)
    np.testing.assert_array_equal(h.encode(t), expected)


def test_sh_invariants():
    rng = np.random.default_rng(6)
    x = anisotropic(rng, d=10)
    h = B.fit_sh(x, 24)
    assert np.all(np.diff(h.eigenvalues) >= 0)  # bits ordered by increasing eigenvalue
    assert np.all((h.modes > 0).sum(1) == 1)  # one-dimensional eigenfunctions only
    assert h.modes.shape == (24, 10)
    u = h.eigenfunctions(x)
    assert np.all(np.abs(u) <= 1 + 1e-12)
    np.testing.assert_array_equal(h.encode(x), (u > 0).astype(np.uint8))
    # the first bit is the lowest mode of the widest direction: it splits that range in half
    widest = np.argmax(h.mx - h.mn)
    np.testing.assert_array_equal(h.modes[0], np.eye(10, dtype=int)[widest])
    # more bits than dimensions is allowed (npca = min(n_bits, d), as in trainSH)
    assert B.fit_sh(x[:, :3], 10).encode(x[:, :3]).shape == (500, 10)


def test_sh_eigenfunctions_are_compresssh_product_to_the_bit():
    """compressSH multiplies sin(omega_j y_j + pi/2) over every direction j; the eigenfunctions skip
    the directions whose mode is zero (a factor of exactly 1.0). Against that product written out, for
    trainSH's modes (one direction each) and for hand-made modes with none, one, two and three."""
    rng = np.random.default_rng(3)
    x = anisotropic(rng, d=6)
    h = B.fit_sh(x, 9)
    modes = np.array([[0, 0, 0, 0, 0, 0], [0, 3, 0, 0, 0, 0], [1, 0, 0, 2, 0, 0], [1, 1, 0, 0, 0, 5]])
    for model in (h, B.SpectralHashing(h.pc, h.mn, h.mx, modes, np.zeros(len(modes)))):
        y = (x @ model.pc) - model.mn
        omegas = model.modes * (np.pi / (model.mx - model.mn))
        product = np.stack([np.prod(np.sin(y * w + np.pi / 2), axis=1) for w in omegas], axis=1)
        np.testing.assert_array_equal(model.eigenfunctions(x), product)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call, match", [
    (lambda x: B.fit_pcah(x, 13), "n_bits <= feature dimension"),
    (lambda x: B.fit_itq(x, 20), "n_bits <= feature dimension"),
    (lambda x: B.fit_lsh(x[:, 0], 4), r"shape \(n, d\)"),
    (lambda x: B.fit_sh(np.where(x > 3, np.nan, x), 4), "NaN"),
    (lambda x: B.fit_itq(x, 0), "positive integer"),
    (lambda x: B.fit_pcah(x[:1], 2), "at least 2"),
    (lambda x: B.fit_pcah(x, 4).encode(x[:, :5]), "5 features but the hash was fitted on 12"),
    (lambda x: B.fit_lsh(x, 4).encode(np.full((2, 12), np.inf)), "NaN or inf"),
    (lambda x: B.fit_baseline("nope", x, 4), "unknown baseline"),
])
def test_bad_inputs(call, match):
    x = anisotropic(np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        call(x)
