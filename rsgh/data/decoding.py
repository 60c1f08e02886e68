"""Decoding images from their bytes, with what a received image may cost bounded before it is decoded.

- an image of more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` is undecodable (a decompression bomb);
- an image whose pixels (width x height x 3 bytes, read from its header) exceed 64 MiB plus
  ``$RSGH_MAX_DECODE_RATIO`` (default 200) times its encoded size is undecodable too: a few KB that
  decode to hundreds of MB (a blank 8000 x 8000 JPEG, 770 times) are a bomb, a photograph 5 to 50 times;
- a collection's decoded images together may take at most 64 MiB plus that ratio times the bytes read
  so far: a small archive of large blank images stops after a few of them, with a message, instead of
  filling the memory (the images of a training are all held at once);
- for pixel features, an image may have at most ``$RSGH_MAX_PIXELS`` pixels (default 512 x 512), read
  from its header before it is decoded: its pixels are the network's inputs.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Sequence

import numpy as np

from ..paths import env_positive_int

RATIO_VAR = "RSGH_MAX_DECODE_RATIO"
DEFAULT_RATIO = 200
SLACK = 64 << 20


def decode_ratio() -> int:
    return env_positive_int(RATIO_VAR, DEFAULT_RATIO)


PIXELS_VAR = "RSGH_MAX_PIXELS"
DEFAULT_PIXELS = 512 * 512  # pixel features of one image: 786,432 inputs, a 200 MB weight matrix at 64 bits


def max_pixels() -> int:
    """The largest image (width x height) whose pixels are features: ``$RSGH_MAX_PIXELS`` or 512 x 512."""
    return env_positive_int(PIXELS_VAR, DEFAULT_PIXELS)


def image_dims(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image, from its header alone (nothing decoded)."""
    from PIL import Image

    with no_bombs(), Image.open(io.BytesIO(data)) as probe:
        return probe.size


def pixel_bytes(data: bytes) -> int:
    """Bytes of the RGB array an encoded image decodes to, from its header alone (nothing decoded)."""
    width, height = image_dims(data)
    return width * height * 3


def _check_one(data: bytes) -> None:
    """A ValueError (an undecodable image) when the pixels are out of proportion to the encoded bytes."""
    need, ratio = pixel_bytes(data), decode_ratio()
    if need > SLACK + ratio * len(data):
        raise ValueError(f"too many pixels for its size: {need:,} bytes decoded from {len(data):,} (more than 64 MiB "
                         f"plus {ratio} times its size: a decompression bomb?); if it is genuine, raise {RATIO_VAR}")


_JPEG_EXT = (".jpg", ".jpeg")


@contextlib.contextmanager
def no_bombs():
    """PIL's decompression-bomb guard made strict: an image of more than ``Image.MAX_IMAGE_PIXELS``
    pixels (PIL only warns up to twice that) is a ``ValueError``, i.e. an undecodable image."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError(f"too many pixels for one image: {' '.join(str(err).split())}") from None


def image_mode(data: bytes) -> str:
    """The PIL mode of encoded image bytes, without decoding them (a decompression bomb is refused)."""
    from PIL import Image

    with no_bombs(), Image.open(io.BytesIO(data)) as probe:
        return probe.mode


def decode_image(data: bytes, name: str = "", image_size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, 3) from encoded bytes: grey, palette, RGBA (alpha dropped), CMYK, 16-bit grey
    converted to RGB; optionally resized to ``image_size = (h, w)`` with PIL bilinear. Raises
    ``OSError`` / ``ValueError`` (from PIL) for undecodable data, and a ``ValueError`` for an image
    of more than PIL's ``Image.MAX_IMAGE_PIXELS`` pixels, or of pixels out of proportion to its bytes
    (a decompression bomb)."""
    _check_one(data)
    with no_bombs():
        return _decode(data, name, image_size)


def _decode(data: bytes, name: str, image_size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    formats = ["JPEG"] if name.lower().endswith(_JPEG_EXT) else None
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except OSError:
        if formats is None:
            raise
        im = Image.open(io.BytesIO(data))  # a misnamed file
    with im:
        im.load()
        if im.mode.startswith("I;16"):
            im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
        elif im.mode in ("I", "F"):
            im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L")
        elif im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        elif im.mode in ("PA", "La"):
            im = im.convert("RGBA")
        if im.mode != "RGB":
            im = im.convert("RGB")
        if image_size is not None:
            h, w = image_size
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
        return np.array(im, dtype=np.uint8)


def check_image_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def decode_members(reader, members: Sequence[str], image_size, skip_bad: bool, digest=None, pixels: int | None = None,
                   ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode ``members`` of an ``rsgh.data.archives`` reader; undecodable ones are returned in a list when
    ``skip_bad``, else raise. The images kept together may take 64 MiB plus the decode ratio times the
    bytes read (a ValueError naming the archive and the limit, never skipped). ``digest`` (a hashlib
    object) is updated with each member's name, size and bytes as they are read. ``pixels``: the
    largest image (width x height) accepted, checked from its header before it is decoded (pixel
    features)."""
    decoded, bad = {}, []
    read = kept = 0
    ratio = decode_ratio()
    for name, data in reader.read(members):
        if digest is not None:
            digest.update(f"{name}\0{len(data)}\0".encode("utf-8", "surrogateescape") + data)
        read += len(data)
        if pixels is not None:
            _check_pixels(reader.path, name, data, pixels)
        kept += _kept_bytes(data, image_size)  # from the header: checked before the image is decoded
        if kept > SLACK + ratio * read:
            raise ValueError(f"{reader.path}: its images decode to more than {kept:,} bytes of pixels from {read:,} "
                             f"bytes read (more than 64 MiB plus {ratio} times: a decompression bomb?); if the images "
                             f"are genuine, raise {RATIO_VAR}=<ratio>")
        try:
            decoded[name] = decode_image(data, name, image_size)
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, EOFError, ...
            if not skip_bad:
                raise ValueError(f"{reader.path}: member {name} is not a decodable image ({err}); "
                                 "the archive is corrupt") from None
            bad.append(name)
    return decoded, bad


def _kept_bytes(data: bytes, image_size) -> int:
    """Bytes of the RGB array kept for an image (at ``image_size`` when given); 0 when its header is unreadable."""
    if image_size is not None:
        return image_size[0] * image_size[1] * 3
    try:
        return pixel_bytes(data)
    except Exception:  # undecodable: decode_image says so
        return 0


def _check_pixels(path, name: str, data: bytes, limit: int) -> None:
    try:
        width, height = image_dims(data)
    except Exception:  # undecodable: decode_image says so
        return
    if width * height > limit:
        raise ValueError(f"{path}: image {name} is {width} x {height} pixels; pixel features take at most {limit:,} "
                         f"pixels an image (they are the network's inputs): use features=gist (resized to image_size) "
                         f"or smaller images, or raise {PIXELS_VAR}")
