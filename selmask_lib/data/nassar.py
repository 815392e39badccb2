"""Nassar 2020 (weed mapping from an orthomosaic) on disk.

Layout (``root`` holds ``tiled_dataset/``)::

    tiled_dataset/train/data/<name>.png        RGB tile
    tiled_dataset/train/mask/<name>.png        0 background, 1 crop, 2 weed
    tiled_dataset/train/data_list/{train,val,test}.txt    one <name> a line
    pretrain_tiles/*.png                       pretraining tiles (see below)

Splits (METHOD.md): the official lists, but only the *first fifth* of the
train and val lists (all of test). The fifth is rounded down,
``entries[: len(entries) // 5]``, as in the authors' code: 1784/168/266
official entries give 356/33/266. Lists shorter than 5 entries therefore
give an empty split, which is reported as an error.

Pretraining pool: ``<root>/pretrain_tiles/*.png``, the 256 px tiles of the
orthomosaic written by :func:`tile_orthomosaic` (40,710 tiles for the full
orthomosaic). If that folder is absent, the pool falls back to the downstream
tiles ``tiled_dataset/train/data/*.png`` with a warning: that is a much
smaller pool than the paper's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from selmask_lib.data.base import (
    WEED_CLASS_COLORS,
    WEED_CLASS_NAMES,
    DatasetInfo,
    Sample,
    check_split,
    open_image,
    read_index_label,
    read_list_file,
)
from selmask_lib.errors import SelmaskError

NAME = "nassar"
CLASS_NAMES, CLASS_COLORS = WEED_CLASS_NAMES, WEED_CLASS_COLORS
DOWNSTREAM_FRACTION_DIVISOR = 5  # train/val use entries[: n // 5]
PRETRAIN_TILES = "pretrain_tiles"


def _tiled_dir(root: Path) -> Path:
    return Path(root) / "tiled_dataset" / "train"


def info(root: Path | None = None) -> DatasetInfo:
    return DatasetInfo(NAME, CLASS_NAMES, CLASS_COLORS)


def samples(root: Path, split: str) -> list[Sample]:
    check_split(split)
    tiled = _tiled_dir(root)

    def make_sample(entry: str) -> Sample:
        name = entry.removesuffix(".png")  # accept names with or without extension
        return Sample(name, tiled / "data" / f"{name}.png", tiled / "mask" / f"{name}.png")

    list_path = tiled / "data_list" / f"{split}.txt"
    entries = read_list_file(list_path, make_sample)
    if split == "test":
        return entries
    used = len(entries) // DOWNSTREAM_FRACTION_DIVISOR
    if used == 0:
        raise SelmaskError(
            f"{list_path}: has {len(entries)} entries but only its first fifth is used, so the split is empty"
        )
    return entries[:used]


def decode_label(path: Path) -> np.ndarray:
    return read_index_label(path, modes=("L", "P")).astype(np.int64)


def pretraining_images(root: Path) -> list[Path]:
    tile_dir = Path(root) / PRETRAIN_TILES
    if tile_dir.is_dir():
        return sorted(tile_dir.glob("*.png"))
    fallback = _tiled_dir(root) / "data"
    warnings.warn(
        f"{tile_dir} not found: pretraining on the downstream tiles in {fallback} instead "
        "(cut the orthomosaic with selmask_lib.data.nassar.tile_orthomosaic for the paper's pool)",
        stacklevel=2,
    )
    return sorted(fallback.glob("*.png"))


def tile_starts(length: int, tile: int) -> list[int]:
    """Tile offsets along one axis: every ``tile`` pixels, with the last tile
    shifted back to end exactly at the border (so it overlaps its neighbour
    instead of being cut short). 90599 x 29395 px at 256 -> 354 x 115 tiles."""
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_orthomosaic(image_path: Path, out_dir: Path, tile: int = 256) -> list[Path]:
    """Cut an orthomosaic into ``tile`` x ``tile`` RGB PNGs named
    ``<stem>_y<row>_x<col>.png`` (pixel offsets, zero-padded so that sorted
    order is row-major). Every tile is kept, including empty border areas, as
    the authors did. Returns the written paths."""
    image_path, out_dir = Path(image_path), Path(out_dir)
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # orthomosaics are legitimately huge
    try:
        mosaic = open_image(image_path).convert("RGB")
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    width, height = mosaic.size
    if width < tile or height < tile:
        raise SelmaskError(f"{image_path}: image is {width}x{height} px, smaller than one {tile} px tile")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for y in tile_starts(height, tile):
        for x in tile_starts(width, tile):
            path = out_dir / f"{image_path.stem}_y{y:06d}_x{x:06d}.png"
            mosaic.crop((x, y, x + tile, y + tile)).save(path)
            written.append(path)
    return written
