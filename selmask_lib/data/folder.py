"""Your own data: a plain folder of images and class-id masks.

Layout::

    images/<stem>.{png,jpg,jpeg,tif,tiff}   RGB images
    masks/<stem>.png                        single-channel, pixel value = class id, 255 = ignore
    classes.yaml                            optional: class names and colours
    splits/{train,val,test}.txt             optional: one <stem> a line

Splits: if ``splits/`` exists its lists are used as they are; otherwise the
images that have a mask are shuffled with ``seed`` (0 unless given) and cut
70/15/15. Without ``classes.yaml`` the number of classes is the largest mask
value (ignoring 255) plus one, found by reading every mask (slow for large
folders: add a ``classes.yaml``), and the classes are named ``class_0``,
``class_1``, ...

Pretraining pool: every image in ``images/``, with or without a mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selmask_lib.data.base import (
    IGNORE_INDEX,
    SPLITS,
    DatasetInfo,
    Sample,
    check_split,
    palette_colors,
    read_classes_yaml,
    read_index_label,
    read_list_file,
    seeded_split,
)
from selmask_lib.errors import SelmaskError

NAME = "folder"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_SEED = 0


def _image_paths(root: Path) -> dict[str, Path]:
    """stem -> image path, for every image in ``images/``."""
    image_dir = Path(root) / "images"
    if not image_dir.is_dir():
        raise SelmaskError(f"{image_dir}: image folder not found")
    found: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in found:
                raise SelmaskError(f"{path}: two images share the name {path.stem!r} ({found[path.stem].name})")
            found[path.stem] = path
    return found


def _make_sample(root: Path, images: dict[str, Path], stem: str) -> Sample:
    # A missing image gets a placeholder path that spells out what was looked
    # for; read_list_file reports it.
    missing = Path(root) / "images" / f"{stem}.{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}}"
    return Sample(stem, images.get(stem, missing), Path(root) / "masks" / f"{stem}.png")


def _labelled_samples(root: Path) -> list[Sample]:
    root = Path(root)
    images = _image_paths(root)
    mask_dir = root / "masks"
    if not mask_dir.is_dir():
        raise SelmaskError(f"{mask_dir}: mask folder not found")
    masks = sorted(mask_dir.glob("*.png"))
    for mask in masks:
        if mask.stem not in images:
            raise SelmaskError(f"{mask}: mask has no image (expected {root / 'images' / mask.stem}.png/.jpg/.tif)")
    return [_make_sample(root, images, mask.stem) for mask in masks]


def info(root: Path) -> DatasetInfo:
    root = Path(root)
    classes_path = root / "classes.yaml"
    if classes_path.is_file():
        names, colors = read_classes_yaml(classes_path)
        return DatasetInfo(NAME, names, colors)
    largest = 0
    for sample in _labelled_samples(root):
        values = decode_label(sample.label_path)
        values = values[values != IGNORE_INDEX]
        largest = max(largest, int(values.max()) if values.size else 0)
    num_classes = max(largest + 1, 2)
    return DatasetInfo(NAME, tuple(f"class_{i}" for i in range(num_classes)), palette_colors(num_classes))


def samples(root: Path, split: str, seed: int = DEFAULT_SEED) -> list[Sample]:
    check_split(split)
    root = Path(root)
    if (root / "splits").is_dir():
        images = _image_paths(root)
        return read_list_file(root / "splits" / f"{split}.txt", lambda stem: _make_sample(root, images, stem))
    parts = seeded_split(_labelled_samples(root), SPLIT_FRACTIONS, seed)
    return parts[SPLITS.index(split)]


def decode_label(path: Path) -> np.ndarray:
    return read_index_label(path, modes=("L", "P")).astype(np.int64)


def pretraining_images(root: Path) -> list[Path]:
    return list(_image_paths(root).values())
