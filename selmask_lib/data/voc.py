"""Pascal VOC on disk (also the format of the embedded synthetic dataset).

Layout (``root`` is the folder holding ``VOCdevkit/``, or ``VOCdevkit`` itself)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png       palette PNG, index = class id, 255 void
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    VOCdevkit/VOC2007/...                               same, with ImageSets/Segmentation/test.txt

Splits (METHOD.md): train = VOC2012 seg train, val = VOC2012 seg val,
test = VOC2007 seg test. Pretraining pool = every VOC2012 JPEG image.
VOC2007 is only needed when the test split is asked for.

A VOC-style tree with other classes may carry ``<root>/classes.yaml``
(format: :func:`selmask_lib.data.base.read_classes_yaml`); it replaces the 21
VOC classes. The synthetic dataset relies on this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selmask_lib.data.base import (
    DatasetInfo,
    Sample,
    check_split,
    palette_colors,
    read_classes_yaml,
    read_index_label,
    read_list_file,
)
from selmask_lib.errors import SelmaskError

NAME = "voc"
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CLASS_COLORS = palette_colors(len(CLASS_NAMES))  # the standard VOC palette
# Which VOC year holds each split.
SPLIT_YEARS = {"train": "VOC2012", "val": "VOC2012", "test": "VOC2007"}


def devkit_dir(root: Path) -> Path:
    """Accept both ``<root>/VOCdevkit`` and ``VOCdevkit`` itself as ``root``."""
    root = Path(root)
    if (root / "VOCdevkit").is_dir():
        return root / "VOCdevkit"
    if (root / "VOC2012").is_dir() or (root / "VOC2007").is_dir():
        return root
    raise SelmaskError(f"{root}: no VOCdevkit/ folder here (expected {root / 'VOCdevkit' / 'VOC2012'})")


def info(root: Path | None = None, name: str = NAME) -> DatasetInfo:
    """The 21 VOC classes, unless ``classes.yaml`` sits beside ``VOCdevkit/``."""
    if root is not None:
        root = Path(root)
        candidates = [root / "classes.yaml", devkit_dir(root).parent / "classes.yaml"]
        for path in candidates:
            if path.is_file():
                names, colors = read_classes_yaml(path)
                return DatasetInfo(name, names, colors)
    return DatasetInfo(name, CLASS_NAMES, CLASS_COLORS)


def samples(root: Path, split: str) -> list[Sample]:
    check_split(split)
    year_dir = devkit_dir(root) / SPLIT_YEARS[split]
    list_path = year_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not year_dir.is_dir():
        raise SelmaskError(f"{list_path}: split list not found ({year_dir.name} is needed for the {split} split)")

    def make_sample(entry: str) -> Sample:
        return Sample(entry, year_dir / "JPEGImages" / f"{entry}.jpg", year_dir / "SegmentationClass" / f"{entry}.png")

    return read_list_file(list_path, make_sample)


def decode_label(path: Path) -> np.ndarray:
    """Palette indices are the class ids (255 = void): no colour lookup."""
    return read_index_label(path, modes=("P", "L")).astype(np.int64)


def pretraining_images(root: Path) -> list[Path]:
    image_dir = devkit_dir(root) / "VOC2012" / "JPEGImages"
    return sorted(image_dir.glob("*.jpg"))


def download_voc(root: Path) -> Path:
    """Download VOC2012 trainval and the VOC2007 test set with torchvision
    (online users only; never called by the tests). Returns ``root``, ready
    for :func:`samples`. The Oxford mirror is often slow or down; the archives
    can also be fetched by hand and unpacked into ``root``."""
    from torchvision.datasets import VOCSegmentation

    root = Path(root)
    VOCSegmentation(str(root), year="2012", image_set="trainval", download=True)
    VOCSegmentation(str(root), year="2007", image_set="test", download=True)
    return root
