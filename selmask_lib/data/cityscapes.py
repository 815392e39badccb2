"""Cityscapes on disk.

Layout (``root`` holds both folders; the zip names ``leftImg8bit_trainvaltest/``
and ``gtFine_trainvaltest/`` around them are accepted too)::

    leftImg8bit/{train,val,train_extra}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Splits (METHOD.md): the official train split, in order, is cut 80/20 into
train/val; the official val split is the test split (the official test labels
are not public). The order is the sorted file paths, unless
``leftImg8bit/train/train.txt`` exists: then its order is used (one
``<city>/<city>_<seq>_<frame>`` a line, the authors' list format), which lets a
run reproduce the authors' exact 80/20 cut.

Labels are the 34 ``labelIds``; they are mapped to the 19 evaluation
``trainIds`` through a lookup table, everything else (including ids 0-6 and
license plate -1, stored as 255) becomes the ignore value 255.
Pretraining pool (config key ``cityscapes_pool``): ``train`` = leftImg8bit
train + train_extra (train_extra optional), the kit's default, which keeps the
downstream val and test frames out of pretraining; ``all_fine_and_extra`` =
leftImg8bit train + val + test + train_extra, the authors' pool (METHOD.md
item 10: 5,000 + 19,997 = 24,997 frames, the downstream test frames included).
Each folder's frames are sorted, the folders follow in that order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selmask_lib.data.base import (
    IGNORE_INDEX,
    DatasetInfo,
    Sample,
    check_samples_exist,
    check_split,
    read_index_label,
    read_list_file,
    split_in_order,
)
from selmask_lib.errors import SelmaskError

NAME = "cityscapes"
# labelId -> (trainId, name, colour), the standard Cityscapes table.
LABEL_TABLE = {
    7: (0, "road", (128, 64, 128)),
    8: (1, "sidewalk", (244, 35, 232)),
    11: (2, "building", (70, 70, 70)),
    12: (3, "wall", (102, 102, 156)),
    13: (4, "fence", (190, 153, 153)),
    17: (5, "pole", (153, 153, 153)),
    19: (6, "traffic light", (250, 170, 30)),
    20: (7, "traffic sign", (220, 220, 0)),
    21: (8, "vegetation", (107, 142, 35)),
    22: (9, "terrain", (152, 251, 152)),
    23: (10, "sky", (70, 130, 180)),
    24: (11, "person", (220, 20, 60)),
    25: (12, "rider", (255, 0, 0)),
    26: (13, "car", (0, 0, 142)),
    27: (14, "truck", (0, 0, 70)),
    28: (15, "bus", (0, 60, 100)),
    31: (16, "train", (0, 80, 100)),
    32: (17, "motorcycle", (0, 0, 230)),
    33: (18, "bicycle", (119, 11, 32)),
}
CLASS_NAMES = tuple(name for _, name, _ in LABEL_TABLE.values())
CLASS_COLORS = tuple(color for _, _, color in LABEL_TABLE.values())

# One array lookup maps a whole uint8 labelIds image to trainIds.
TRAIN_ID_LUT = np.full(256, IGNORE_INDEX, dtype=np.int64)
for _label_id, (_train_id, _, _) in LABEL_TABLE.items():
    TRAIN_ID_LUT[_label_id] = _train_id

TRAIN_FRACTION = 0.8
# leftImg8bit folders of each pretraining pool, in list order (config key cityscapes_pool).
POOL_FOLDERS = {"train": ("train", "train_extra"), "all_fine_and_extra": ("train", "val", "test", "train_extra")}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def _folder(root: Path, name: str) -> Path:
    root = Path(root)
    for candidate in (root / name, root / f"{name}_trainvaltest" / name):
        if candidate.is_dir():
            return candidate
    raise SelmaskError(f"{root}: no {name}/ folder here (expected {root / name})")


def official_split(root: Path, folder: str) -> list[Sample]:
    """All labelled frames of an official split folder (``train`` or ``val``)."""
    image_dir = _folder(root, "leftImg8bit") / folder
    label_dir = _folder(root, "gtFine") / folder

    def make_sample(city_frame: str) -> Sample:  # "<city>/<city>_<seq>_<frame>"
        return Sample(
            Path(city_frame).name,
            image_dir / f"{city_frame}{IMAGE_SUFFIX}",
            label_dir / f"{city_frame}{LABEL_SUFFIX}",
        )

    list_path = image_dir / f"{folder}.txt"
    if list_path.is_file():
        return read_list_file(list_path, make_sample)
    if not image_dir.is_dir():
        raise SelmaskError(f"{image_dir}: Cityscapes split folder not found")
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    found = [make_sample(f"{p.parent.name}/{p.name[: -len(IMAGE_SUFFIX)]}") for p in images]
    check_samples_exist(found, f"{image_dir}: frame")
    return found


def info(root: Path | None = None) -> DatasetInfo:
    return DatasetInfo(NAME, CLASS_NAMES, CLASS_COLORS)


def samples(root: Path, split: str) -> list[Sample]:
    check_split(split)
    if split == "test":
        return official_split(root, "val")
    train, val = split_in_order(official_split(root, "train"), (TRAIN_FRACTION, 1 - TRAIN_FRACTION))
    return train if split == "train" else val


def decode_label(path: Path) -> np.ndarray:
    return TRAIN_ID_LUT[read_index_label(path, modes=("L", "P"))]


def pretraining_images(root: Path, pool: str = "train") -> list[Path]:
    if pool not in POOL_FOLDERS:
        raise SelmaskError(f"config key 'cityscapes_pool' must be one of {', '.join(POOL_FOLDERS)}; got {pool!r}")
    image_dir = _folder(root, "leftImg8bit")
    return [path for folder in POOL_FOLDERS[pool] for path in sorted(image_dir.glob(f"{folder}/*/*{IMAGE_SUFFIX}"))]
