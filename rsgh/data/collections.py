"""Caltech-256 (the official ``256_ObjectCategories.tar``, or a synthetic archive in its layout,
labelled as not official) and any labelled image folder or archive (``root/<class>/<image>``)."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..paths import data_root
from .archives import (IMAGE_EXTENSIONS, ImageDatasetWarning, ImageSet, check_image_size, decode_members,
                       file_md5, is_hidden, is_image_name, name_parts, open_reader, stack_images,
                       strip_common_top, warn_skipped, where_to_put)

CALTECH256_FILE = "256_ObjectCategories.tar"
CALTECH256_URL = "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar"
CALTECH256_MD5 = "67b4f42ca05d46448c6bb8ecd2220f6d"
CALTECH256_SIZE = 1_183_006_720


_CALTECH_FOLDER = re.compile(r"^(\d+)\.(.+)$")


def load_caltech256(root: str | os.PathLike | None = None, include_clutter: bool = False,
                    image_size: tuple[int, int] | None = None, pixels: int | None = None) -> ImageSet:
    """Caltech-256 from ``<root>/256_ObjectCategories.tar`` (folders ``NNN.name/`` inside
    ``256_ObjectCategories/``), read in place. Classes in folder-number order, labels 0..;
    ``257.clutter`` only with ``include_clutter``. Images converted to RGB; ``image_size = (h, w)``
    resizes with PIL bilinear (SPEC: 128 x 128 for GIST), otherwise a list of arrays of varying size
    is returned (memory-hungry for the full set). The md5 is checked when the file has the official
    size; any other archive is loaded as a custom one, with a warning and a ``source`` that says so.
    Non-image files are ignored; undecodable images are skipped with a warning."""
    image_size = check_image_size(image_size)
    path = data_root(root) / CALTECH256_FILE
    if not path.is_file():
        raise FileNotFoundError(where_to_put("Caltech-256 archive " + CALTECH256_FILE, path, CALTECH256_URL)
                                + f" (1.2 GB, md5 {CALTECH256_MD5}; it is not downloaded automatically)")
    md5 = file_md5(path)
    size = path.stat().st_size
    official = size == CALTECH256_SIZE
    if official and md5 != CALTECH256_MD5:
        raise ValueError(f"{path}: md5 is {md5}, expected {CALTECH256_MD5} (the official archive has this "
                         f"size); the file is corrupt: delete it and download it again from {CALTECH256_URL}")
    if not official:
        warnings.warn(f"{path} is not the official Caltech-256 archive ({size} bytes, official "
                      f"{CALTECH256_SIZE}); loading it as a custom archive in the same layout (md5 {md5})",
                      ImageDatasetWarning, stacklevel=2)
    with open_reader(path) as reader:
        names = [n for n in reader.names() if not is_hidden(name_parts(n))]
        images_named = [n for n in names if is_image_name(n)]
        if not images_named:
            raise ValueError(f"{path}: unknown layout: no images (expected "
                             "256_ObjectCategories/NNN.name/NNN_NNNN.jpg)")
        stripped = strip_common_top([name_parts(n) for n in images_named], 2)
        folders: dict[str, tuple[int, str]] = {}
        members: dict[str, list[str]] = {}
        for name, parts in zip(images_named, stripped):
            match = _CALTECH_FOLDER.match(parts[0]) if len(parts) == 2 else None
            if match is None:
                raise ValueError(f"{path}: unknown layout: member {name} is not "
                                 "256_ObjectCategories/NNN.name/<image>")
            folders[parts[0]] = (int(match.group(1)), match.group(2))
            members.setdefault(parts[0], []).append(name)
        numbers = [num for num, _ in folders.values()]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"{path}: unknown layout: two class folders share a number")
        ordered = sorted(folders, key=lambda f: folders[f][0])
        ordered = [f for f in ordered if include_clutter or folders[f][1] != "clutter"]
        class_names = [folders[f][1] for f in ordered]
        wanted = [(n, label) for label, f in enumerate(ordered) for n in sorted(members[f])]
        decoded, bad = decode_members(reader, [n for n, _ in wanted], image_size, skip_bad=True, pixels=pixels)
    warn_skipped(path, bad, "undecodable images")
    kept = [(n, label) for n, label in wanted if n in decoded]
    extras = ((["with clutter"] if include_clutter else [])
              + ([] if official else [f"non-official archive md5 {md5[:8]}"]))
    source = "Caltech-256" + (f" ({', '.join(extras)})" if extras else "")
    return ImageSet(stack_images([decoded.pop(n) for n, _ in kept]),
                    np.fromiter((label for _, label in kept), dtype=np.int64, count=len(kept)),
                    class_names, [n for n, _ in kept], source, md5)


# ----------------------------------------------------------------------------------------------
# Any image folder


def load_image_folder(path: str | os.PathLike, image_size: tuple[int, int] | None = None,
                      pixels: int | None = None) -> ImageSet:
    """Images in ``path/<class>/<image>``, or in a .tar / .tar.gz / .zip of that layout (a single
    top folder is allowed). Classes sorted by name (labels 0..), files sorted within a class. Any
    format PIL decodes; grey / RGBA / palette / CMYK converted to RGB. Undecodable files are
    skipped with a warning; files without an image extension are ignored with a warning. Mixed
    sizes give a list of arrays unless ``image_size = (h, w)`` is given. ``pixels``: the largest image
    accepted (width x height, from its header, before decoding; for pixel features). The checksum of a
    folder is the sha256 of its image files' names, sizes and bytes, hashed as they are read."""
    image_size = check_image_size(image_size)
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image folder or archive {path} does not exist: give a folder "
                                "<root>/<class>/<image> or a .tar/.tar.gz/.zip of one")
    with open_reader(path) as reader:
        names = [n for n in reader.names() if not is_hidden(name_parts(n))]
        images_named = [n for n in names if is_image_name(n)]
        others = [n for n in names if not is_image_name(n)]
        if not images_named:
            raise ValueError(f"{path}: no image files (by extension: {', '.join(IMAGE_EXTENSIONS)}); "
                             "expected the layout <root>/<class>/<image>")
        stripped = strip_common_top([name_parts(n) for n in images_named], 2)
        members: dict[str, list[str]] = {}
        for name, parts in zip(images_named, stripped):
            if len(parts) != 2:
                raise ValueError(f"{path}: unknown layout: image {name} is not at <class>/<image> (expected "
                                 "every image one folder deep, the folder naming its class)")
            members.setdefault(parts[0], []).append(name)
        class_names = sorted(members)
        wanted = [(n, label) for label, c in enumerate(class_names) for n in sorted(members[c])]
        digest = hashlib.sha256() if path.is_dir() else None  # a folder's identity: its images' bytes, as read
        decoded, bad = decode_members(reader, [n for n, _ in wanted], image_size, skip_bad=True, digest=digest,
                                      pixels=pixels)
    if others:
        warn_skipped(path, others, "files without an image extension")
    warn_skipped(path, bad, "undecodable files")
    kept = [(n, label) for n, label in wanted if n in decoded]
    if not kept:
        raise ValueError(f"{path}: none of the {len(wanted)} image files could be decoded")
    checksum = f"sha256:{digest.hexdigest()}" if digest is not None else file_md5(path)
    return ImageSet(stack_images([decoded.pop(n) for n, _ in kept]),
                    np.fromiter((label for _, label in kept), dtype=np.int64, count=len(kept)),
                    class_names, [n for n, _ in kept], f"image folder {path}", checksum)


# ----------------------------------------------------------------------------------------------
