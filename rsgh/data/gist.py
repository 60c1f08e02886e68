"""GIST-512: the Oliva-Torralba scene descriptor, batched, as in the LMgist reference code.

The descriptor of one image, following ``LMgist.m`` step by step:

1. grey = mean of the R, G, B channels; resized (optionally) to ``image_size``; intensities
   scaled to [0, 255] (``img - min``, then ``* 255 / max``);
2. prefilter (``prefilt.m``, fc = 4): ``log(1 + img)``, whitened by subtracting a Gaussian
   low-pass, then divided by ``0.2 + `` the local standard deviation (a low-pass of the square);
3. the prefiltered image is padded by 32 pixels (MATLAB ``padarray(..., 'symmetric')``) and
   filtered, in the Fourier domain, by a bank of Gabor-like transfer functions: 4 scales x 8
   orientations (``createGabor.m``);
4. the magnitude of each of the 32 filtered images, cropped back to the image, is averaged on a
   4 x 4 grid of blocks (``downN``): 32 filters x 16 blocks = 512 values, ordered as MATLAB's
   ``reshape`` does: filter (scale-major, then orientation), then block column, then block row.

Everything here is linear algebra on precomputed matrices, batched over images (float64 up to
the prefilter's output, which is cheap and makes the result ~10x closer to an exact float64
LMgist; float32 for the Gabor stage):

* the prefilter's Gaussian is separable, so padding, low-pass and cropping become small matrix
  products on each side of the image (exactly the circular FFT filtering LMgist does);
* for small images (CIFAR-10's 32 x 32) the Gabor stage is two dense products. With
  ``U = L_h @ x`` (vertical padding and DFT), row ``r`` of the filtered spectrum, taken back
  along the horizontal axis and cropped, is ``U[r] @ K[r]``, where ``K[r] = L_w^T diag(G[:, r, :]) B_w``
  folds the horizontal padding and DFT, row ``r`` of the filters and the cropped inverse DFT
  into one (W x 32 W) matrix; the cropped inverse DFT along the vertical axis is then one large
  GEMM over all images and filters. About 50 MFLOP per 32 x 32 image, at GEMM speed. On a CPU
  the filters go two at a time over chunks of a few hundred images, so that each product's
  output stays in the cache and each ``K`` is read once per chunk (all 32 filters at once over
  31 images read ``K``'s 50 MB for every 31 images: measured 2.0 against 1.6 ms an image, one thread);
* for larger images (e.g. Caltech-256 at 128 x 128) the Gabor stage uses batched FFTs
  (``fft2`` once, then per filter a product and an inverse FFT pruned to the cropped area).

Both routes agree with ``torchgist`` (a direct float32 port of LMgist) to about 1e-6 relative,
which is torchgist's own float32 rounding: against a float64 run of torchgist we differ by ~1e-7.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .gist_bank import clean, gabor_bank, lowpass_matrix, pooling_matrix, symmetric_pad_index

__all__ = ["GistParams", "gist", "gabor_bank", "prefilter", "block_average"]

# Working-memory budget of one inner chunk of images (intermediate tensors): on a CPU about 250
# images of 32 x 32 (the fastest of 32 to 1,024, in turns with 1 to 32 filters at a time).
_CPU_CHUNK_BYTES = 48 * 2**20
_GPU_CHUNK_BYTES = 1 * 2**30
# Filters of the dense route per pair of products on a CPU (on a GPU, all at once).
_CPU_FILTERS_AT_ONCE = 2
# The dense (matrix) Gabor route is used while its precomputed matrices stay below this size.
_MAX_DENSE_BYTES = 80 * 2**20


@dataclass(frozen=True)
class GistParams:
    """The parameters that determine a GIST descriptor (recorded beside feature files)."""

    image_size: tuple[int, int] | None = None  # (height, width); None = native size
    orientations_per_scale: tuple[int, ...] = (8, 8, 8, 8)
    number_blocks: int = 4
    fc_prefilt: float = 4.0
    boundary_extension: int = 32

    def __post_init__(self):
        size = self.image_size
        if size is not None:
            if (not isinstance(size, (tuple, list)) or len(size) != 2
                    or not all(_is_int(s) and s >= 1 for s in size)):
                raise ValueError(f"image_size must be None or a pair of positive ints (height, width), got {size!r}")
            object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        ops = self.orientations_per_scale
        if (not isinstance(ops, (tuple, list)) or len(ops) == 0
                or not all(_is_int(o) and o >= 1 for o in ops)):
            raise ValueError(f"orientations_per_scale must be a non-empty tuple of positive ints, got {ops!r}")
        object.__setattr__(self, "orientations_per_scale", tuple(int(o) for o in ops))
        if not _is_int(self.number_blocks) or self.number_blocks < 1:
            raise ValueError(f"number_blocks must be a positive int, got {self.number_blocks!r}")
        if not isinstance(self.fc_prefilt, (int, float)) or not math.isfinite(self.fc_prefilt) or self.fc_prefilt <= 0:
            raise ValueError(f"fc_prefilt must be a positive number, got {self.fc_prefilt!r}")
        object.__setattr__(self, "fc_prefilt", float(self.fc_prefilt))
        if not _is_int(self.boundary_extension) or self.boundary_extension < 0:
            raise ValueError(f"boundary_extension must be an int >= 0, got {self.boundary_extension!r}")

    @property
    def n_filters(self) -> int:
        return sum(self.orientations_per_scale)

    @property
    def n_features(self) -> int:
        return self.n_filters * self.number_blocks**2

    def key(self) -> str:
        """A short stable string for file names, e.g. ``gist-native-o8x4-b4-fc4-pad32``."""
        size = "native" if self.image_size is None else f"{self.image_size[0]}x{self.image_size[1]}"
        ops = self.orientations_per_scale
        o = f"o{ops[0]}x{len(ops)}" if len(set(ops)) == 1 else "o" + "-".join(map(str, ops))
        fc = f"{self.fc_prefilt:g}".replace(".", "p")
        return f"gist-{size}-{o}-b{self.number_blocks}-fc{fc}-pad{self.boundary_extension}"

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------------
# Precomputed plans (one per image size, parameters and device)
# ----------------------------------------------------------------------------------------------

class _PrefilterPlan:
    """prefilt.m as matrices: pad (5, symmetric) -> pad to an even square n -> separable
    Gaussian low-pass -> crop, for one (height, width)."""

    def __init__(self, height: int, width: int, fc: float, device, w: int = 5):
        sn, sm = height + 2 * w, width + 2 * w
        n = max(sn, sm)
        n += n % 2
        # the two padarray calls of prefilt.m, composed: rows/cols of the n x n padded image
        rows = symmetric_pad_index(height, w, w)[symmetric_pad_index(sn, 0, n - sn)]
        cols = symmetric_pad_index(width, w, w)[symmetric_pad_index(sm, 0, n - sm)]
        C = clean(lowpass_matrix(n, fc))
        t = functools.partial(torch.tensor, dtype=torch.float64, device=device)
        self.rows, self.cols = torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)
        self.C = t(C)
        self.C_rows, self.C_cols = t(C[w:w + height]), t(C[w:w + width])  # low-pass + crop
        self.w, self.height, self.width = w, height, width


def prefilter(images: torch.Tensor, fc: float = 4.0) -> torch.Tensor:
    """LMgist's prefilter on a batch (B, H, W) of grey images in [0, 255]: local contrast
    normalisation of ``log(1 + img)``. Computed in float64; returns float64 (B, H, W)."""
    B, H, W = images.shape
    return _prefilter(images.to(torch.float64), _prefilter_plan(H, W, float(fc), str(images.device)))


@functools.lru_cache(maxsize=8)
def _prefilter_plan(height, width, fc, device) -> _PrefilterPlan:
    return _PrefilterPlan(height, width, fc, device)


def _prefilter(img: torch.Tensor, plan: _PrefilterPlan) -> torch.Tensor:
    z = torch.log(img + 1)
    P = z[:, plan.rows][:, :, plan.cols]  # symmetric padding to n x n
    out = P - plan.C @ P @ plan.C.T  # whitening: img - real(ifft2(fft2(img) .* gf))
    # local contrast: sqrt(|ifft2(fft2(out.^2) .* gf)|), only where the crop keeps it
    localstd = torch.sqrt(torch.abs(plan.C_rows @ (out * out) @ plan.C_cols.T))
    w = plan.w
    return out[:, w:w + plan.height, w:w + plan.width] / (0.2 + localstd)


class _GaborPlan:
    """The Gabor stage for one image size: padding by ``boundary_extension``, filtering by the
    bank, magnitude, cropping and block averaging."""

    def __init__(self, height, width, orientations, blocks, be, device, method):
        self.height, self.width, self.be, self.blocks = height, width, be, blocks
        self.hp, self.wp = height + 2 * be, width + 2 * be
        G = clean(gabor_bank(orientations, self.hp, self.wp))  # (nf, hp, wp)
        self.nf = G.shape[0]
        self.method = method
        t = functools.partial(torch.tensor, dtype=torch.float32, device=device)
        self.pool_rows = t(pooling_matrix(height, blocks))  # (N, H)
        self.pool_cols = t(pooling_matrix(width, blocks))  # (N, W)
        rows = symmetric_pad_index(height, be, be)
        cols = symmetric_pad_index(width, be, be)
        if method == "dense":
            H, W, hp, wp, nf = height, width, self.hp, self.wp, self.nf
            pad_rows = np.eye(H)[rows]  # (hp, H): padarray along the rows, as a matrix
            pad_cols = np.eye(W)[cols]  # (wp, W)
            L_rows = np.fft.fft(pad_rows, axis=0)  # (hp, H): pad then DFT, along the rows
            L_cols = np.fft.fft(pad_cols, axis=0)  # (wp, W)
            inv_rows = np.fft.ifft(np.eye(hp), axis=0)[be:be + H, :]  # (H, hp): cropped inverse DFT
            inv_cols = np.fft.ifft(np.eye(wp), axis=0)[:, be:be + W]  # (wp, W)
            # K[r, v, n, w] = sum_c L_cols[c, v] G[n, r, c] inv_cols[c, w]
            K = np.einsum("cv,nrc,cw->rvnw", L_cols, G, inv_cols, optimize=True)  # (hp, W, nf, W)
            # real forms: [Re U, Im U] @ K_re = Re(U K), [Re U, Im U] @ K_im = Im(U K)
            K_re = clean(np.concatenate([K.real, -K.imag], axis=1))  # (hp, 2W, nf, W)
            K_im = clean(np.concatenate([K.imag, K.real], axis=1))
            # per group of filters, contiguous: (2 = [K_re, K_im], hp, 2W, filters W)
            self.at_once = nf if torch.device(device).type != "cpu" else min(_CPU_FILTERS_AT_ONCE, nf)
            self.K = [t(np.stack([part[:, :, n:n + self.at_once].reshape(hp, 2 * W, -1) for part in (K_re, K_im)]))
                      for n in range(0, nf, self.at_once)]  # the last group may hold fewer filters
            self.L_rows = t(clean(np.concatenate([L_rows.real, L_rows.imag], axis=0)))  # (2 hp, H)
            self.inv_rows = t(clean(np.block([[inv_rows.real, -inv_rows.imag],
                                               [inv_rows.imag, inv_rows.real]])))  # (2H, 2hp)
        else:
            self.rows = torch.as_tensor(rows, device=device)
            self.cols = torch.as_tensor(cols, device=device)
            self.G = torch.tensor(G, dtype=torch.complex64, device=device)

    def bytes_per_image(self) -> int:
        if self.method == "dense":  # U and its copy, then per group of filters T, Y and |Y| (float32)
            f, hp, H, W = self.at_once, self.hp, self.height, self.width
            return 4 * (4 * hp * W + 2 * hp * f * W + 3 * H * f * W + self.nf * self.blocks**2)
        return 8 * 3 * self.hp * self.wp * min(self.nf, 8)

    def energies(self, x: torch.Tensor) -> torch.Tensor:
        """Prefiltered images (B, H, W) -> block-averaged Gabor magnitudes (B, nf, N, N)
        indexed [image, filter, block row, block column]."""
        if self.method == "dense":
            return self._energies_dense(x)
        return self._energies_fft(x)

    def _pool(self, mag: torch.Tensor) -> torch.Tensor:
        # downN: mean over each block = pool_rows @ mag @ pool_cols^T
        return self.pool_rows @ mag @ self.pool_cols.T

    def _energies_fft(self, x):
        B = x.shape[0]
        H, W, be = self.height, self.width, self.be
        padded = x[:, self.rows][:, :, self.cols]  # padarray(img, [be be], 'symmetric')
        X = torch.fft.fft2(padded)[:, None]  # (B, 1, hp, wp)
        out = []
        for g in torch.split(self.G, 8):  # a few filters at a time bounds the memory
            Z = X * g  # (B, g, hp, wp)
            # ifft2, pruned: only the columns, then the rows, that survive the crop
            T = torch.fft.ifft(Z, dim=-1)[..., be:be + W]
            Y = torch.fft.ifft(T, dim=-2)[..., be:be + H, :]
            Y = torch.view_as_real(Y)
            mag = torch.sqrt(Y[..., 0] ** 2 + Y[..., 1] ** 2)  # |Y| (complex abs is slow on CPU)
            out.append(self._pool(mag))
        return torch.cat(out, dim=1)

    def _energies_dense(self, x):
        B = x.shape[0]
        H, W, hp, nf, N = self.height, self.width, self.hp, self.nf, self.blocks
        # U = DFT of the row-padded image along the rows: (2 hp, B W) = [Re; Im]
        U = self.L_rows @ x.permute(1, 0, 2).reshape(H, B * W)
        U = U.view(2, hp, B, W).permute(1, 2, 0, 3).reshape(hp, B, 2 * W)  # (hp, B, [Re U, Im U])
        out = x.new_empty(N, B, nf, N)
        n = 0
        for K in self.K:  # a group of f filters
            f = K.shape[-1] // W
            # stage 1, per spectrum row r: T[r] = U[r] @ K[r]  (padding, column DFT, filters, crop)
            T = x.new_empty(2, hp, B, f * W)
            torch.bmm(U, K[0], out=T[0])
            torch.bmm(U, K[1], out=T[1])
            # stage 2: cropped inverse DFT along the rows, one GEMM for all images and these filters
            Y = self.inv_rows @ T.view(2 * hp, B * f * W)  # (2H, B f W) = [Re; Im]
            mag = torch.mul(Y[:H], Y[:H]).addcmul_(Y[H:], Y[H:]).sqrt_()  # |Y|, (H, B f W)
            pooled = (self.pool_rows @ mag).view(-1, W) @ self.pool_cols.T  # (N, B f, N)
            out[:, :, n:n + f] = pooled.view(N, B, f, N)
            n += f
        return out.permute(1, 2, 0, 3)


def _choose_method(height, width, nf, be) -> str:
    """Dense matrices while they stay small (CIFAR-10's 32 x 32: 50 MB), FFTs above."""
    hp = height + 2 * be
    dense_bytes = 2 * 4 * hp * 2 * width * nf * width  # K_re and K_im
    return "dense" if dense_bytes <= _MAX_DENSE_BYTES else "fft"


@functools.lru_cache(maxsize=4)
def _gabor_plan(height, width, orientations, blocks, be, device, method) -> _GaborPlan:
    return _GaborPlan(height, width, orientations, blocks, be, device, method)


def block_average(x: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """LMgist's ``downN``: means of (..., H, W) over a blocks x blocks grid -> (..., blocks, blocks).
    Block edges are ``fix(linspace(0, H, blocks + 1))``, so uneven sizes give uneven blocks."""
    H, W = x.shape[-2:]
    t = functools.partial(torch.tensor, dtype=x.dtype, device=x.device)
    return t(pooling_matrix(H, blocks)) @ x @ t(pooling_matrix(W, blocks)).T


# ----------------------------------------------------------------------------------------------
# The public entry point
# ----------------------------------------------------------------------------------------------

def _check_images(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (0-255 pixel values), got dtype {images.dtype}")
        if not images.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on those
            images = images.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (0-255 pixel values), got dtype {images.dtype}")
        tensor = images
    else:
        raise ValueError(f"images must be a uint8 numpy array or torch tensor, got {type(images).__name__}")
    if tensor.ndim not in (3, 4) or (tensor.ndim == 4 and tensor.shape[-1] != 3):
        raise ValueError(f"images must have shape (N, H, W, 3) (RGB) or (N, H, W) (grey), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError("images is empty (N = 0): expected at least one image of shape (H, W, 3) or (H, W)")
    if min(tensor.shape[1:3]) < 1:
        raise ValueError(f"images have an empty side, shape {tuple(tensor.shape)}")
    return tensor


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def gist(images, *, image_size=None, orientations_per_scale=(8, 8, 8, 8), number_blocks=4,
         fc_prefilt=4.0, boundary_extension=32, batch_size=1024, device=None, progress=False) -> np.ndarray:
    """GIST descriptors of a batch of images, as LMgist computes them.

    Args:
        images: uint8 array or tensor, (N, H, W, 3) RGB or (N, H, W) grey.
        image_size: None to keep the native size, or (height, width): the grey image is then
            resized with ``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
            align_corners=False)`` before the [0, 255] scaling (LMgist's order: grey, resize,
            scale). This is a plain resize (no aspect-preserving crop as LMgist's imresizecrop).
        orientations_per_scale, number_blocks, fc_prefilt, boundary_extension: LMgist's
            ``param`` fields; the defaults give GIST-512.
        batch_size: images moved to the device and processed per step (memory use of the
            inner products is bounded separately).
        device: torch device; None picks CUDA when available, else the CPU.
        progress: show a tqdm progress bar over batches.

    Uses torch's current thread count: on a CPU with several, as many chunks of images at once,
    each in a Python thread computing with one (torch's count is set back afterwards). On the
    2-core development machine (AMD EPYC), CIFAR-10's 60,000 images took 63 s with two threads
    (116 CPU-s; 84 s and 167 CPU-s before the chunks went to threads and the filters two at a time).

    Returns:
        float32 array (N, n_filters * number_blocks**2), ordered filter (scale, orientation),
        block column, block row, as LMgist's output. A constant image gives zeros (LMgist
        would divide by zero).
    """
    params = GistParams(image_size, orientations_per_scale, number_blocks, fc_prefilt, boundary_extension)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    tensor = _check_images(images)
    N, H0, W0 = tensor.shape[:3]
    H, W = params.image_size or (H0, W0)
    if min(H, W) < number_blocks:
        raise ValueError(f"images of {H}x{W} pixels are too small for a {number_blocks}x{number_blocks} grid of blocks")
    dev = _resolve_device(device)
    return _gist(tensor, params, (H, W), dev, batch_size, progress, method=None)


def _gist(tensor, params: GistParams, size, dev, batch_size, progress, method=None) -> np.ndarray:
    """The batched computation (``method``: None = automatic, "dense" or "fft", for tests)."""
    H, W = size
    pre = _prefilter_plan(H, W, params.fc_prefilt, str(dev))
    method = method or _choose_method(H, W, params.n_filters, params.boundary_extension)
    plan = _gabor_plan(H, W, params.orientations_per_scale, params.number_blocks,
                       params.boundary_extension, str(dev), method)
    budget = _GPU_CHUNK_BYTES if dev.type == "cuda" else _CPU_CHUNK_BYTES
    chunk = max(1, min(batch_size, budget // plan.bytes_per_image()))
    N = tensor.shape[0]
    out = np.empty((N, params.n_features), dtype=np.float32)

    def features(grey: torch.Tensor, at: int) -> None:  # a chunk of grey images, written at out[at:]
        with torch.inference_mode():  # thread-local: entered in each thread
            x = _prefilter(grey, pre).to(torch.float32)
            g = plan.energies(x)  # (b, nf, block row, block column)
            # MATLAB column-major reshape: filter, then block column, then block row
            out[at:at + len(g)] = g.transpose(2, 3).reshape(len(g), -1).cpu().numpy()

    starts = range(0, N, batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, total=len(starts), unit="batch", desc="GIST")
    # On a CPU with several threads, the chunks go to as many Python threads, each one computing
    # with one thread (torch releases the GIL in its kernels): these products are too small for
    # torch's own threads (measured on 2 cores: 0.95-1.05 against 1.3 ms an image); torch's thread
    # count is restored afterwards. An image's features do not depend on its chunk (to float32 rounding).
    threads = torch.get_num_threads() if dev.type == "cpu" else 1
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        if pool is not None:
            torch.set_num_threads(1)
        with torch.inference_mode():
            for start in starts:
                batch = tensor[start:start + batch_size].to(dev, non_blocking=True)
                grey = batch.to(torch.float64)  # float64 until the prefilter's output (cheap)
                if grey.ndim == 4:
                    grey = grey.mean(dim=-1)  # grey = mean of R, G, B
                if grey.shape[1:] != (H, W):
                    grey = F.interpolate(grey[:, None], size=(H, W), mode="bilinear",
                                         align_corners=False, antialias=True)[:, 0]
                # scale to [0, 255] per image, as LMgist: img - min, then 255 * img / max
                grey = grey - grey.amin(dim=(1, 2), keepdim=True)
                top = grey.amax(dim=(1, 2), keepdim=True)
                grey = grey * torch.where(top > 0, 255 / top, torch.zeros_like(top))
                # equal chunks of at most ``chunk`` images, ``threads`` of them per round
                n = len(grey)
                rounds = -(-n // (chunk * threads))
                size = -(-n // (rounds * threads))
                chunks = [(grey[i:i + size], start + i) for i in range(0, n, size)]
                if pool is None:
                    for args in chunks:
                        features(*args)
                else:
                    list(pool.map(lambda args: features(*args), chunks))
    finally:
        if pool is not None:
            pool.shutdown()
            torch.set_num_threads(threads)
    return out
