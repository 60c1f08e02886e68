"""GIST-512 (rsgh.gist) against torchgist, an independent port of the LMgist reference code."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsgh.data.gist import GistParams, _gist, gist

skdata = pytest.importorskip("skimage.data")
torchgist = pytest.importorskip("torchgist.models.models")
Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")  # inside torchgist

RTOL = 2e-5  # float32 on both sides; measured 4e-7 .. 3e-6


def photo(name: str, size: int | None = None) -> np.ndarray:
    """A scikit-image photograph as uint8, resized (PIL bilinear) to size x size if given."""
    img = getattr(skdata, name)()
    if size is not None:
        img = np.array(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return img


def reference(img: np.ndarray) -> np.ndarray:
    """torchgist's GIST of one uint8 image (H, W, 3) or (H, W) at its own size."""
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float()
    with torch.no_grad():
        return torchgist.GIST(image_size=tuple(rgb.shape[:2]))(chw).numpy()


def rel_err(ours, ref) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("name,size", [
    ("astronaut", 32), ("chelsea", 32), ("coffee", 32), ("rocket", 32),
    ("camera", 32),  # grey
    ("chelsea", 33),  # odd padded size
    ("rocket", 64), ("astronaut", 128), ("camera", 128),  # FFT route
])
def test_agrees_with_torchgist(name, size):
    img = photo(name, size)
    ours = gist(img[None])
    assert ours.shape == (1, 512) and ours.dtype == np.float32
    assert rel_err(ours[0], reference(img)) < RTOL


@pytest.mark.parametrize("method", ["dense", "fft"])
def test_both_routes_agree_with_torchgist(method):
    imgs = np.stack([photo("coffee", 32), photo("chelsea", 32)])
    ours = _gist(torch.from_numpy(imgs), GistParams(), (32, 32), torch.device("cpu"), 8, False, method=method)
    for i in range(len(imgs)):
        assert rel_err(ours[i], reference(imgs[i])) < RTOL


def test_image_size_resizes_like_torch_interpolate():
    """image_size resizes the grey image with torch bilinear + antialias; torchgist fed the
    same resize of the RGB image (resize and channel mean commute) must agree."""
    img = photo("coffee")[::6, ::6]  # 67 x 100, not square
    ours = gist(img[None], image_size=(32, 32))[0]
    chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None]
    small = F.interpolate(chw, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)[0]
    with torch.no_grad():
        ref = torchgist.GIST(image_size=(32, 32))(small).numpy()
    assert rel_err(ours, ref) < RTOL


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    photos = [photo(n, 32) for n in ("astronaut", "chelsea", "coffee", "rocket")]
    noise = list(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    return np.stack(photos + noise)


def test_batch_independence(batch):
    together = gist(batch)
    for i in (0, 3, 7):
        alone = gist(batch[i:i + 1])[0]
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-7)


def test_batch_size_invariance(batch):
    full = gist(batch)
    for bs in (1, 4):
        np.testing.assert_allclose(gist(batch, batch_size=bs), full, rtol=1e-5, atol=1e-7)


def test_torch_tensor_and_grey_input(batch):
    np.testing.assert_allclose(gist(torch.from_numpy(batch[:2])), gist(batch[:2]))
    grey = photo("camera", 32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_allclose(gist(grey[None]), gist(rgb[None]), rtol=1e-6, atol=1e-8)


def test_constant_image_gives_zeros():
    out = gist(np.full((2, 32, 32, 3), 7, np.uint8))
    assert np.all(out == 0)


def test_non_square_and_other_parameters():
    img = photo("rocket")[::8, ::8]  # 54 x 80
    out = gist(img[None], orientations_per_scale=(8, 4), number_blocks=3)
    assert out.shape == (1, 12 * 9) and np.all(np.isfinite(out)) and out.min() > 0


@pytest.mark.parametrize("images,msg", [
    (np.zeros((2, 32, 32, 3), np.float32), "must be uint8"),
    (np.full((2, 32, 32, 3), np.nan), "must be uint8"),
    (torch.zeros((2, 32, 32, 3)), "must be uint8"),
    (np.zeros((32, 32), np.uint8).tolist(), "numpy array or torch tensor"),
    (np.zeros((32, 32), np.uint8)[None, None], r"shape \(N, H, W, 3\)"),
    (np.zeros((32, 32, 3), np.uint8)[None, None], r"shape \(N, H, W, 3\)"),
    (np.zeros((2, 32, 32, 4), np.uint8), r"shape \(N, H, W, 3\)"),
    (np.zeros((32,), np.uint8), r"shape \(N, H, W, 3\)"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    (np.zeros((1, 3, 3, 3), np.uint8), "too small"),
])
def test_bad_inputs(images, msg):
    with pytest.raises(ValueError, match=msg):
        gist(images)


@pytest.mark.parametrize("kw,msg", [
    (dict(image_size=(32,)), "image_size"),
    (dict(image_size=(0, 32)), "image_size"),
    (dict(orientations_per_scale=()), "orientations_per_scale"),
    (dict(number_blocks=0), "number_blocks"),
    (dict(fc_prefilt=-1.0), "fc_prefilt"),
    (dict(boundary_extension=-1), "boundary_extension"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg):
        gist(np.zeros((1, 32, 32, 3), np.uint8), **kw)


def test_params_key():
    assert GistParams().key() == "gist-native-o8x4-b4-fc4-pad32"
    assert GistParams(image_size=(128, 128)).key() == "gist-128x128-o8x4-b4-fc4-pad32"
    assert GistParams(orientations_per_scale=(8, 6), fc_prefilt=2.5).key() == "gist-native-o8-6-b4-fc2p5-pad32"
    assert GistParams().n_features == 512
    with pytest.raises(AttributeError):
        GistParams().number_blocks = 3


def test_feature_cache_is_keyed_on_the_code(tmp_path, monkeypatch):
    """Features computed by another version of gist.py are not reused."""
    from rsgh.data import features

    monkeypatch.setenv("RSGH_CACHE", str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    first = features.gist_features(images, "abc", progress=False)
    np.testing.assert_allclose(first, gist(images, progress=False))
    assert len(list((tmp_path / "features").glob("*.npy"))) == 1
    features.gist_features(images, "abc", progress=False)
    assert len(list((tmp_path / "features").glob("*.npy"))) == 1  # read back, not recomputed
    monkeypatch.setattr(features, "code_digest", lambda *m: "another-version")
    features.gist_features(images, "abc", progress=False)
    assert len(list((tmp_path / "features").glob("*.npy"))) == 2


def test_threads_give_the_same_features_in_the_same_rows(batch, monkeypatch):
    """Several threads (each chunk in a Python thread of its own), with the filters two at a time and a
    last group of one (17 filters), give each image in its own row the features that one image alone
    gets, in one thread with all 17 filters in one product; torch's thread count is restored afterwards."""
    from rsgh.data import gist as gist_module

    monkeypatch.setattr(gist_module, "_CPU_CHUNK_BYTES", 3 * 2**20)  # a few images a chunk: many chunks
    kw = dict(orientations_per_scale=(8, 6, 3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(gist_module, "_CPU_FILTERS_AT_ONCE", 17)
        gist_module._gabor_plan.cache_clear()
        alone = np.concatenate([gist(batch[i:i + 1], **kw) for i in range(len(batch))])
        monkeypatch.setattr(gist_module, "_CPU_FILTERS_AT_ONCE", 2)
        gist_module._gabor_plan.cache_clear()
        assert [len(K[0, 0, 0]) // 32 for K in gist_module._gabor_plan(32, 32, (8, 6, 3), 4, 32, "cpu", "dense").K] \
            == [2] * 8 + [1]
        torch.set_num_threads(3)
        together = gist(batch, batch_size=7, **kw)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert together.shape == (len(batch), 17 * 16)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-7)
