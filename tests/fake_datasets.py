"""Tiny on-disk trees in each real dataset format, for tests.

Every image is ``HEIGHT`` x ``WIDTH`` (40 x 48) px. Each ``make_*_tree(root)``
writes the tree under ``root`` and returns ``root``; the module constants say
what was written (split sizes, raw label stripes and the class ids they must
decode to), so tests can check exact values.

Labels are 8 vertical stripes of 6 px: stripe ``i`` holds ``*_RAW[i]`` in the
file, which must decode to ``*_EXPECTED[i]``. Images are seeded noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 40, 48
STRIPE = WIDTH // 8

# VOC: palette PNG, index = class id, 255 void border.
VOC_RAW = [0, 1, 5, 20, 255, 0, 15, 3]
VOC_EXPECTED = VOC_RAW
VOC_SIZES = {"train": 4, "val": 2, "test": 2, "pretrain": 8}  # 2 VOC2012 images are unlabelled

# Cityscapes labelIds -> trainIds (0, 1, 4 are ignored ids; 255 is how -1 is stored).
CITYSCAPES_RAW = [0, 1, 4, 7, 8, 26, 33, 255]
CITYSCAPES_EXPECTED = [255, 255, 255, 0, 1, 13, 18, 255]
CITYSCAPES_SIZES = {"train": 4, "val": 1, "test": 2, "pretrain": 7}  # 5 official train -> 4/1; 2 train_extra
# Pretraining pool per cityscapes_pool: 5 train + 2 train_extra; + 2 val + 1 official test (unlabelled) frames.
CITYSCAPES_POOL_SIZES = {"train": 7, "all_fine_and_extra": 10}

# Nassar: 0 background, 1 crop, 2 weed, stored as is.
NASSAR_RAW = [0, 1, 2, 0, 1, 2, 0, 0]
NASSAR_EXPECTED = NASSAR_RAW
NASSAR_LISTS = {"train": 10, "val": 5, "test": 2}
NASSAR_SIZES = {"train": 2, "val": 1, "test": 2, "pretrain": 16}  # first fifth of train/val; 4x4 tiles
NASSAR_MOSAIC = (100, 120)  # height, width; tiled at NASSAR_TILE px
NASSAR_TILE = 32

# Sugarbeets: 16-bit, 0/1/97 background, 10000 crop, >10000 weed.
SUGARBEETS_RAW = [0, 10000, 10001, 10002, 1, 97, 0, 10000]
SUGARBEETS_EXPECTED = [0, 1, 2, 2, 0, 0, 0, 1]
SUGARBEETS_SIZES = {"train": 7, "val": 1, "test": 2, "pretrain": 14}  # 10 weed frames; +2 no-weed, +2 unlabelled
SUGARBEETS_DAYS = ("CKA_160523", "CKA_160531")

# Folder: class-id PNG masks, 3 classes in classes.yaml.
FOLDER_RAW = [0, 1, 2, 255, 0, 1, 2, 0]
FOLDER_EXPECTED = FOLDER_RAW
FOLDER_SIZES = {"train": 7, "val": 1, "test": 2, "pretrain": 12}  # 10 labelled 70/15/15; +2 unlabelled
FOLDER_CLASSES = ("soil", "crop", "weed")


def stripes(values, dtype=np.uint8) -> np.ndarray:
    """[HEIGHT, WIDTH] array of 8 vertical stripes holding ``values``."""
    return np.repeat(np.asarray(values, dtype=dtype), STRIPE)[None, :].repeat(HEIGHT, axis=0)


def random_rgb(seed: int, height: int = HEIGHT, width: int = WIDTH) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def palette_png(label: np.ndarray) -> Image.Image:
    """A mode "P" image whose palette indices are ``label`` (the VOC encoding)."""
    from selmask_lib.data.base import palette_colors

    image = Image.fromarray(label.astype(np.uint8))  # mode "L"
    image.putpalette([v for color in palette_colors(256) for v in color])  # "L" -> "P", indices kept
    return image


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _write_list(path: Path, entries) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{entry}\n" for entry in entries))


def make_voc_tree(root: Path) -> Path:
    root = Path(root)
    label = palette_png(stripes(VOC_RAW))
    seed = 0
    for year, splits in (("VOC2012", {"train": 4, "val": 2}), ("VOC2007", {"test": 2})):
        year_dir = root / "VOCdevkit" / year
        for split, count in splits.items():
            ids = [f"{year[3:]}_{split}_{i:03d}" for i in range(count)]
            _write_list(year_dir / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
            for sample_id in ids:
                seed += 1
                _save(random_rgb(seed), year_dir / "JPEGImages" / f"{sample_id}.jpg")
                _save(label, year_dir / "SegmentationClass" / f"{sample_id}.png")
    for i in range(2):  # unlabelled VOC2012 images: pretraining only
        _save(random_rgb(100 + i), root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"2012_unlabelled_{i}.jpg")
    return root


def make_cityscapes_tree(root: Path) -> Path:
    root = Path(root)
    label = Image.fromarray(stripes(CITYSCAPES_RAW), "L")
    frames = {
        "train": ["aachen", "aachen", "aachen", "bochum", "bochum"],
        "val": ["frankfurt", "frankfurt"],
        "test": ["berlin"],  # the official test frames: public images, no public labels
        "train_extra": ["augsburg", "augsburg"],
    }
    seed = 0
    for folder, cities in frames.items():
        for i, city in enumerate(cities):
            seed += 1
            stem = f"{city}/{city}_{i:06d}_000019"
            _save(random_rgb(seed), root / "leftImg8bit" / folder / f"{stem}_leftImg8bit.png")
            if folder in ("train", "val"):
                _save(label, root / "gtFine" / folder / f"{stem}_gtFine_labelIds.png")
    return root


def make_nassar_tree(root: Path) -> Path:
    from selmask_lib.data.nassar import tile_orthomosaic

    root = Path(root)
    tiled = root / "tiled_dataset" / "train"
    label = Image.fromarray(stripes(NASSAR_RAW), "L")
    seed = 0
    for split, count in NASSAR_LISTS.items():
        names = [f"{split}_tile_{i:03d}" for i in range(count)]
        _write_list(tiled / "data_list" / f"{split}.txt", names)
        for name in names:
            seed += 1
            _save(random_rgb(seed), tiled / "data" / f"{name}.png")
            _save(label, tiled / "mask" / f"{name}.png")
    mosaic_path = root / "orthomosaic" / "mosaic.png"
    _save(random_rgb(999, *NASSAR_MOSAIC), mosaic_path)
    tile_orthomosaic(mosaic_path, root / "pretrain_tiles", tile=NASSAR_TILE)
    return root


def make_sugarbeets_tree(root: Path) -> Path:
    root = Path(root)
    weed_label = Image.fromarray(stripes(SUGARBEETS_RAW, np.uint16))
    crop_only = Image.fromarray(stripes([0, 10000] * 4, np.uint16))
    weed_frames, seed = [], 0
    for day in SUGARBEETS_DAYS:
        for i in range(7):  # 5 weed frames, 1 crop-only frame, 1 unlabelled frame per day
            seed += 1
            frame = f"bonirob_{day}_frame{i}.png"
            _save(random_rgb(seed), root / day / "images" / "rgb" / frame)
            label_rel = f"{day}/annotations/dlp/iMapCleaned/{frame}"
            if i < 5:
                _save(weed_label, root / label_rel)
                weed_frames.append(label_rel)
            elif i == 5:
                _save(crop_only, root / label_rel)
    _write_list(root / "weed_frames.txt", weed_frames)
    return root


def make_folder_tree(root: Path) -> Path:
    root = Path(root)
    mask = Image.fromarray(stripes(FOLDER_RAW), "L")
    for i in range(12):
        suffix = ".jpg" if i == 3 else ".png"
        _save(random_rgb(i + 1), root / "images" / f"field_{i:02d}{suffix}")
        if i < 10:  # the last two have no mask: pretraining only
            _save(mask, root / "masks" / f"field_{i:02d}.png")
    colors = [[0, 0, 0], [0, 128, 0], [128, 0, 0]]
    (root / "classes.yaml").write_text(
        "classes:\n" + "".join(f"  - name: {n}\n    color: {c}\n" for n, c in zip(FOLDER_CLASSES, colors))
    )
    return root
