"""The embedded default dataset: a small synthetic segmentation set written as a VOC tree.

Why it exists
-------------
The paper's datasets (Pascal VOC, Cityscapes, Nassar 2020, Sugarbeets 2016) are
large downloads. Every command of the kit must also run out of the box, on one
CPU core, in seconds. This module writes a small dataset, drawn from a seed,
that is a fair miniature of the paper's setting, exactly like Pascal VOC so the
ordinary VOC loader (``selmask_lib.data.voc``) reads it with no special case.

What is drawn
-------------
:mod:`selmask_lib.data.synthetic_scenes` draws each image and its label map
(the classes, their shapes and frequencies are listed there). Labels are saved
as palette ('P') PNGs with the VOC colour map, 255 = void.

Tree written
------------
::

    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg          train + val + unlabelled
    <root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png   train + val labels
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    <root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg          test
    <root>/VOCdevkit/VOC2007/SegmentationClass/<id>.png
    <root>/VOCdevkit/VOC2007/ImageSets/Segmentation/test.txt
    <root>/classes.yaml          class names and RGB colours, index order
    <root>/SYNTHETIC_INFO.json   seed, parameters, counts, versions

As in real VOC, the pretraining pool (all of ``VOC2012/JPEGImages``) is larger
than the labelled split: the ``unl_*`` images appear in no list.

Where it is cached, and how to regenerate
-----------------------------------------
:func:`ensure_synthetic_voc` uses ``$SELMASK_DATA_DIR/synthetic`` when the
environment variable ``SELMASK_DATA_DIR`` is set, otherwise
``~/.cache/selmask/synthetic``. It generates only when the tree is missing or
its ``SYNTHETIC_INFO.json`` does not match the requested seed and parameters
(or was written by another generator version). To regenerate by hand, delete
the directory or call :func:`generate_synthetic_voc`, which always writes.
Generation goes to a temporary sibling directory that is renamed into place
only when complete, so an interrupted run never leaves a tree that looks
finished.

Determinism: every image is a pure function of (seed, split, index), see
:func:`selmask_lib.data.synthetic_scenes.draw_sample`. The same seed gives
byte-identical label PNGs and JPEGs (with the same Pillow/zlib/libjpeg).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from selmask_lib import __version__ as _SELMASK_VERSION
from selmask_lib.data.base import IGNORE_INDEX, palette_colors
from selmask_lib.data.synthetic_scenes import CLASS_NAMES, NUM_CLASSES, draw_sample
from selmask_lib.errors import SelmaskError

# Bump when the drawing code (synthetic_scenes.py) changes, so cached trees are regenerated.
GENERATOR_VERSION = 1

INFO_FILE = "SYNTHETIC_INFO.json"
CLASSES_FILE = "classes.yaml"

#: Default sizes: a few seconds on one CPU core, big enough to train on.
DEFAULTS: dict = dict(n_train=120, n_val=40, n_test=40, n_unlabelled=400, image_size=(64, 128))
#: Tiny parameter set for tests: ``ensure_synthetic_voc(tmp_path, **SMALL)``.
SMALL: dict = dict(n_train=12, n_val=4, n_test=4, n_unlabelled=24, image_size=(48, 64))

_ID_PREFIX = {"train": "train", "val": "val", "test": "test", "unlabelled": "unl"}

#: RGB label colours in index order (the VOC palette entries 0..NUM_CLASSES-1).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = palette_colors(NUM_CLASSES)


# --------------------------------------------------------------------------- writing
def _save_label(label: np.ndarray, path: Path, palette_bytes: bytes) -> None:
    """Write a palette ('P') PNG with the VOC colour map, as VOC labels are."""
    h, w = label.shape
    image = Image.frombytes("P", (w, h), np.ascontiguousarray(label).tobytes())
    image.putpalette(palette_bytes)
    image.save(path, format="PNG")


def _params(seed: int, n_train: int, n_val: int, n_test: int, n_unlabelled: int,
            image_size: tuple[int, int]) -> dict:
    """Validate the arguments and return them as a JSON-comparable dict."""
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test),
                        ("n_unlabelled", n_unlabelled)):
        if not isinstance(value, (int, np.integer)) or value < (0 if name == "n_unlabelled" else 1):
            raise SelmaskError(f"synthetic dataset: argument {name}={value!r} must be an integer >= "
                               f"{0 if name == 'n_unlabelled' else 1}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SelmaskError(f"synthetic dataset: argument seed={seed!r} must be a non-negative integer")
    try:
        lo, hi = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise SelmaskError(f"synthetic dataset: argument image_size={image_size!r} "
                           "must be a pair (lo, hi)") from None
    if not 32 <= lo <= hi <= 1024:
        raise SelmaskError(f"synthetic dataset: argument image_size={image_size!r} "
                           "needs 32 <= lo <= hi <= 1024")
    return {"seed": int(seed), "n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test),
            "n_unlabelled": int(n_unlabelled), "image_size": [lo, hi]}


def _write_tree(out: Path, params: dict) -> dict:
    """Write the whole VOC tree into ``out``; return the info dict (written last)."""
    seed, size = params["seed"], tuple(params["image_size"])
    voc12, voc07 = out / "VOCdevkit" / "VOC2012", out / "VOCdevkit" / "VOC2007"
    for year in (voc12, voc07):
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (year / sub).mkdir(parents=True, exist_ok=True)
    palette_bytes = bytes(v for rgb in palette_colors(256) for v in rgb)

    lists: dict[str, list[str]] = {}
    train_counts = np.zeros(256, np.int64)
    plan = (("train", voc12, params["n_train"]), ("val", voc12, params["n_val"]),
            ("test", voc07, params["n_test"]), ("unlabelled", voc12, params["n_unlabelled"]))
    for split, year, count in plan:
        ids = [f"{_ID_PREFIX[split]}_{i:05d}" for i in range(count)]
        for i, image_id in enumerate(ids):
            image, label = draw_sample(seed, split, i, size)
            Image.fromarray(image, "RGB").save(year / "JPEGImages" / f"{image_id}.jpg", quality=90)
            if split != "unlabelled":
                _save_label(label, year / "SegmentationClass" / f"{image_id}.png", palette_bytes)
            if split == "train":
                train_counts += np.bincount(label.ravel(), minlength=256)
        if split != "unlabelled":
            lists[split] = ids
    lists["trainval"] = lists["train"] + lists["val"]
    for split, ids in lists.items():
        year = voc07 if split == "test" else voc12
        (year / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))

    classes = [{"name": n, "color": list(c)} for n, c in zip(CLASS_NAMES, CLASS_COLORS)]
    (out / CLASSES_FILE).write_text(
        "# Synthetic VOC-style dataset: classes in label-index order, background first.\n"
        "# Label value 255 is void (ignored); it marks a band around object boundaries.\n"
        + yaml.safe_dump({"ignore_index": IGNORE_INDEX, "classes": classes},
                         sort_keys=False, default_flow_style=None))

    labelled = train_counts[:NUM_CLASSES].sum()
    info = {
        "generator": "selmask_lib.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "selmask_version": _SELMASK_VERSION,
        "params": params,
        "counts": {"train": params["n_train"], "val": params["n_val"], "test": params["n_test"],
                   "unlabelled": params["n_unlabelled"],
                   "pretraining_pool": params["n_train"] + params["n_val"] + params["n_unlabelled"]},
        "classes": CLASS_NAMES,
        "train_class_frequencies": {n: round(float(c / labelled), 6)
                                    for n, c in zip(CLASS_NAMES, train_counts[:NUM_CLASSES])},
        "software": _software_versions(),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _software_versions() -> dict:
    """Versions that affect the bytes written (recorded for information only)."""
    import PIL
    import skimage
    return {"numpy": np.__version__, "pillow": PIL.__version__, "scikit-image": skimage.__version__}


def _read_info(root: Path) -> dict | None:
    """The tree's info dict, or None when missing or unreadable."""
    try:
        return json.loads((root / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_current(root: Path, params: dict) -> bool:
    """True when ``root`` holds a complete tree made with these parameters by this generator."""
    info = _read_info(root)
    if not info:
        return False
    return (info.get("params") == params
            and info.get("generator_version") == GENERATOR_VERSION
            and info.get("selmask_version") == _SELMASK_VERSION
            and all((root / "VOCdevkit" / year / "ImageSets" / "Segmentation" / f"{s}.txt").is_file()
                    for year, s in (("VOC2012", "train"), ("VOC2012", "val"), ("VOC2007", "test"))))


def _check_replaceable(root: Path) -> None:
    """Refuse to delete a directory that is not a synthetic tree (e.g. real VOC data)."""
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / INFO_FILE).exists())):
        raise SelmaskError(f"synthetic dataset: {root} exists and is not a synthetic dataset "
                           f"(no {INFO_FILE}); refusing to overwrite it")


def default_root() -> Path:
    """``$SELMASK_DATA_DIR/synthetic`` if that variable is set, else ``~/.cache/selmask/synthetic``."""
    base = os.environ.get("SELMASK_DATA_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "selmask") / "synthetic"


def generate_synthetic_voc(root: str | os.PathLike, seed: int = 0, n_train: int = DEFAULTS["n_train"],
                           n_val: int = DEFAULTS["n_val"], n_test: int = DEFAULTS["n_test"],
                           n_unlabelled: int = DEFAULTS["n_unlabelled"],
                           image_size: tuple[int, int] = DEFAULTS["image_size"]) -> Path:
    """Always (re)generate the synthetic VOC tree at ``root``; return ``root``.

    The tree is written to a temporary sibling directory and renamed into
    place when complete, so readers never see a half-written tree. An existing
    synthetic tree at ``root`` is replaced; any other existing non-empty
    directory raises :class:`SelmaskError`.
    """
    root = Path(root).expanduser()
    params = _params(seed, n_train, n_val, n_test, n_unlabelled, image_size)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_tree(tmp, params)
        _swap_in(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _swap_in(tmp: Path, root: Path, params: dict) -> None:
    """Move the finished tree ``tmp`` to ``root``, replacing an old tree.

    If another process put a tree with the same parameters in place meanwhile,
    keep theirs: the content is identical.
    """
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(root, old)
        except FileNotFoundError:   # another process moved it first
            old = None
    try:
        os.rename(tmp, root)
    except OSError:
        if not _is_current(root, params):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_synthetic_voc(root: str | os.PathLike | None = None, seed: int = 0,
                         n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                         n_test: int = DEFAULTS["n_test"], n_unlabelled: int = DEFAULTS["n_unlabelled"],
                         image_size: tuple[int, int] = DEFAULTS["image_size"]) -> Path:
    """Return the root of a synthetic VOC tree with these parameters, generating it if needed.

    ``root`` defaults to :func:`default_root` (``$SELMASK_DATA_DIR/synthetic``
    or ``~/.cache/selmask/synthetic``). Generation happens only when the tree
    is missing or its ``SYNTHETIC_INFO.json`` records other parameters or
    another generator version; otherwise this is a cheap check.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    params = _params(seed, n_train, n_val, n_test, n_unlabelled, image_size)
    if _is_current(root, params):
        return root
    return generate_synthetic_voc(root, **params)


# --------------------------------------------------------------------------- statistics
def _split_paths(root: Path, split: str) -> tuple[Path, list[str]]:
    """(year directory, image ids) of a split; test lives in VOC2007 as in the paper."""
    year = "VOC2007" if split == "test" else "VOC2012"
    base = Path(root) / "VOCdevkit" / year
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if split not in ("train", "val", "trainval", "test"):
        raise SelmaskError(f"synthetic dataset: unknown split {split!r}; use train, val, trainval or test")
    if not list_file.is_file():
        raise SelmaskError(f"synthetic dataset: split list {list_file} not found")
    return base, [line.strip() for line in list_file.read_text().splitlines() if line.strip()]


def class_pixel_counts(root: str | os.PathLike, split: str = "train") -> dict[str, int]:
    """Pixel count per class name over a split's labels, plus ``'void'`` for 255."""
    base, ids = _split_paths(Path(root), split)
    counts = np.zeros(256, np.int64)
    for image_id in ids:
        with Image.open(base / "SegmentationClass" / f"{image_id}.png") as label:
            counts += np.bincount(np.asarray(label).ravel(), minlength=256)
    out = {name: int(counts[i]) for i, name in enumerate(CLASS_NAMES)}
    out["void"] = int(counts[IGNORE_INDEX])
    return out


def class_frequencies(root: str | os.PathLike, split: str = "train") -> dict[str, float]:
    """Share of the split's labelled (non-void) pixels per class, in index order; sums to 1."""
    counts = class_pixel_counts(root, split)
    total = sum(counts[name] for name in CLASS_NAMES)
    return {name: counts[name] / total if total else 0.0 for name in CLASS_NAMES}


__all__ = [
    "CLASS_COLORS", "DEFAULTS", "SMALL", "GENERATOR_VERSION", "ensure_synthetic_voc",
    "generate_synthetic_voc", "default_root", "class_frequencies", "class_pixel_counts",
]
