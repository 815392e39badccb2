"""Sugarbeets 2016 (Bonn agricultural robot dataset) on disk.

Layout (``root`` is ``ijrr_sugarbeets_2016_annotations/``, which holds one
folder per recording day)::

    <day>/images/rgb/<frame>.png                     RGB frame
    <day>/annotations/dlp/iMapCleaned/<frame>.png    16-bit label
    weed_frames.txt                                  downstream list (see below)

Labels are 16-bit: 0 background, 10000 sugar beet (crop), any value above
10000 a weed species. The values 1 and 97 also occur and are background in
the authors' conversion; any other value in 1..9999 is reported as an error.

``weed_frames.txt`` lists the downstream frames, one label path relative to
``root`` a line (a leading "/" is ignored, so the authors' own
``sugarbeets_weeds.txt`` can be used as is). Its frames are split 70/10/20
into train/val/test in list order (METHOD.md: 757 frames with weeds).
:func:`write_weed_list` builds such a list from the labels.

The config key ``split_list`` names another list file, e.g. the authors' own
list kept outside the dataset (METHOD.md item 11: their shuffle had no seed,
so only their file gives their test frames). Its entries are matched to the
labels by frame name (file stem), so label paths from any machine, relative
paths or bare frame names all work; the 70/10/20 cut follows its order.

Pretraining pool: every ``<day>/images/rgb/*.png`` (12,330 frames).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from selmask_lib.config import PAPER_SEED
from selmask_lib.data.base import (
    WEED_CLASS_COLORS,
    WEED_CLASS_NAMES,
    SPLITS,
    DatasetInfo,
    Sample,
    check_samples_exist,
    check_split,
    read_index_label,
    read_list_file,
    split_in_order,
)
from selmask_lib.errors import SelmaskError

NAME = "sugarbeets"
CLASS_NAMES, CLASS_COLORS = WEED_CLASS_NAMES, WEED_CLASS_COLORS
LIST_FILE = "weed_frames.txt"
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
LABEL_PART = "annotations/dlp/iMapCleaned"
IMAGE_PART = "images/rgb"
CROP_VALUE = 10000
BACKGROUND_VALUES = (0, 1, 97)  # 1 and 97: background in the authors' conversion
LABEL_MODES = ("I;16", "I;16L", "I;16B", "I")  # 16-bit PNG as Pillow reports it


def image_path_for(label_path: Path) -> Path:
    """The RGB frame of a label: same path, other folder."""
    return Path(Path(label_path).as_posix().replace(LABEL_PART, IMAGE_PART))


def info(root: Path | None = None) -> DatasetInfo:
    return DatasetInfo(NAME, CLASS_NAMES, CLASS_COLORS)


def samples(root: Path, split: str, split_list: Path | None = None) -> list[Sample]:
    """The ``split`` part of the downstream list: ``<root>/weed_frames.txt``, or ``split_list`` if given."""
    check_split(split)
    root = Path(root)
    if split_list is None:
        def make_sample(entry: str) -> Sample:
            label_path = root / entry.lstrip("/")
            return Sample(label_path.stem, image_path_for(label_path), label_path)

        frames = read_list_file(root / LIST_FILE, make_sample)
    else:
        frames = frames_of_list(root, Path(split_list))
    return split_in_order(frames, SPLIT_FRACTIONS)[SPLITS.index(split)]


def frames_of_list(root: Path, list_path: Path) -> list[Sample]:
    """The samples a user's list names, in its order, each found under ``root`` by its frame name.

    Matching by stem, not by path: the authors' list holds label paths of
    their own machine. Every entry must name a labelled frame of ``root``.
    """
    if not list_path.is_file():
        raise SelmaskError(f"config key 'split_list': {list_path} not found")
    labels: dict[str, Path] = {}
    for label_path in sorted(root.glob(f"*/{LABEL_PART}/*.png")):
        if label_path.stem in labels:
            raise SelmaskError(f"{label_path}: frame name {label_path.stem!r} also labels {labels[label_path.stem]}; "
                               f"split_list entries cannot tell them apart")
        labels[label_path.stem] = label_path
    entries = [line.strip() for line in list_path.read_text().splitlines()]
    stems = [Path(entry).stem for entry in entries if entry and not entry.startswith("#")]
    repeated = next((stem for i, stem in enumerate(stems) if stem in stems[:i]), None)
    if repeated is not None:
        raise SelmaskError(f"{list_path}: entry {repeated!r} is listed twice")
    missing = [stem for stem in stems if stem not in labels]
    if missing:
        raise SelmaskError(f"{list_path}: entry {missing[0]!r} is not a labelled frame under "
                           f"{root}/*/{LABEL_PART}/ ({len(missing)} of {len(stems)} entries missing)")
    frames = [Sample(stem, image_path_for(labels[stem]), labels[stem]) for stem in stems]
    check_samples_exist(frames, f"{list_path}: entry")
    return frames


def decode_label(path: Path) -> np.ndarray:
    raw = read_index_label(path, modes=LABEL_MODES).astype(np.int64)
    unknown = (raw < CROP_VALUE) & ~np.isin(raw, BACKGROUND_VALUES)
    if unknown.any():
        bad = np.unique(raw[unknown])[:5].tolist()
        raise SelmaskError(
            f"{path}: label values {bad} are not background (0), crop ({CROP_VALUE}) or weed (>{CROP_VALUE})"
        )
    label = np.zeros_like(raw)
    label[raw == CROP_VALUE] = 1
    label[raw > CROP_VALUE] = 2
    return label


def pretraining_images(root: Path) -> list[Path]:
    return sorted(Path(root).glob(f"*/{IMAGE_PART}/*.png"))


def write_weed_list(root: Path, seed: int = PAPER_SEED) -> Path:
    """Write ``<root>/weed_frames.txt``: every labelled frame with at least one
    weed pixel, shuffled with ``seed``. The authors shuffled theirs (without a
    seed) before the in-order 70/10/20 cut; shuffling keeps recording days
    mixed across the splits. Returns the list path."""
    root = Path(root)
    label_paths = sorted(root.glob(f"*/{LABEL_PART}/*.png"))
    weed_frames = [p.relative_to(root).as_posix() for p in label_paths if (decode_label(p) == 2).any()]
    if not weed_frames:
        raise SelmaskError(f"{root}: no label under */{LABEL_PART}/ contains weed pixels")
    random.Random(seed).shuffle(weed_frames)
    list_path = root / LIST_FILE
    list_path.write_text("\n".join(weed_frames) + "\n")
    return list_path
