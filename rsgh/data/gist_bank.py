"""LMgist's building blocks as numpy float64 arrays, computed once per image size by
:mod:`rsgh.data.gist`: MATLAB's symmetric padding, the Gabor filter bank of ``createGabor.m``, the
1-D factor of ``prefilt.m``'s Gaussian low-pass and ``downN``'s block averages."""

from __future__ import annotations

import math

import numpy as np

# Matrix entries smaller than this are set to zero: the Gabor transfer functions decay to
# ~1e-300, and float32 subnormal numbers make CPU matrix products ~10x slower. The change is
# far below float32 resolution.
_TINY = 1e-30


def symmetric_pad_index(n: int, pre: int, post: int) -> np.ndarray:
    """Indices into a length-``n`` axis that MATLAB's ``padarray(x, .., 'symmetric')`` reads.

    The edge sample is repeated (``x[1] x[0] | x[0] x[1] ... x[n-1] | x[n-1] x[n-2]``); padding
    wider than ``n`` keeps mirroring, as MATLAB (and torchgist) do.
    """
    mirror = np.concatenate([np.arange(n), np.arange(n)[::-1]])
    return mirror[np.remainder(np.arange(-pre, n + post), 2 * n)]


def frequencies(n: int) -> np.ndarray:
    """``fftshift(-n/2 : n/2-1)``: the integer frequency of each FFT bin, as LMgist builds it.

    For odd ``n`` this follows torchgist's ``arange(-n//2, n//2)`` (MATLAB would use half
    integers there); CIFAR-10 and the usual sizes give even padded sizes.
    """
    return np.fft.fftshift(np.arange(-n // 2, n // 2, dtype=np.float64))


def gabor_bank(orientations_per_scale, height: int, width: int) -> np.ndarray:
    """The Gabor transfer functions of ``createGabor.m`` on a (height, width) FFT grid.

    Returns an array (n_filters, height, width), scales from fine to coarse, orientations
    ``pi / n * j``. Filter ``(i, j)`` is ``exp(-3.5 (f_r / (width f_i) - 1)^2 - 2 pi a_i t^2)``
    with ``f_i = 0.3 / 1.85^i``, ``a_i = 16 n_i^2 / 32^2`` and ``t`` the angle distance, wrapped to
    [-pi, pi]. The radial frequency is normalised by the width only, as in LMgist.
    """
    fy = frequencies(height)[:, None]
    fx = frequencies(width)[None, :]
    fr = np.sqrt(fx**2 + fy**2)
    angle = np.arctan2(fy, fx)  # angle(fx + i fy)
    filters = []
    for i, n in enumerate(orientations_per_scale):
        f0 = 0.3 / 1.85**i
        a = 16 * n**2 / 32**2
        for j in range(n):
            tr = angle + np.pi / n * j
            tr = tr + 2 * np.pi * (tr < -np.pi) - 2 * np.pi * (tr > np.pi)
            filters.append(np.exp(-10 * 0.35 * (fr / width / f0 - 1) ** 2 - 2 * a * np.pi * tr**2))
    return np.stack(filters)


def lowpass_matrix(n: int, fc: float) -> np.ndarray:
    """(n x n) real matrix ``C`` with ``C @ v = real(ifft(fft(v) * g))``, the 1-D factor of
    prefilt.m's separable Gaussian ``gf = fftshift(exp(-(fx^2 + fy^2) / s1^2))``."""
    s1 = fc / math.sqrt(math.log(2))
    g = np.exp(-frequencies(n) ** 2 / s1**2)
    dft = np.fft.fft(np.eye(n), axis=0)
    return np.real(np.fft.ifft(g[:, None] * dft, axis=0))


def block_bounds(n: int, blocks: int) -> list[int]:
    """downN's block edges ``fix(linspace(0, n, blocks + 1))`` in exact integer arithmetic."""
    return [(i * n) // blocks for i in range(blocks + 1)]


def pooling_matrix(n: int, blocks: int) -> np.ndarray:
    """(blocks x n) matrix whose rows average the samples of each downN block."""
    edges = block_bounds(n, blocks)
    P = np.zeros((blocks, n))
    for i in range(blocks):
        P[i, edges[i]:edges[i + 1]] = 1.0 / (edges[i + 1] - edges[i])
    return P


def clean(a: np.ndarray) -> np.ndarray:
    """``a`` in float64 with the entries below _TINY in magnitude set to zero."""
    a = np.array(a, dtype=np.float64)
    a[np.abs(a) < _TINY] = 0.0
    return a
