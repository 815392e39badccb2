"""The synthetic dataset's scenes: one image and its label map, drawn from a seed.

Pure drawing, no files written (:mod:`selmask_lib.data.synthetic` writes the
VOC tree); the only files read are sample images bundled with scikit-image.

What the images look like
-------------------------
Each image is 64-128 px on each side (height and width drawn independently per
image). The background is a random crop of a real photograph shipped with
scikit-image (astronaut, coffee, chelsea, rocket, camera, clock, Hubble deep
field, immunohistochemistry, retina), rescaled and colour-shifted, often blended
with a grass texture. Objects are pasted on top, each filled with a crop of a
real texture from ``skimage.data`` (gravel, brick, moon, coins, text, page, cell,
camera), tinted with a class colour and jittered per instance, with a soft
lighting gradient. Larger objects are drawn first, so small ones stay visible.

Classes (index order, background first)
---------------------------------------
====  ==========  ================================================  ==========
 idx  name        shape / texture                                   frequency
====  ==========  ================================================  ==========
 0    background  photo crop (+ grass)                              ~72 %
 1    ellipse     large filled ellipse, brown gravel                ~10 %
 2    slab        large rotated quadrilateral, blue-grey brick      ~11 %
 3    ring        annulus, cyan moon craters                        ~2.7 %
 4    star        5-8 pointed star, yellow coins                    ~1.7 %
 5    stripes     3-6 parallel 2-3 px bars, magenta text            ~1.1 %
 6    wire        1-2 px wide smooth curve, white camera crop       ~0.6 %
 7    speck       cluster of 4-9 tiny diamonds, red page            ~0.3 %
 8    fern        1 px stem with alternating 1 px leaflets, green   ~0.4 %
====  ==========  ================================================  ==========

Frequencies are shares of the labelled (non-void) pixels of the default train
split (seed 0); about 10 % of all pixels are void. The imbalance is strong:
the rarest classes have ~1/30 of the pixels of the common ones, and they are
small, thin and detail-rich, like the classes the paper reports the largest
gains on. :func:`selmask_lib.data.synthetic.class_frequencies` measures them
on any tree. The label map carries a 1 px (images shorter than 96 px) or 2 px
band of 255 = void drawn just outside every object's boundary, as VOC does.

Every split that has at least 8 images contains every object class: image ``i``
of a split always holds at least one instance of object class ``1 + i % 8``.

Determinism: every image is drawn by its own ``numpy.random.default_rng((seed,
split, index))``; no global random state is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from skimage import draw
from skimage.morphology import dilation

from selmask_lib.data.drawing import (
    band_width,
    centre,
    forced_class,
    image_shape,
    label_map,
    mask_from,
    paste_texture,
    polyline,
    random_crop,
    rotated_rect,
    sample_rng,
    smooth_curve,
    to_uint8,
)

# --------------------------------------------------------------------------- sources
# Background photographs; all ship inside scikit-image (no pooch download).
_BACKGROUND_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "clock",
    "hubble_deep_field", "immunohistochemistry", "retina",
)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered, textured background: photo crop, colour shift, maybe grass.

    Real photographs give the background natural image statistics (edges,
    shading, clutter), so reconstruction pretraining has something to learn.
    """
    photo = _BACKGROUND_PHOTOS[int(rng.integers(len(_BACKGROUND_PHOTOS)))]
    image = random_crop(rng, photo, h, w)
    gain = rng.uniform(0.7, 1.2, size=3).astype(np.float32)
    offset = rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
    image = image * gain + offset
    if rng.random() < 0.5:
        grass = random_crop(rng, "grass", h, w, mode="L")[..., None]
        tint = rng.uniform(0.3, 0.7, size=3).astype(np.float32)
        alpha = np.float32(rng.uniform(0.25, 0.6))
        image = (1 - alpha) * image + alpha * grass * tint * 1.6
    return np.clip(image, 0.0, 1.0)


# --------------------------------------------------------------------------- shapes
# Every shape function takes (rng, h, w) and returns a boolean [h, w] mask.
# Sizes are relative to m = min(h, w) so small and large images look alike.

def shape_ellipse(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Large filled ellipse: the common, easy, blob-like class."""
    m = min(h, w)
    cy, cx = centre(rng, h, w)
    rr, cc = draw.ellipse(cy, cx, m * rng.uniform(0.15, 0.33), m * rng.uniform(0.15, 0.33),
                          shape=(h, w), rotation=rng.uniform(-np.pi, np.pi))
    return mask_from(rr, cc, h, w)


def shape_slab(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Large rotated quadrilateral with jittered corners: common, straight edges."""
    m = min(h, w)
    cy, cx = centre(rng, h, w)
    a, b = m * rng.uniform(0.18, 0.38), m * rng.uniform(0.1, 0.22)
    angle = rng.uniform(0, np.pi)
    u = np.array([np.sin(angle), np.cos(angle)])
    v = np.array([np.cos(angle), -np.sin(angle)])
    corners = np.array([np.array([cy, cx]) + sa * a * u + sb * b * v
                        for sa, sb in ((1, 1), (1, -1), (-1, -1), (-1, 1))])
    corners += rng.normal(0, 0.06 * m, size=corners.shape)
    rr, cc = draw.polygon(corners[:, 0], corners[:, 1], shape=(h, w))
    return mask_from(rr, cc, h, w)


def shape_ring(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Annulus: a hole in the middle, so the class is not just a filled blob."""
    m = min(h, w)
    cy, cx = centre(rng, h, w, margin=0.15)
    r_out = m * rng.uniform(0.11, 0.22)
    squash = rng.uniform(0.75, 1.0)
    rot = rng.uniform(-np.pi, np.pi)
    r_in = r_out * rng.uniform(0.5, 0.72)
    outer = mask_from(*draw.ellipse(cy, cx, r_out * squash, r_out, shape=(h, w), rotation=rot), h, w)
    inner = mask_from(*draw.ellipse(cy, cx, r_in * squash, r_in, shape=(h, w), rotation=rot), h, w)
    return outer & ~inner


def shape_star(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """5-8 pointed star: sharp concave corners a blurry model rounds off."""
    m = min(h, w)
    cy, cx = centre(rng, h, w, margin=0.15)
    points = int(rng.integers(5, 9))
    r_out = m * rng.uniform(0.11, 0.2)
    r_in = r_out * rng.uniform(0.35, 0.5)
    angles = rng.uniform(0, 2 * np.pi) + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, r_out, r_in)
    rr, cc = draw.polygon(cy + radii * np.sin(angles), cx + radii * np.cos(angles), shape=(h, w))
    return mask_from(rr, cc, h, w)


def shape_stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """3-6 parallel thin bars: a thin, periodic structure (rare class)."""
    m = min(h, w)
    cy, cx = centre(rng, h, w, margin=0.2)
    bars = int(rng.integers(3, 7))
    half_wid = rng.uniform(0.75, 1.5)
    pitch = 2 * half_wid + rng.uniform(2.5, 4.0)
    half_len = m * rng.uniform(0.08, 0.18)
    angle = rng.uniform(0, np.pi)
    normal = np.array([np.cos(angle), -np.sin(angle)])
    mask = np.zeros((h, w), bool)
    for k in range(bars):
        oy, ox = (k - (bars - 1) / 2) * pitch * normal
        mask |= rotated_rect(cy + oy, cx + ox, half_len, half_wid, angle, h, w)
    return mask


def shape_wire(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1-2 px wide smooth curve: the thinnest class, hard at low resolution."""
    m = min(h, w)
    points = smooth_curve(rng, centre(rng, h, w, margin=0.2), m * rng.uniform(0.4, 0.9), wiggle=0.08)
    mask = polyline(points, h, w)
    return _thicken(mask) if rng.random() < 0.6 else mask


# A pixel of the thick wire is set when it, the pixel above or the pixel above-left
# is set on the thin one. skimage's dilation does not mirror a footprint, and
# mode="ignore" keeps pixels outside the image out of it.
_THICKEN = np.array([[1, 1, 0],
                     [0, 1, 0],
                     [0, 0, 0]], bool)


def _thicken(mask: np.ndarray) -> np.ndarray:
    """Thicken a 1 px line to 2 px (the line plus its copies shifted down and down-right)."""
    return dilation(mask, _THICKEN, mode="ignore")


def shape_speck(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Cluster of 3-7 tiny diamonds: small, scattered objects (rare class)."""
    m = min(h, w)
    cy, cx = centre(rng, h, w, margin=0.12)
    spread = m * 0.08
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(4, 10))):
        y, x = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
        r = rng.uniform(1.5, 3.0)
        rr, cc = draw.polygon([y - r, y, y + r, y], [x, x + r, x, x - r], shape=(h, w))
        mask |= mask_from(rr, cc, h, w)
    return mask


def shape_fern(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1 px stem with alternating 1 px leaflets: branched, thin, detail-rich."""
    m = min(h, w)
    stem = smooth_curve(rng, centre(rng, h, w, margin=0.2), m * rng.uniform(0.25, 0.45), wiggle=0.03)
    mask = polyline(stem, h, w)
    spacing = int(rng.integers(3, 6))
    leaf_max = m * rng.uniform(0.07, 0.12)
    spread = rng.uniform(0.8, 1.2)                         # leaflet angle from the stem, radians
    n = len(stem)
    for k, i in enumerate(range(spacing, n - 1, spacing)):
        direction = stem[i + 1] - stem[i - 1]
        heading = np.arctan2(direction[0], direction[1])
        side = 1 if k % 2 == 0 else -1
        length = leaf_max * (1.0 - 0.7 * i / n)            # leaflets shrink toward the tip
        a = heading + side * spread
        tip = stem[i] + length * np.array([np.sin(a), np.cos(a)])
        mask |= polyline(np.stack([stem[i], tip]), h, w)
    return mask


# --------------------------------------------------------------------------- classes
@dataclass(frozen=True)
class ClassSpec:
    """How one object class is drawn.

    ``rate`` is the mean number of instances per image (Poisson): together with
    the shape size it sets how common the class is.
    """

    name: str
    shape: Callable[[np.random.Generator, int, int], np.ndarray]
    texture: str
    tint: tuple[float, float, float]
    rate: float


_OBJECT_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("ellipse", shape_ellipse, "gravel", (0.62, 0.45, 0.30), 0.9),
    ClassSpec("slab", shape_slab, "brick", (0.35, 0.45, 0.70), 0.9),
    ClassSpec("ring", shape_ring, "moon", (0.15, 0.72, 0.78), 0.6),
    ClassSpec("star", shape_star, "coins", (0.88, 0.80, 0.18), 0.6),
    ClassSpec("stripes", shape_stripes, "text", (0.85, 0.20, 0.75), 0.35),
    ClassSpec("wire", shape_wire, "camera", (0.95, 0.95, 0.92), 0.6),
    ClassSpec("speck", shape_speck, "page", (0.92, 0.12, 0.10), 0.4),
    ClassSpec("fern", shape_fern, "cell", (0.20, 0.85, 0.25), 0.45),
)

#: Class names in label-index order, background first.
CLASS_NAMES: list[str] = ["background"] + [spec.name for spec in _OBJECT_CLASSES]
NUM_CLASSES: int = len(CLASS_NAMES)


# --------------------------------------------------------------------------- one sample
def draw_sample(seed: int, split: str, index: int,
                image_size: tuple[int, int] = (64, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its label map; a pure function of its arguments.

    Returns ``image`` uint8 [H, W, 3] and ``label`` uint8 [H, W] with values in
    ``range(NUM_CLASSES)`` and 255 for the void band. Each sample has its own
    generator, so samples do not depend on how many others are drawn.
    """
    rng = sample_rng(seed, split, index)
    h, w = image_shape(rng, image_size)
    image = _background(rng, h, w)

    forced = forced_class(index, len(_OBJECT_CLASSES))   # every class appears in every split
    instances = []
    for cls, spec in enumerate(_OBJECT_CLASSES, start=1):
        count = min(int(rng.poisson(spec.rate)), 3)
        if cls == forced:
            count = max(count, 1)
        for _ in range(count):
            mask = spec.shape(rng, h, w)
            if mask.any():
                instances.append((cls, mask))
    # Painter's order: large objects behind, small and thin ones in front.
    instances.sort(key=lambda item: -int(item[1].sum()))
    for cls, mask in instances:
        spec = _OBJECT_CLASSES[cls - 1]
        paste_texture(rng, image, mask, spec.texture, spec.tint)
    return to_uint8(image), label_map((h, w), instances, band_width(h, w))


__all__ = ["CLASS_NAMES", "NUM_CLASSES", "ClassSpec", "draw_sample"]
