"""What every dataset shares: samples, split logic, file checks, torch Datasets.

The per-dataset modules (voc.py, cityscapes.py, ...) only describe their
on-disk format: how to list the samples of a split, how to decode a label file
into class ids, the class names/colours and the pretraining image list. All
splitting, reading and checking lives here, once.

Every problem a user can cause (missing list, missing image, corrupt file,
wrong label encoding) raises :class:`~selmask_lib.errors.SelmaskError` with one
line that starts with the offending file, so the CLI can print it as is.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

from selmask_lib.data.cache import DecodedCache, no_cache
from selmask_lib.errors import SelmaskError
from selmask_lib.transforms import normalise_transform

SPLITS = ("train", "val", "test")
IGNORE_INDEX = 255
# The two weed datasets (Nassar 2020, Sugarbeets 2016) share the paper's three classes.
WEED_CLASS_NAMES = ("background", "crop", "weed")
WEED_CLASS_COLORS = ((0, 0, 0), (0, 128, 0), (128, 0, 0))

# A label decoder turns one label file into an int64 [H, W] array of class ids
# (IGNORE_INDEX for void).
LabelDecoder = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``id`` is a short name unique within the dataset."""

    id: str
    image_path: Path
    label_path: Path


@dataclass(frozen=True)
class DatasetInfo:
    """Class names and display colours (RGB 0-255) of a dataset."""

    name: str
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        if len(self.class_names) != len(self.class_colors):
            raise SelmaskError(
                f"dataset {self.name!r}: {len(self.class_names)} class names but "
                f"{len(self.class_colors)} class colours"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def palette_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The Pascal VOC colour palette (bit-interleaved class id), which gives
    distinct colours for any number of classes; VOC's own 21 colours are its
    first 21 entries."""
    colors = []
    for class_id in range(num_classes):
        r = g = b = 0
        c = class_id
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


# ---------------------------------------------------------------- class lists


def read_classes_yaml(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Read class names and colours, in class-id order, from a YAML file::

        classes:                 # (the list may also be the whole file)
          - name: background
            color: [0, 0, 0]     # optional: defaults to palette_colors()
          - crop                 # a bare name is fine too

    Other top-level keys (e.g. ``ignore_index``) are ignored.
    """
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SelmaskError(f"{path}: cannot read class list ({exc})") from None
    entries = content.get("classes") if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise SelmaskError(f"{path}: expected a list of classes under 'classes:'")

    defaults = palette_colors(len(entries))
    names, colors = [], []
    for class_id, entry in enumerate(entries):
        name, color = (entry.get("name"), entry.get("color")) if isinstance(entry, dict) else (entry, None)
        if not isinstance(name, str) or not name:
            raise SelmaskError(f"{path}: class {class_id} has no name")
        color = defaults[class_id] if color is None else color
        if not (isinstance(color, (list, tuple)) and len(color) == 3
                and all(isinstance(v, int) and 0 <= v <= 255 for v in color)):
            raise SelmaskError(f"{path}: colour of class {name!r} must be three integers 0-255, got {color}")
        names.append(name)
        colors.append(tuple(color))
    return tuple(names), tuple(colors)


# --------------------------------------------------------------- split logic


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise SelmaskError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")


def split_in_order(items: Sequence, fractions: Sequence[float]) -> list[list]:
    """Cut ``items`` into consecutive parts of the given fractions, in list order.

    Cut points are ``floor(n * cumulative fraction)``, as the authors' code
    slices ``items[:int(0.7 * n)]``, ``items[int(0.7 * n):int(0.8 * n)]`` and so
    on; the last part takes the rest.
    """
    if not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    n = len(items)
    cuts, total = [0], 0.0
    for fraction in fractions[:-1]:
        total += fraction
        cuts.append(int(n * total + 1e-9))  # 1e-9: 0.7 + 0.1 is 0.7999...
    cuts.append(n)
    return [list(items[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def seeded_split(items: Sequence, fractions: Sequence[float], seed: int) -> list[list]:
    """Shuffle a copy of ``items`` with ``seed``, then :func:`split_in_order`.

    ``random.Random`` is used (not torch) because its shuffle is stable across
    library versions, so a saved seed keeps naming the same split.
    """
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return split_in_order(shuffled, fractions)


def check_split_nonempty(samples: Sequence, dataset: str, split: str, where: Path | str) -> None:
    if len(samples) == 0:
        raise SelmaskError(f"{where}: the {split!r} split of dataset {dataset!r} is empty")


# -------------------------------------------------------------- list files


def list_entries(list_path: Path) -> list[str]:
    """The entries of a text list file: one a line, blank lines and ``#`` comments skipped.

    A file that is not text (binary, another encoding) is one error naming it.
    """
    try:
        text = Path(list_path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SelmaskError(f"{list_path}: not a text list of entries (byte {error.start} is not UTF-8)") from None
    except OSError as error:
        raise SelmaskError(f"{list_path}: cannot read the list ({error.strerror or error})") from None
    return [entry for entry in (line.strip() for line in text.splitlines()) if entry and not entry.startswith("#")]


def read_list_file(list_path: Path, make_sample: Callable[[str], Sample]) -> list[Sample]:
    """Read a split list (one entry a line, blank lines and ``#`` comments
    skipped) and turn each entry into a :class:`Sample` whose files exist."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise SelmaskError(f"{list_path}: split list not found")
    samples = [make_sample(entry) for entry in list_entries(list_path)]
    check_samples_exist(samples, f"{list_path}: entry")
    return samples


def check_samples_exist(samples: Sequence[Sample], what: str) -> None:
    """Every sample must have both files; ``what`` says where it came from."""
    for sample in samples:
        if not sample.image_path.is_file():
            raise SelmaskError(f"{what} {sample.id!r} has no image (expected {sample.image_path})")
        if not sample.label_path.is_file():
            raise SelmaskError(f"{what} {sample.id!r} has no label (expected {sample.label_path})")


# ------------------------------------------------------------- file reading


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, so that a corrupt or truncated file fails
    here with its name rather than later inside a DataLoader worker."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise SelmaskError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise SelmaskError(f"{path}: cannot read image, the file is corrupt or truncated ({exc})") from None


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB array (greyscale or RGBA files are converted)."""
    return np.array(open_image(path).convert("RGB"))


def read_index_label(path: Path, modes: Sequence[str] = ("P", "L")) -> np.ndarray:
    """Raw values of a single-channel label image, as stored (no colour lookup).

    Palette PNGs (mode "P") hold class ids as palette indices; reading them
    without ``convert("RGB")`` returns those ids. A colour (RGB) label here
    almost always means someone saved a visualisation instead of the label.
    """
    image = open_image(path)
    if image.mode not in modes:
        if image.mode in ("RGB", "RGBA"):
            problem = "is an RGB(A) colour image, but a single-channel class-index image was expected"
        else:
            problem = "has an unexpected pixel format"
        raise SelmaskError(f"{path}: label {problem} (PIL mode {image.mode}; expected one of {', '.join(modes)})")
    return np.array(image)


def check_label_values(label: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    valid = (label >= 0) & ((label < num_classes) | (label == ignore_index))
    if not valid.all():
        bad = np.unique(label[~valid])[:5].tolist()
        raise SelmaskError(
            f"{path}: label values {bad} are outside the {num_classes} classes 0..{num_classes - 1} "
            f"(and ignore value {ignore_index})"
        )


def unique_ids(paths: Sequence[Path]) -> list[str]:
    """File stems, or paths relative to the common folder (without suffix) when
    stems repeat, so that ids can name saved per-image artefacts safely."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = Path(os.path.commonpath([str(p) for p in paths]))
    return [p.relative_to(common).with_suffix("").as_posix() for p in paths]


def check_min_side(path: Path, height: int, width: int, min_side: int) -> None:
    if min(height, width) < min_side:
        raise SelmaskError(f"{path}: image is {width}x{height} px, too small: "
                           f"each side must be at least {min_side} px")


# ----------------------------------------------------------------- checking every file


def decode_each(check: Callable[[int], None], indices: Sequence[int], description: str) -> None:
    """Call ``check(index)`` for every index, behind a progress bar: the one loop of every pre-training check.

    The checks decode each file fully rather than read its header: a
    truncated JPEG has an intact header and fails only when its pixels are
    decoded, which is the failure this check exists to move before training.
    A full decode costs about one epoch of data loading without the
    augmentation, once per run start (the paper trains hundreds of epochs).
    """
    from selmask_lib.engine import progress  # lazy: the data layer does not need the engine otherwise

    for index in progress(indices, desc=description, leave=False):
        check(index)


# ----------------------------------------------------------------- datasets


def labels_fit_uint8(num_classes: int, ignore_index: int) -> bool:
    """Every label value of a dataset (class ids below ``num_classes``, and the ignore index) fits in uint8."""
    return num_classes <= 256 and 0 <= ignore_index <= 255


def segmentation_item(image: np.ndarray, label: np.ndarray, transform: Callable,
                      uint8_labels: bool = False) -> tuple[torch.Tensor, ...]:
    """``(image, label, *extra)`` of a segmentation sample: uint8 [H, W, 3] and class ids [H, W] through
    ``transform`` (extra: a deferred colour jitter's draws). The label is int64, or uint8 with
    ``uint8_labels`` (every value fits, and the batch is finished on the device: a worker sends class ids
    as an eighth of the bytes, and the loss takes them as int64 there).
    """
    image_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))  # [3, H, W] uint8
    mask_t = tv_tensors.Mask(torch.from_numpy(label))  # [H, W]
    image_t, mask_t, *extra = transform(image_t, mask_t)
    mask_t = mask_t.as_subclass(torch.Tensor)
    return image_t.as_subclass(torch.Tensor), mask_t.to(torch.uint8 if uint8_labels else torch.int64), *extra


class SegmentationDataset(Dataset):
    """Labelled images -> ``(image [3, H, W] float normalised, mask [H, W] int64)``.

    ``transform`` is a joint transform from :mod:`selmask_lib.transforms`
    called as ``transform(tv_tensors.Image uint8, tv_tensors.Mask int64)``;
    without one, images are only converted to float and normalised. Each item
    is checked when loaded (readable, same size as its label, label values
    known), which costs little next to decoding the files. ``cache`` keeps
    checked arrays in memory (:class:`~selmask_lib.data.cache.DecodedCache`;
    none by default): each file is then decoded and checked once per process.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        decode_label: LabelDecoder,
        num_classes: int,
        transform: Callable | None = None,
        ignore_index: int = IGNORE_INDEX,
        info: DatasetInfo | None = None,
        cache: DecodedCache | None = None,
    ):
        self.samples = list(samples)
        self.cache = cache if cache is not None else no_cache()
        self.decode_label = decode_label
        self.num_classes = num_classes
        self.transform = transform if transform is not None else normalise_transform()
        self.ignore_index = ignore_index
        self.info = info
        # Labels as uint8 where they fit, for batches the device finishes (fine-tuning with jitter_on_device
        # or uint8_batches sets it); else int64, the loss's dtype.
        self.sends_uint8_labels = False

    @property
    def ids(self) -> list[str]:
        return [sample.id for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels_fit_uint8(self) -> bool:
        """Every checked label value (class ids and the ignore index) fits in uint8."""
        return labels_fit_uint8(self.num_classes, self.ignore_index)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Checked raw arrays: uint8 image [H, W, 3], int64 class ids [H, W] (new arrays, the caller's to change)."""
        image, label = self.cache.get(index, lambda: self._decode_checked(index))
        return image.copy(), label.astype(np.int64)  # copies: the cache keeps its own

    def _decode_checked(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        image = read_rgb(sample.image_path)
        label = self.decode_label(sample.label_path)
        if label.shape != image.shape[:2]:
            (lh, lw), (ih, iw) = label.shape[:2], image.shape[:2]
            raise SelmaskError(
                f"{sample.label_path}: label is {lw}x{lh} px but its image {sample.image_path} is {iw}x{ih} px"
            )
        check_label_values(label, self.num_classes, self.ignore_index, sample.label_path)
        if self.labels_fit_uint8:
            label = label.astype(np.uint8)  # checked: every value fits; an eighth of the memory kept
        return image, label

    def check_all(self, indices: Sequence[int] | None = None, description: str = "checking data",
                  min_side: int = 1) -> None:
        """Decode every sample once (image, label, sizes, class ids): a bad file fails now, naming itself.

        Runs before the first epoch, so a bad label in the test split is
        found in seconds, not after hours of training. An image with a side
        shorter than ``min_side`` px is an error too.
        """
        def check(index: int) -> None:
            image, _ = self.load(index)
            check_min_side(self.samples[index].image_path, *image.shape[:2], min_side)

        decode_each(check, range(len(self)) if indices is None else indices, description)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return segmentation_item(*self.load(index), self.transform, self.sends_uint8_labels and self.labels_fit_uint8)


class UnlabelledImages(Dataset):
    """A pretraining pool: image paths -> float [3, H, W] in [0, 1].

    Images are *not* normalised: masking fills patches with the dataset mean
    colour first, and normalisation comes after. ``transform`` (optional) is
    called with one ``tv_tensors.Image`` (float [0, 1]). ``ids`` name the
    images (file stems) in a stable order, for saving per-image masks.
    ``cache`` keeps decoded uint8 images in memory
    (:class:`~selmask_lib.data.cache.DecodedCache`; none by default).
    """

    def __init__(self, paths: Sequence[Path], transform: Callable | None = None,
                 cache: DecodedCache | None = None):
        self.paths = [Path(p) for p in paths]
        self.ids = unique_ids(self.paths) if self.paths else []
        self.transform = transform
        self.cache = cache if cache is not None else no_cache()

    def decoded(self, index: int) -> np.ndarray:
        """Image ``index`` as decoded: uint8 [H, W, 3], kept by the cache (do not change it in place)."""
        return self.cache.get(index, lambda: read_rgb(self.paths[index]))

    def __len__(self) -> int:
        return len(self.paths)

    def check_all(self, indices: Sequence[int] | None = None, description: str = "checking images",
                  check_size: Callable[[Path, int, int], None] | None = None) -> None:
        """Decode every image once, so a corrupt file fails now naming itself, not inside a DataLoader worker.

        ``check_size(path, height, width)``, if given, judges each image's size
        (pretraining passes its patch-grid rule, ``pretrain_data.check_patch_size``).
        """
        def check(index: int) -> None:
            height, width = self.decoded(index).shape[:2]
            if check_size is not None:
                check_size(self.paths[index], height, width)

        decode_each(check, range(len(self)) if indices is None else indices, description)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(self.decoded(index)).permute(2, 0, 1)  # [3, H, W] uint8, the cache's
        image = tv_tensors.Image(image.float() / 255.0)  # a new tensor: the cached array is left as it is
        if self.transform is not None:
            image = self.transform(image)
        return image.as_subclass(torch.Tensor)
