"""Drawing tools shared by every embedded dataset's scenes (pure: no files written).

Each embedded domain (``synthetic_scenes``, ``street_scenes``,
``tabletop_scenes``, ``field_scenes``) draws one image and its label map from
a seed with these pieces: real photographs and textures bundled with
scikit-image (never a download), shape masks, and the VOC-style void band.
They live here once so that a fix to one reaches every domain.

Conventions: images are float32 [H, W, 3] in [0, 1] while drawn, masks are
boolean [H, W] (True = inside the shape), points are (row, col).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image
from skimage import draw
from skimage.morphology import dilation

from selmask_lib.data.base import IGNORE_INDEX
from selmask_lib.errors import SelmaskError

# Split codes seed the per-image generators; they must never change (cached trees keep their bytes).
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "unlabelled": 3}


def sample_rng(seed: int, split: str, index: int, domain_code: int | None = None) -> np.random.Generator:
    """The generator of one sample: a pure function of (seed, domain, split, index).

    Each sample has its own generator, so it does not depend on how many
    others are drawn. ``domain_code`` keeps two domains drawn with the same
    seed independent; ``synthetic`` (the first domain) has none, so its
    images keep the bytes they have always had.
    """
    if split not in SPLIT_CODES:
        raise SelmaskError(f"embedded dataset: unknown split {split!r}; use one of {sorted(SPLIT_CODES)}")
    key = [seed, SPLIT_CODES[split], index] if domain_code is None else [seed, domain_code, SPLIT_CODES[split], index]
    return np.random.default_rng(key)


def image_shape(rng: np.random.Generator, image_size: tuple[int, int]) -> tuple[int, int]:
    """Height and width, each drawn in ``image_size = (lo, hi)``, as VOC images vary in shape."""
    lo, hi = image_size
    h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    return h, w


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] image -> uint8, rounded, as written to the JPEG."""
    return (np.clip(image * 255.0 + 0.5, 0, 255)).astype(np.uint8)


# --------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=None)
def source(name: str, mode: str = "RGB") -> Image.Image:
    """Load one ``skimage.data`` image as a PIL image in ``mode``, once per process.

    Only functions whose files are bundled with scikit-image are used; the
    ones that need a pooch download (eagle, lily, skin, ...) are avoided
    because the kit must work offline.
    """
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array[..., :3]).astype(np.uint8), "RGB").convert(mode)


def random_crop(rng: np.random.Generator, name: str, h: int, w: int,
                zoom: tuple[float, float] = (0.7, 3.0), mode: str = "RGB") -> np.ndarray:
    """Random crop of source ``name`` rescaled to ``h x w``, float32 in [0, 1].

    The crop is ``zoom`` times the output size (clamped to the source), so the
    same source gives fine and coarse versions of its texture. A random
    horizontal flip doubles the variety for free.
    """
    src = source(name, mode)
    sw, sh = src.size
    s = min(rng.uniform(*zoom), sw / w, sh / h)
    cw, ch = max(1, int(round(w * s))), max(1, int(round(h * s)))
    x0 = int(rng.integers(0, sw - cw + 1))
    y0 = int(rng.integers(0, sh - ch + 1))
    crop = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    array = np.asarray(crop, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        array = array[:, ::-1]
    return array


def detail(rng: np.random.Generator, name: str, h: int, w: int,
           zoom: tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
    """Zero-mean, unit-spread grey detail [h, w] of source ``name``: texture without its colour."""
    grey = random_crop(rng, name, h, w, zoom=zoom, mode="L")
    return (grey - grey.mean()) / (grey.std() + 0.05)


def class_texture(rng: np.random.Generator, name: str, tint: tuple[float, float, float],
                  h: int, w: int, zoom: tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
    """Class texture (float32 [h, w, 3]): grey detail of source ``name`` modulating the class colour.

    The tint carries the class identity (with a per-instance jitter so colour
    alone is not a perfect cue); the source crop carries fine texture; a linear
    lighting gradient adds the shading real objects have. ``h x w`` is the
    object's bounding box, so the cost scales with the object, not the image.
    ``zoom`` > 1 gives a finer texture (a larger part of the source).
    """
    texture_detail = detail(rng, name, h, w, zoom)
    colour = np.asarray(tint, np.float32) + rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
    contrast = rng.uniform(0.2, 0.4)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * np.arange(w, dtype=np.float32)[None, :] / max(w, 8)
            + np.sin(angle) * np.arange(h, dtype=np.float32)[:, None] / max(h, 8))
    light = 1.0 + rng.uniform(0.1, 0.35) * (ramp - ramp.mean())
    texture = colour[None, None, :] * ((1.0 + contrast * texture_detail) * light)[..., None]
    return np.clip(texture, 0.0, 1.0).astype(np.float32)


def paste_texture(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, name: str,
                  tint: tuple[float, float, float], zoom: tuple[float, float] = (0.5, 2.0)) -> None:
    """Fill ``mask`` in ``image`` (in place) with a fresh :func:`class_texture` of ``name`` and ``tint``."""
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    texture = class_texture(rng, name, tint, int(y1 - y0), int(x1 - x0), zoom)
    local = mask[y0:y1, x0:x1]
    image[y0:y1, x0:x1][local] = texture[local]


# --------------------------------------------------------------------------- shapes
# Shape helpers return a boolean [h, w] mask; sizes are in pixels.

def mask_from(rr: np.ndarray, cc: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean mask from pixel coordinates, dropping those outside the image."""
    mask = np.zeros((h, w), bool)
    keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    mask[rr[keep], cc[keep]] = True
    return mask


def polyline(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """1 px wide, 8-connected polyline through ``points`` (rows, cols)."""
    mask = np.zeros((h, w), bool)
    pts = np.round(points).astype(int)
    for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
        rr, cc = draw.line(r0, c0, r1, c1)
        mask |= mask_from(rr, cc, h, w)
    return mask


def thick_line(start: tuple[float, float], end: tuple[float, float], half_width: float,
               h: int, w: int) -> np.ndarray:
    """A straight bar of ``2 * half_width`` px between two points: a line a model can see."""
    (y0, x0), (y1, x1) = start, end
    length = float(np.hypot(y1 - y0, x1 - x0))
    angle = float(np.arctan2(y1 - y0, x1 - x0))
    return rotated_rect((y0 + y1) / 2, (x0 + x1) / 2, length / 2 + half_width / 2, half_width, angle, h, w)


def disk(cy: float, cx: float, r_row: float, r_col: float, h: int, w: int, rotation: float = 0.0) -> np.ndarray:
    """Filled ellipse (a disk when the radii are equal)."""
    return mask_from(*draw.ellipse(cy, cx, max(r_row, 0.5), max(r_col, 0.5), shape=(h, w),
                                   rotation=rotation), h, w)


def box(top: float, bottom: float, left: float, right: float, h: int, w: int) -> np.ndarray:
    """Axis-aligned filled rectangle between rows ``top``-``bottom`` and columns ``left``-``right``."""
    mask = np.zeros((h, w), bool)
    y0, y1 = max(0, int(round(top))), min(h, int(round(bottom)))
    x0, x1 = max(0, int(round(left))), min(w, int(round(right)))
    mask[y0:y1, x0:x1] = True
    return mask


def centre(rng: np.random.Generator, h: int, w: int, margin: float = 0.1) -> tuple[float, float]:
    """Object centre, kept away from the border so objects are mostly visible."""
    return rng.uniform(margin * h, (1 - margin) * h), rng.uniform(margin * w, (1 - margin) * w)


def rotated_rect(cy: float, cx: float, half_len: float, half_wid: float, angle: float,
                 h: int, w: int) -> np.ndarray:
    """Filled rectangle of the given half sizes, rotated by ``angle``."""
    u = np.array([np.sin(angle), np.cos(angle)])           # (row, col) direction of length
    v = np.array([np.cos(angle), -np.sin(angle)])          # perpendicular
    corners = [np.array([cy, cx]) + a * half_len * u + b * half_wid * v
               for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    corners = np.array(corners)
    rr, cc = draw.polygon(corners[:, 0], corners[:, 1], shape=(h, w))
    return mask_from(rr, cc, h, w)


def smooth_curve(rng: np.random.Generator, start: tuple[float, float], length: float,
                 wiggle: float) -> np.ndarray:
    """Points (1 px apart) of a curve whose heading drifts smoothly."""
    steps = max(2, int(length))
    heading = rng.uniform(0, 2 * np.pi)
    freq, phase = rng.uniform(0.02, 0.08), rng.uniform(0, 2 * np.pi)
    turn = wiggle * np.sin(freq * 2 * np.pi * np.arange(steps) + phase)
    headings = heading + np.cumsum(turn)
    ys = start[0] + np.concatenate([[0.0], np.cumsum(np.sin(headings[:-1]))])
    xs = start[1] + np.concatenate([[0.0], np.cumsum(np.cos(headings[:-1]))])
    return np.stack([ys, xs], axis=1)


def leaf(base: tuple[float, float], angle: float, length: float, width: float, h: int, w: int,
         roundness: float = 1.0) -> np.ndarray:
    """A leaf growing from ``base`` along ``angle``, ``width`` px at its widest, pointed at both ends.

    ``roundness`` < 1 gives a broad oval blade (beet), 1 a narrow pointed one (maize).
    """
    along = np.array([np.sin(angle), np.cos(angle)])
    across = np.array([np.cos(angle), -np.sin(angle)])
    t = np.linspace(0.0, 1.0, 13)
    half = width / 2 * np.sin(np.pi * t) ** roundness
    spine = np.asarray(base)[None, :] + (t * length)[:, None] * along[None, :]
    outline = np.concatenate([spine + half[:, None] * across, (spine - half[:, None] * across)[::-1]])
    rr, cc = draw.polygon(outline[:, 0], outline[:, 1], shape=(h, w))
    return mask_from(rr, cc, h, w)


# --------------------------------------------------------------------------- labels
def band_width(h: int, w: int) -> int:
    """Void band width: VOC's band is ~1 % of the image side, so 1 px below 96 px, else 2."""
    return 1 if min(h, w) < 96 else 2


def void_band(instance_map: np.ndarray, width: int) -> np.ndarray:
    """Pixels to mark void: a ``width`` px band outside every visible object boundary.

    The band lies on the far side of each visible edge (over the background or
    an object drawn earlier), so the front object keeps all its pixels: a thin
    object stays labelled, while the void still separates it from its
    surroundings. Where a band covers the edge of an object behind, that
    object's own band adds to it, so void can reach 2 x ``width`` from the
    nearest labelled object pixel, as in cluttered VOC scenes.

    Instances are numbered in drawing order, so a pixel is void exactly when an
    instance drawn later lies within ``width`` px: when the largest instance
    number in its neighbourhood (a grey dilation) exceeds its own. The
    neighbourhood is a square, not a disk, because the band has always been
    square-shaped and cached datasets must keep their bytes.
    """
    square = np.ones((2 * width + 1, 2 * width + 1), bool)
    return dilation(instance_map, square, mode="ignore") > instance_map


def label_map(shape: tuple[int, int], instances: list[tuple[int, np.ndarray]], void_width: int) -> np.ndarray:
    """Label map (uint8) of ``instances`` = [(class id, mask)] in drawing order, later ones in front.

    ``void_width`` > 0 adds the VOC-style void band (255) around every
    visible instance; 0 labels every pixel, as Nassar and Sugarbeets do.
    """
    instance_map = np.zeros(shape, np.int32)       # 0 = background, k = k-th drawn instance
    for k, (_, mask) in enumerate(instances, start=1):
        instance_map[mask] = k
    class_of = np.array([0] + [cls for cls, _ in instances], np.uint8)
    label = class_of[instance_map]
    if void_width > 0:
        label[void_band(instance_map, void_width)] = IGNORE_INDEX
    return label


def forced_class(index: int, num_object_classes: int) -> int:
    """The object class image ``index`` must show, so every split of >= N images holds every class."""
    return 1 + index % num_object_classes
