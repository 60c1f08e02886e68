"""Classic unsupervised hashing baselines: LSH, PCAH, ITQ and spectral hashing (SH).

Each ``fit_*`` function takes training features ``X`` (n, d) and a code length ``n_bits`` and
returns a fitted object whose ``encode(X)`` gives {0, 1} uint8 codes (n, n_bits).

- LSH: random Gaussian projections of the centred data, sign (Charikar 2002 style
  random-hyperplane hashing).
- PCAH: the top ``n_bits`` principal directions, sign of the centred projection.
- ITQ (Gong & Lazebnik, CVPR 2011, and their reference code): centre, PCA to ``n_bits``
  dimensions, then ``n_iter`` = 50 alternations of B = sign(V R) and the orthogonal
  Procrustes rotation R minimising the quantisation loss ||B - V R||_F^2 (random orthogonal
  start), codes = 1[V R >= 0].
- SH (Weiss, Torralba & Fergus, NIPS 2008) exactly as the reference MATLAB ``trainSH`` /
  ``compressSH``: PCA to min(n_bits, d) directions (eigenvectors of the covariance,
  projection of the *uncentred* data), a box [min - eps, max + eps] per direction, the
  one-dimensional analytical eigenfunctions sin(pi/2 + m pi (x - mn) / (mx - mn)) with modes
  m = 1..maxMode, the n_bits modes of smallest eigenvalue (sum of squared frequencies, stable
  order, the constant mode skipped), codes = 1[eigenfunction > 0].

Linear algebra uses float64 numpy (``eigh`` of the covariance, ``svd``), with the training
data accumulated in chunks so float32 inputs are not copied whole. Eigenvector signs are
arbitrary in any solver; here each principal direction is oriented so that its largest-
magnitude component is positive, so results do not depend on the LAPACK build. (A sign flip
complements a PCAH/ITQ bit and, for odd SH modes, an SH bit, which leaves Hamming distances
unchanged anyway.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LSH", "PCAH", "ITQ", "SpectralHashing", "fit_lsh", "fit_pcah", "fit_itq", "fit_sh",
           "fit_baseline", "BASELINES"]

_CHUNK = 8192  # rows per chunk when projecting or accumulating a covariance


# --------------------------------------------------------------------------- helpers


def _check_features(X, name: str = "X", d: int | None = None, min_rows: int = 1) -> np.ndarray:
    if hasattr(X, "detach") and hasattr(X, "cpu"):  # torch tensor
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name} has dtype {X.dtype}; pass real-valued features")
    if X.shape[0] < min_rows:
        raise ValueError(f"{name} has {X.shape[0]} rows; at least {min_rows} are needed")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has no feature columns (shape {X.shape})")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name} has {X.shape[1]} features but the hash was fitted on {d}")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf; clean or impute the features first")
    return X


def _check_bits(n_bits, d: int | None = None, method: str = "") -> int:
    if not (isinstance(n_bits, (int, np.integer)) and not isinstance(n_bits, bool) and n_bits >= 1):
        raise ValueError(f"n_bits must be a positive integer, got {n_bits!r}")
    if d is not None and n_bits > d:
        raise ValueError(f"{method} needs n_bits <= feature dimension, got n_bits={n_bits} > d={d}; "
                         f"use fewer bits (or LSH/SH, which allow more bits than dimensions)")
    return int(n_bits)


def _mean(X: np.ndarray) -> np.ndarray:
    s = np.zeros(X.shape[1])
    for i in range(0, X.shape[0], _CHUNK):
        s += X[i:i + _CHUNK].sum(axis=0, dtype=np.float64)
    return s / X.shape[0]


def _covariance(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Sample covariance (normalised by n - 1, as MATLAB's ``cov``) in float64."""
    c = np.zeros((X.shape[1], X.shape[1]))
    for i in range(0, X.shape[0], _CHUNK):
        xc = X[i:i + _CHUNK].astype(np.float64) - mean
        c += xc.T @ xc
    return c / max(X.shape[0] - 1, 1)


def _orient(vectors: np.ndarray) -> np.ndarray:
    """Flip each column so that its largest-magnitude entry is positive."""
    idx = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return vectors * signs


def _top_eigenvectors(X: np.ndarray, mean: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k leading eigenvectors (d, k) and eigenvalues of the covariance, largest first."""
    vals, vecs = np.linalg.eigh(_covariance(X, mean))
    order = np.argsort(vals)[::-1][:k]
    return _orient(vecs[:, order]), vals[order]


def _project(X: np.ndarray, W: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """(X - shift) @ W in float64, chunked."""
    out = np.empty((X.shape[0], W.shape[1]))
    for i in range(0, X.shape[0], _CHUNK):
        x = X[i:i + _CHUNK].astype(np.float64)
        if shift is not None:
            x -= shift
        out[i:i + _CHUNK] = x @ W
    return out


# --------------------------------------------------------------------------- LSH and PCAH


@dataclass
class LSH:
    """Random-hyperplane LSH: bits 1[(x - mean) w_k > 0], w_k ~ N(0, I)."""

    mean: np.ndarray
    projections: np.ndarray  # (d, n_bits)

    @property
    def n_bits(self) -> int:
        return self.projections.shape[1]

    def encode(self, X) -> np.ndarray:
        X = _check_features(X, d=self.projections.shape[0])
        return (_project(X, self.projections, self.mean) > 0).astype(np.uint8)


def fit_lsh(X, n_bits: int, seed: int = 0) -> LSH:
    X = _check_features(X)
    n_bits = _check_bits(n_bits)
    rng = np.random.default_rng(seed)
    return LSH(mean=_mean(X), projections=rng.standard_normal((X.shape[1], n_bits)))


@dataclass
class PCAH:
    """PCA hashing: bits 1[(x - mean) v_k > 0] for the top principal directions v_k."""

    mean: np.ndarray
    components: np.ndarray  # (d, n_bits), unit columns, largest variance first
    variances: np.ndarray  # (n_bits,)

    @property
    def n_bits(self) -> int:
        return self.components.shape[1]

    def encode(self, X) -> np.ndarray:
        X = _check_features(X, d=self.components.shape[0])
        return (_project(X, self.components, self.mean) > 0).astype(np.uint8)


def fit_pcah(X, n_bits: int) -> PCAH:
    X = _check_features(X, min_rows=2)
    n_bits = _check_bits(n_bits, X.shape[1], "PCAH")
    mean = _mean(X)
    comps, vals = _top_eigenvectors(X, mean, n_bits)
    return PCAH(mean=mean, components=comps, variances=vals)


# --------------------------------------------------------------------------- ITQ


@dataclass
class ITQ:
    """Iterative quantisation: bits 1[(x - mean) P R >= 0], P the PCA projection, R the learned
    orthogonal rotation. ``loss_history[t]`` is ||B - V R||_F^2 on the training data after
    iteration t (``loss_history[0]``: the random initial rotation with its best B)."""

    mean: np.ndarray
    pca: np.ndarray  # (d, n_bits)
    rotation: np.ndarray  # (n_bits, n_bits), orthogonal
    loss_history: np.ndarray = field(repr=False)

    @property
    def n_bits(self) -> int:
        return self.rotation.shape[0]

    def encode(self, X) -> np.ndarray:
        X = _check_features(X, d=self.pca.shape[0])
        return (_project(X, self.pca @ self.rotation, self.mean) >= 0).astype(np.uint8)


def fit_itq(X, n_bits: int, n_iter: int = 50, seed: int = 0) -> ITQ:
    X = _check_features(X, min_rows=2)
    n_bits = _check_bits(n_bits, X.shape[1], "ITQ")
    if not (isinstance(n_iter, (int, np.integer)) and n_iter >= 0):
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    mean = _mean(X)
    pca, _ = _top_eigenvectors(X, mean, n_bits)
    V = _project(X, pca, mean)
    rng = np.random.default_rng(seed)
    R = np.linalg.svd(rng.standard_normal((n_bits, n_bits)))[0]  # random orthogonal start
    losses = []
    v_sq = float(np.square(V).sum())
    for it in range(n_iter + 1):
        VR = V @ R
        B = np.where(VR >= 0, 1.0, -1.0)  # best B for this R
        # ||B - VR||^2 = ||B||^2 - 2 <B, VR> + ||VR||^2 = n K - 2 sum|VR| + ||V||^2 (R orthogonal)
        losses.append(B.size - 2.0 * float(np.abs(VR).sum()) + v_sq)
        if it == n_iter:
            break
        # orthogonal Procrustes: R = argmin ||B - V R||_F = U W^T for V^T B = U S W^T
        U, _, Wt = np.linalg.svd(V.T @ B)
        R = U @ Wt
    return ITQ(mean=mean, pca=pca, rotation=R, loss_history=np.array(losses))


# --------------------------------------------------------------------------- spectral hashing


@dataclass
class SpectralHashing:
    """Spectral hashing (reference ``trainSH``/``compressSH``): ``pc`` the principal directions,
    ``mn``/``mx`` the box of the projected training data, ``modes`` (n_bits, npca) the chosen
    eigenfunction frequencies (one non-zero entry per row), ``eigenvalues`` their (unnormalised)
    eigenvalues sum_i (m_i pi / (mx_i - mn_i))^2, increasing."""

    pc: np.ndarray  # (d, npca)
    mn: np.ndarray  # (npca,)
    mx: np.ndarray  # (npca,)
    modes: np.ndarray  # (n_bits, npca)
    eigenvalues: np.ndarray  # (n_bits,)

    @property
    def n_bits(self) -> int:
        return self.modes.shape[0]

    def eigenfunctions(self, X) -> np.ndarray:
        """The real-valued eigenfunctions U (n, n_bits) of ``compressSH``; codes are 1[U > 0]."""
        X = _check_features(X, d=self.pc.shape[0])
        Y = _project(X, self.pc) - self.mn
        omegas = self.modes * (np.pi / (self.mx - self.mn))  # (n_bits, npca)
        U = np.empty((X.shape[0], self.n_bits))
        for i in range(self.n_bits):
            # compressSH's product over every direction, over the directions whose mode is not zero: the
            # others give sin(0 + pi/2), exactly 1.0, so the product is the same to the bit (trainSH's modes
            # have one such direction each: at 128 bits on CIFAR-10, 0.6 s against 16.5 s for the database)
            on = np.flatnonzero(omegas[i])
            U[:, i] = np.prod(np.sin(Y[:, on] * omegas[i, on] + np.pi / 2), axis=1)
        return U

    def encode(self, X) -> np.ndarray:
        return (self.eigenfunctions(X) > 0).astype(np.uint8)


def fit_sh(X, n_bits: int) -> SpectralHashing:
    X = _check_features(X, min_rows=2)
    n_bits = _check_bits(n_bits)
    npca = min(n_bits, X.shape[1])
    # 1) PCA; the projection is of the uncentred data ("no need to remove the mean")
    pc, _ = _top_eigenvectors(X, _mean(X), npca)
    Y = _project(X, pc)
    # 2) fit a uniform distribution: the box [min - eps, max + eps] (MATLAB eps = 2^-52)
    eps = np.finfo(np.float64).eps
    mn = Y.min(axis=0) - eps
    mx = Y.max(axis=0) + eps
    # 3) enumerate the one-dimensional eigenfunctions, exactly as trainSH orders them
    R = mx - mn
    max_mode = np.ceil((n_bits + 1) * R / R.max()).astype(np.int64)
    n_modes = int(max_mode.sum() - len(max_mode) + 1)
    modes = np.ones((n_modes, npca), dtype=np.int64)
    m = 1
    for i in range(npca):
        modes[m:m + max_mode[i] - 1, i] = np.arange(2, max_mode[i] + 1)
        m += max_mode[i] - 1
    modes -= 1
    omegas = modes * (np.pi / R)
    eig = (omegas ** 2).sum(axis=1)
    order = np.argsort(eig, kind="stable")  # MATLAB sort(-eigVal) is stable, ascending
    chosen = order[1:n_bits + 1]  # skip the constant mode
    return SpectralHashing(pc=pc, mn=mn, mx=mx, modes=modes[chosen], eigenvalues=eig[chosen])


# --------------------------------------------------------------------------- registry


BASELINES = {"lsh": fit_lsh, "pcah": fit_pcah, "itq": fit_itq, "sh": fit_sh}


def fit_baseline(name: str, X, n_bits: int, seed: int = 0):
    """Fit a baseline by name ('lsh', 'pcah', 'itq', 'sh'); seed is used where randomness is
    involved (LSH, ITQ)."""
    key = name.lower()
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    if key in ("lsh", "itq"):
        return BASELINES[key](X, n_bits, seed=seed)
    return BASELINES[key](X, n_bits)
