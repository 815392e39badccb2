"""The embedded datasets: small segmentation sets drawn from a seed and written as VOC trees.

Why they exist
--------------
The paper's datasets (Pascal VOC, Cityscapes, Nassar 2020, Sugarbeets 2016) are
large downloads. Every command of the kit must also run out of the box, on one
CPU core, in minutes. Each embedded dataset is a *domain*: a name, its class
list and colours, and a function that draws one (image, label) pair from a
seed. They are shaped like the paper's pretrain/downstream pairs:

===============  ============================================  ==============  ===============
name             what it looks like                            classes         cross partner
===============  ============================================  ==============  ===============
synthetic        photo crops with textured shapes (the first)  background + 8  none
toy_street       outdoor street: sky, facades, road            background + 6  toy_tabletop
toy_tabletop     indoor table: wall, wooden top or cloth       background + 6  toy_street
toy_beet_field   beet rosettes, broad-leaf weeds, dark soil    soil/crop/weed  toy_maize_field
toy_maize_field  maize rows, grass weeds, light sandy soil     soil/crop/weed  toy_beet_field
===============  ============================================  ==============  ===============

The classes, shapes and frequencies of each are tabled in its scenes module
(``synthetic_scenes``, ``street_scenes``, ``tabletop_scenes``,
``field_scenes``); the cross pairs are ``EMBEDDED_CROSS_PAIRS`` in
``selmask_lib/reproduction.py``.

Tree written (one writer for every domain)
------------------------------------------
::

    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg          train + val + unlabelled
    <root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png   train + val labels
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    <root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg          test
    <root>/VOCdevkit/VOC2007/SegmentationClass/<id>.png
    <root>/VOCdevkit/VOC2007/ImageSets/Segmentation/test.txt
    <root>/classes.yaml          class names and RGB colours, index order
    <root>/SYNTHETIC_INFO.json   dataset, seed, parameters, counts, versions

exactly like Pascal VOC, so the ordinary VOC loader (``selmask_lib.data.voc``)
reads every domain with no special case. Labels are palette ('P') PNGs whose
colour map starts with the domain's class colours (the VOC colour map after
them), 255 = void. As in real VOC, the pretraining pool (all of
``VOC2012/JPEGImages``) is larger than the labelled split: the ``unl_*``
images appear in no list.

Where it is cached, and how to regenerate
-----------------------------------------
:func:`ensure_embedded` uses ``$SELMASK_DATA_DIR/<name>`` when the environment
variable ``SELMASK_DATA_DIR`` is set, otherwise ``~/.cache/selmask/<name>``.
It generates only when the tree is missing or its ``SYNTHETIC_INFO.json`` does
not match the requested dataset, seed and parameters (or was written by
another generator version). To regenerate by hand, delete the directory or
call :func:`generate_embedded`, which always writes. Generation goes to a
temporary sibling directory that is renamed into place only when complete, so
an interrupted run never leaves a tree that looks finished.

Determinism: every image is a pure function of (seed, split, index); the same
seed gives byte-identical label PNGs and JPEGs (with the same
Pillow/zlib/libjpeg).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from PIL import Image

from selmask_lib import __version__ as _SELMASK_VERSION
import selmask_lib.data.field_scenes as field_scenes
import selmask_lib.data.street_scenes as street_scenes
import selmask_lib.data.synthetic_scenes as synthetic_scenes
import selmask_lib.data.tabletop_scenes as tabletop_scenes
from selmask_lib.data.base import IGNORE_INDEX, WEED_CLASS_COLORS, WEED_CLASS_NAMES, palette_colors, read_classes_yaml
from selmask_lib.errors import SelmaskError

INFO_FILE = "SYNTHETIC_INFO.json"
CLASSES_FILE = "classes.yaml"

#: Default sizes: a few seconds on one CPU core, big enough to train on.
DEFAULTS: dict = dict(n_train=120, n_val=40, n_test=40, n_unlabelled=400, image_size=(64, 128))
#: Tiny parameter set for tests: ``ensure_embedded(name, tmp_path, **SMALL)``.
SMALL: dict = dict(n_train=12, n_val=4, n_test=4, n_unlabelled=24, image_size=(48, 64))

_ID_PREFIX = {"train": "train", "val": "val", "test": "test", "unlabelled": "unl"}

DrawSample = Callable[[int, str, int, tuple[int, int]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Domain:
    """One embedded dataset: what the writer needs to know about it.

    ``draw(seed, split, index, image_size)`` returns ``image`` uint8 [H, W, 3]
    and ``label`` uint8 [H, W] (class ids, 255 = void) and must be a pure
    function of its arguments. ``version`` is bumped whenever the drawing
    changes, so cached trees are regenerated.
    """

    name: str
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    draw: DrawSample
    version: int
    void_band: bool  # labels carry 255 around objects (VOC-like) or label every pixel (field datasets)


DOMAINS: dict[str, Domain] = {domain.name: domain for domain in (
    Domain("synthetic", tuple(synthetic_scenes.CLASS_NAMES), palette_colors(synthetic_scenes.NUM_CLASSES),
           synthetic_scenes.draw_sample, version=1, void_band=True),
    Domain("toy_street", street_scenes.CLASS_NAMES, palette_colors(len(street_scenes.CLASS_NAMES)),
           street_scenes.draw_sample, version=street_scenes.GENERATOR_VERSION, void_band=True),
    Domain("toy_tabletop", tabletop_scenes.CLASS_NAMES, palette_colors(len(tabletop_scenes.CLASS_NAMES)),
           tabletop_scenes.draw_sample, version=tabletop_scenes.GENERATOR_VERSION, void_band=True),
    Domain("toy_beet_field", WEED_CLASS_NAMES, WEED_CLASS_COLORS, field_scenes.draw_beet_sample,
           version=field_scenes.GENERATOR_VERSION, void_band=False),
    Domain("toy_maize_field", WEED_CLASS_NAMES, WEED_CLASS_COLORS, field_scenes.draw_maize_sample,
           version=field_scenes.GENERATOR_VERSION, void_band=False),
)}


def get_domain(name: str) -> Domain:
    """The embedded domain called ``name``."""
    if name not in DOMAINS:
        raise SelmaskError(f"unknown embedded dataset {name!r}; choose one of {', '.join(DOMAINS)}")
    return DOMAINS[name]


# --------------------------------------------------------------------------- writing
def _save_label(label: np.ndarray, path: Path, palette_bytes: bytes) -> None:
    """Write a palette ('P') PNG, as VOC labels are."""
    h, w = label.shape
    image = Image.frombytes("P", (w, h), np.ascontiguousarray(label).tobytes())
    image.putpalette(palette_bytes)
    image.save(path, format="PNG")


def _label_palette(domain: Domain) -> bytes:
    """The domain's class colours, then the VOC colour map for the other indices (255 = void)."""
    colors = list(domain.class_colors) + list(palette_colors(256)[len(domain.class_colors):])
    return bytes(v for rgb in colors for v in rgb)


def check_params(name: str, seed: int, n_train: int, n_val: int, n_test: int, n_unlabelled: int,
                 image_size: tuple[int, int]) -> dict:
    """Validate the generation arguments and return them as a JSON-comparable dict."""
    for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test),
                       ("n_unlabelled", n_unlabelled)):
        least = 0 if key == "n_unlabelled" else 1
        if not isinstance(value, (int, np.integer)) or value < least:
            raise SelmaskError(f"{name} dataset: argument {key}={value!r} must be an integer >= {least}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SelmaskError(f"{name} dataset: argument seed={seed!r} must be a non-negative integer")
    try:
        lo, hi = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise SelmaskError(f"{name} dataset: argument image_size={image_size!r} must be a pair (lo, hi)") from None
    if not 32 <= lo <= hi <= 1024:
        raise SelmaskError(f"{name} dataset: argument image_size={image_size!r} needs 32 <= lo <= hi <= 1024")
    return {"seed": int(seed), "n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test),
            "n_unlabelled": int(n_unlabelled), "image_size": [lo, hi]}


def _write_tree(domain: Domain, out: Path, params: dict) -> dict:
    """Write the whole VOC tree of ``domain`` into ``out``; return the info dict (written last)."""
    seed, size = params["seed"], tuple(params["image_size"])
    voc12, voc07 = out / "VOCdevkit" / "VOC2012", out / "VOCdevkit" / "VOC2007"
    for year in (voc12, voc07):
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (year / sub).mkdir(parents=True, exist_ok=True)
    palette_bytes = _label_palette(domain)

    lists: dict[str, list[str]] = {}
    train_counts = np.zeros(256, np.int64)
    plan = (("train", voc12, params["n_train"]), ("val", voc12, params["n_val"]),
            ("test", voc07, params["n_test"]), ("unlabelled", voc12, params["n_unlabelled"]))
    for split, year, count in plan:
        ids = [f"{_ID_PREFIX[split]}_{i:05d}" for i in range(count)]
        for i, image_id in enumerate(ids):
            image, label = domain.draw(seed, split, i, size)
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

    _write_classes(domain, out / CLASSES_FILE)
    info = _info(domain, params, train_counts)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _write_classes(domain: Domain, path: Path) -> None:
    """``classes.yaml``: the class names and colours the VOC loader reads instead of VOC's 21."""
    void = ("# Label value 255 is void (ignored); it marks a band around object boundaries.\n"
            if domain.void_band else "# Every pixel is labelled (no void), as in the field datasets.\n")
    classes = [{"name": n, "color": list(c)} for n, c in zip(domain.class_names, domain.class_colors)]
    path.write_text(
        f"# Embedded dataset {domain.name} (VOC-style tree): classes in label-index order, background first.\n"
        + void + yaml.safe_dump({"ignore_index": IGNORE_INDEX, "classes": classes},
                                sort_keys=False, default_flow_style=None))


def _info(domain: Domain, params: dict, train_counts: np.ndarray) -> dict:
    """What was generated and how: compared by :func:`is_current`, read by people."""
    n = len(domain.class_names)
    labelled = train_counts[:n].sum()
    return {
        "dataset": domain.name,
        "generator": domain.draw.__module__,
        "generator_version": domain.version,
        "selmask_version": _SELMASK_VERSION,
        "params": params,
        "counts": {"train": params["n_train"], "val": params["n_val"], "test": params["n_test"],
                   "unlabelled": params["n_unlabelled"],
                   "pretraining_pool": params["n_train"] + params["n_val"] + params["n_unlabelled"]},
        "classes": list(domain.class_names),
        "train_class_frequencies": {name: round(float(c / labelled), 6)
                                    for name, c in zip(domain.class_names, train_counts[:n])},
        "software": _software_versions(),
    }


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


def _tree_dataset(info: dict) -> str:
    """The dataset an info file describes (trees written before there were other domains are synthetic)."""
    return info.get("dataset", "synthetic")


def is_current(domain: Domain, root: Path, params: dict) -> bool:
    """True when ``root`` holds a complete tree of ``domain`` made with these parameters by this generator."""
    info = _read_info(root)
    if not info:
        return False
    return (_tree_dataset(info) == domain.name
            and info.get("params") == params
            and info.get("generator_version") == domain.version
            and info.get("selmask_version") == _SELMASK_VERSION
            and all((root / "VOCdevkit" / year / "ImageSets" / "Segmentation" / f"{s}.txt").is_file()
                    for year, s in (("VOC2012", "train"), ("VOC2012", "val"), ("VOC2007", "test"))))


def _check_replaceable(domain: Domain, root: Path) -> None:
    """Refuse to delete a directory that is not a tree of this domain (e.g. real VOC data, another domain)."""
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / INFO_FILE).exists())):
        raise SelmaskError(f"{domain.name} dataset: {root} exists and is not an embedded dataset "
                           f"(no {INFO_FILE}); refusing to overwrite it")
    info = _read_info(root) if root.is_dir() else None
    if info is not None and _tree_dataset(info) != domain.name:
        raise SelmaskError(f"{domain.name} dataset: {root} holds the embedded dataset {_tree_dataset(info)!r}; "
                           "refusing to overwrite it (choose another folder)")


def default_root(name: str) -> Path:
    """``$SELMASK_DATA_DIR/<name>`` if that variable is set, else ``~/.cache/selmask/<name>``."""
    base = os.environ.get("SELMASK_DATA_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "selmask") / name


def write_tree(domain: Domain, root: Path, params: dict) -> Path:
    """Always (re)write the tree of ``domain`` at ``root`` from checked ``params``; return ``root``.

    The tree is written to a temporary sibling directory and renamed into
    place when complete, so readers never see a half-written tree. An existing
    tree of the same domain at ``root`` is replaced; any other existing
    non-empty directory raises :class:`SelmaskError`.
    """
    root = Path(root).expanduser()
    _check_replaceable(domain, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_tree(domain, tmp, params)
        _swap_in(domain, tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _swap_in(domain: Domain, tmp: Path, root: Path, params: dict) -> None:
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
        if not is_current(domain, root, params):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_embedded(name: str, root: str | os.PathLike, seed: int = 0, n_train: int = DEFAULTS["n_train"],
                      n_val: int = DEFAULTS["n_val"], n_test: int = DEFAULTS["n_test"],
                      n_unlabelled: int = DEFAULTS["n_unlabelled"],
                      image_size: tuple[int, int] = DEFAULTS["image_size"]) -> Path:
    """Always (re)generate the embedded dataset ``name`` at ``root``; return ``root``."""
    domain = get_domain(name)
    params = check_params(name, seed, n_train, n_val, n_test, n_unlabelled, image_size)
    return write_tree(domain, Path(root), params)


def ensure_embedded(name: str, root: str | os.PathLike | None = None, seed: int = 0,
                    n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                    n_test: int = DEFAULTS["n_test"], n_unlabelled: int = DEFAULTS["n_unlabelled"],
                    image_size: tuple[int, int] = DEFAULTS["image_size"]) -> Path:
    """Return the root of the embedded dataset ``name`` with these parameters, generating it if needed.

    ``root`` defaults to :func:`default_root` (``$SELMASK_DATA_DIR/<name>`` or
    ``~/.cache/selmask/<name>``). Generation happens only when the tree is
    missing or its ``SYNTHETIC_INFO.json`` records another dataset, other
    parameters or another generator version; otherwise this is a cheap check.
    """
    domain = get_domain(name)
    root = Path(root).expanduser() if root is not None else default_root(name)
    params = check_params(name, seed, n_train, n_val, n_test, n_unlabelled, image_size)
    if is_current(domain, root, params):
        return root
    return write_tree(domain, root, params)


# --------------------------------------------------------------------------- statistics
def _split_paths(root: Path, split: str) -> tuple[Path, list[str]]:
    """(year directory, image ids) of a split; test lives in VOC2007 as in the paper."""
    year = "VOC2007" if split == "test" else "VOC2012"
    base = Path(root) / "VOCdevkit" / year
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if split not in ("train", "val", "trainval", "test"):
        raise SelmaskError(f"embedded dataset: unknown split {split!r}; use train, val, trainval or test")
    if not list_file.is_file():
        raise SelmaskError(f"embedded dataset: split list {list_file} not found")
    return base, [line.strip() for line in list_file.read_text().splitlines() if line.strip()]


def class_pixel_counts(root: str | os.PathLike, split: str = "train") -> dict[str, int]:
    """Pixel count per class name (from the tree's ``classes.yaml``) over a split's labels, plus ``'void'``."""
    base, ids = _split_paths(Path(root), split)
    names, _ = read_classes_yaml(Path(root) / CLASSES_FILE)
    counts = np.zeros(256, np.int64)
    for image_id in ids:
        with Image.open(base / "SegmentationClass" / f"{image_id}.png") as label:
            counts += np.bincount(np.asarray(label).ravel(), minlength=256)
    out = {name: int(counts[i]) for i, name in enumerate(names)}
    out["void"] = int(counts[IGNORE_INDEX])
    return out


def class_frequencies(root: str | os.PathLike, split: str = "train") -> dict[str, float]:
    """Share of the split's labelled (non-void) pixels per class, in index order; sums to 1."""
    counts = class_pixel_counts(root, split)
    names = [name for name in counts if name != "void"]
    total = sum(counts[name] for name in names)
    return {name: counts[name] / total if total else 0.0 for name in names}


__all__ = [
    "DEFAULTS", "DOMAINS", "Domain", "SMALL", "class_frequencies", "class_pixel_counts", "default_root",
    "ensure_embedded", "generate_embedded", "get_domain", "is_current",
]
