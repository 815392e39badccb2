"""The field datasets' scenes: crops and weeds on soil seen from above, drawn from a seed (pure).

Two embedded "field" domains, each a miniature of one of the paper's weed
datasets, and each other's cross partner (as Nassar 2020 <-> Sugarbeets
2016): 3 classes, ``background`` (soil), ``crop`` and ``weed``, every pixel
labelled (no void), in the field datasets' colours (black, green, red).
They differ in soil, crop and weed, so pretraining on one and fine-tuning on
the other is a real domain shift.

``toy_beet_field``: sugar beet rosettes with broad-leaf weeds on dark soil
--------------------------------------------------------------------------
Like Sugarbeets 2016: a robot's top-down view of dark, moist soil (gravel
texture in dark browns, with a few pale stones) and beet plants at regular
spacing along one or two rows.

====  ==========  ==================================================  ==========
 idx  name        shape / texture                                     frequency
====  ==========  ==================================================  ==========
 0    background  dark brown soil, gravel texture, pale stones        ~76 %
 1    crop        beet rosette: 5-9 broad oval leaves from a centre,  ~21 %
                  mid green with a pale midrib, along the rows
 2    weed        broad-leaf weed: 3-6 round leaves 5-10 px long,     ~2.9 %
                  yellow-green, anywhere
====  ==========  ==================================================  ==========

``toy_maize_field``: maize rows with grass weeds on light sandy soil
--------------------------------------------------------------------
Like Nassar 2020's maize orthomosaic tiles: dry, light sandy soil (fine
gravel texture in beige) and young maize plants in parallel rows at a
random angle, with grass tufts between them.

====  ==========  ==================================================  ==========
 idx  name        shape / texture                                     frequency
====  ==========  ==================================================  ==========
 0    background  light sandy soil, fine texture, dry cracks          ~81 %
 1    crop        maize plant: 4-7 long narrow leaves 3-5 px wide,    ~16 %
                  yellow-green, alternating along the row
 2    weed        grass tuft: 5-10 blades 2-3 px wide fanning from    ~2.7 %
                  a base point, blue-green, between the rows
====  ==========  ==================================================  ==========

Frequencies are shares of the pixels of the default train split (seed 0),
measured by :func:`selmask_lib.data.embedded.class_frequencies`. Weeds are
several times rarer than crops, smaller and thinner, as in the paper's
datasets; nothing is thinner than 2 px, so both can be learnt by the demo
fine-tuning.

Every split that has at least 2 images contains both plant classes: even
images hold at least one crop plant, odd ones at least one weed (and most
images hold both). Determinism: every image is drawn by its own generator
(:func:`selmask_lib.data.drawing.sample_rng`); no global random state is used.
"""

from __future__ import annotations

import numpy as np

from selmask_lib.data.drawing import (
    detail,
    disk,
    forced_class,
    image_shape,
    label_map,
    leaf,
    paste_texture,
    sample_rng,
    thick_line,
    to_uint8,
)

# Bump when the drawing below changes, so cached trees are regenerated.
GENERATOR_VERSION = 1
BEET_DOMAIN_CODE, MAIZE_DOMAIN_CODE = 3, 4  # keep the domains' generators apart with the same seed
CROP, WEED = 1, 2


# --------------------------------------------------------------------------- soils
def _soil(rng: np.random.Generator, h: int, w: int, colour: tuple[float, float, float],
          zoom: tuple[float, float]) -> np.ndarray:
    """Bare soil: gravel texture modulating ``colour``, with a smooth change of moisture across the image.

    Only the brightness varies between images, never the hue: soil of one field has one colour.
    """
    grain = 0.25 * detail(rng, "gravel", h, w, zoom=zoom)
    moisture = 0.12 * detail(rng, "grass", h, w, zoom=(0.08, 0.15))
    brightness = rng.uniform(0.85, 1.15)
    image = np.asarray(colour, np.float32) * (brightness * (1 + grain + moisture))[..., None]
    return np.clip(image, 0, 1).astype(np.float32)


def _dark_soil(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Dark, moist soil with a few pale stones (Sugarbeets-like)."""
    image = _soil(rng, h, w, (0.28, 0.2, 0.13), zoom=(1.5, 3.0))
    for _ in range(int(rng.integers(2, 7))):
        r = rng.uniform(1.0, 2.0)
        stone = disk(rng.uniform(0, h), rng.uniform(0, w), r, r * rng.uniform(1, 1.6), h, w)
        image[stone] = rng.uniform(0.45, 0.6)
    return image


def _sandy_soil(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Light, dry sandy soil with a few dark cracks (Nassar-like)."""
    image = _soil(rng, h, w, (0.76, 0.65, 0.47), zoom=(3.0, 5.0))
    for _ in range(int(rng.integers(1, 4))):
        y, x, angle = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
        end = (y + 15 * np.sin(angle), x + 15 * np.cos(angle))
        image[thick_line((y, x), end, 0.6, h, w)] *= 0.75
    return image


# --------------------------------------------------------------------------- plants
def _paint_leaves(rng: np.random.Generator, image: np.ndarray, leaves: list[np.ndarray],
                  tint: tuple[float, float, float]) -> np.ndarray:
    """Paint a plant in ``tint``, each leaf a little lighter or darker (so leaves read as leaves).

    One texture for the whole plant, then a brightness per leaf: a texture per
    leaf would cost most of the generation time.
    """
    plant = np.logical_or.reduce(leaves) if leaves else np.zeros(image.shape[:2], bool)
    if not plant.any():
        return plant
    paste_texture(rng, image, plant, "grass", tint, zoom=(0.3, 0.6))
    textured = image.copy()
    for mask in leaves:
        image[mask] = np.clip(textured[mask] * rng.uniform(0.85, 1.15), 0, 1)
    return plant


def _midribs(image: np.ndarray, plant: np.ndarray, ribs: np.ndarray) -> None:
    """Lighten the leaf midribs (only where the leaf is)."""
    image[ribs & plant] = np.minimum(image[ribs & plant] * 1.35 + 0.05, 1)


def _beet(rng: np.random.Generator, image: np.ndarray, cy: float, cx: float, m: int) -> np.ndarray:
    """A beet rosette: 5-9 broad oval leaves from a centre, mid green with pale midribs."""
    h, w, _ = image.shape
    count = int(rng.integers(5, 10))
    start = rng.uniform(0, 2 * np.pi)
    leaves, ribs = [], np.zeros((h, w), bool)
    for k in range(count):
        angle = start + 2 * np.pi * k / count + rng.normal(0, 0.2)
        length = m * rng.uniform(0.14, 0.24)
        leaves.append(leaf((cy, cx), angle, length, length * rng.uniform(0.5, 0.65), h, w, roundness=0.4))
        ribs |= thick_line((cy, cx), (cy + 0.8 * length * np.sin(angle), cx + 0.8 * length * np.cos(angle)),
                           0.5, h, w)
    plant = _paint_leaves(rng, image, leaves, (0.22, 0.52, 0.14))
    _midribs(image, plant, ribs)
    return plant


def _broadleaf_weed(rng: np.random.Generator, image: np.ndarray, cy: float, cx: float) -> np.ndarray:
    """A small broad-leaf weed: 3-6 round leaves 5-10 px long, yellow-green."""
    h, w, _ = image.shape
    count = int(rng.integers(3, 7))
    start = rng.uniform(0, 2 * np.pi)
    leaves = []
    for k in range(count):
        angle = start + 2 * np.pi * k / count
        length = rng.uniform(5.0, 10.0)
        mid = (cy + 0.55 * length * np.sin(angle), cx + 0.55 * length * np.cos(angle))
        leaves.append(disk(*mid, length * 0.45, length * 0.38, h, w, rotation=angle))
    return _paint_leaves(rng, image, leaves, (0.5, 0.62, 0.12))


def _maize(rng: np.random.Generator, image: np.ndarray, cy: float, cx: float, row_angle: float,
           m: int) -> np.ndarray:
    """A young maize plant: 4-7 long narrow leaves 3-5 px wide, alternating across the row."""
    h, w, _ = image.shape
    leaves, ribs = [], np.zeros((h, w), bool)
    for k in range(int(rng.integers(4, 8))):
        side = np.pi / 2 if k % 2 == 0 else -np.pi / 2
        angle = row_angle + side + rng.normal(0, 0.45)
        length = m * rng.uniform(0.18, 0.32)
        leaves.append(leaf((cy, cx), angle, length, rng.uniform(3.5, 5.5), h, w))
        ribs |= thick_line((cy, cx), (cy + 0.7 * length * np.sin(angle), cx + 0.7 * length * np.cos(angle)),
                           0.5, h, w)
    plant = _paint_leaves(rng, image, leaves, (0.42, 0.66, 0.16))
    _midribs(image, plant, ribs)
    return plant


def _grass_weed(rng: np.random.Generator, image: np.ndarray, cy: float, cx: float) -> np.ndarray:
    """A grass tuft: 5-10 blades 2-3 px wide fanning out from a base point, blue-green."""
    h, w, _ = image.shape
    heading = rng.uniform(0, 2 * np.pi)
    blades = []
    for _ in range(int(rng.integers(5, 11))):
        angle = heading + rng.normal(0, 0.7)
        length = rng.uniform(6.0, 14.0)
        tip = (cy + length * np.sin(angle), cx + length * np.cos(angle))
        blades.append(thick_line((cy, cx), tip, rng.uniform(1.0, 1.4), h, w))
    return _paint_leaves(rng, image, blades, (0.16, 0.42, 0.3))


# --------------------------------------------------------------------------- placements
def _row_points(rng: np.random.Generator, h: int, w: int, angle: float, spacing: float,
                rows: int, row_gap: float) -> list[tuple[float, float]]:
    """Plant positions along ``rows`` parallel rows through the image centre, ``spacing`` apart."""
    along = np.array([np.sin(angle), np.cos(angle)])
    across = np.array([np.cos(angle), -np.sin(angle)])
    middle = np.array([h / 2, w / 2]) + across * rng.uniform(-row_gap / 2, row_gap / 2)
    reach = np.hypot(h, w) / 2
    points = []
    for r in range(rows):
        offset = (r - (rows - 1) / 2) * row_gap
        for t in np.arange(-reach + rng.uniform(0, spacing), reach, spacing):
            y, x = middle + across * offset + along * (t + rng.normal(0, spacing * 0.1))
            if -4 <= y < h + 4 and -4 <= x < w + 4:
                points.append((float(y), float(x)))
    return points


def _weed_points(rng: np.random.Generator, index: int, h: int, w: int, rate: float) -> list[tuple[float, float]]:
    """Weed positions, anywhere; odd images get at least one, so every split holds weeds."""
    count = int(rng.poisson(rate))
    if forced_class(index, 2) == WEED:
        count = max(count, 1)
    return [(float(rng.uniform(0.1 * h, 0.9 * h)), float(rng.uniform(0.1 * w, 0.9 * w))) for _ in range(count)]


def _ensure_a_crop(points: list[tuple[float, float]], rng: np.random.Generator, index: int,
                   h: int, w: int) -> list[tuple[float, float]]:
    """Even images always hold a crop plant, even when the rows miss the image."""
    if forced_class(index, 2) == CROP and not any(0 <= y < h and 0 <= x < w for y, x in points):
        points = points + [(float(rng.uniform(0.3 * h, 0.7 * h)), float(rng.uniform(0.3 * w, 0.7 * w)))]
    return points


# --------------------------------------------------------------------------- samples
def draw_beet_sample(seed: int, split: str, index: int,
                     image_size: tuple[int, int] = (64, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One ``toy_beet_field`` image and its label map (0 soil, 1 crop, 2 weed); pure."""
    rng = sample_rng(seed, split, index, BEET_DOMAIN_CODE)
    h, w = image_shape(rng, image_size)
    m = min(h, w)
    image = _dark_soil(rng, h, w)
    angle = np.pi / 2 + rng.normal(0, 0.15)                      # rows run roughly up the image
    crops = _row_points(rng, h, w, angle, spacing=m * rng.uniform(0.4, 0.6),
                        rows=int(rng.integers(1, 3)), row_gap=m * rng.uniform(0.45, 0.6))
    crops = _ensure_a_crop(crops, rng, index, h, w)
    instances = [(CROP, _beet(rng, image, y, x, m)) for y, x in crops]
    instances += [(WEED, _broadleaf_weed(rng, image, y, x)) for y, x in _weed_points(rng, index, h, w, 2.0)]
    return to_uint8(image), label_map((h, w), [(c, mask) for c, mask in instances if mask.any()], 0)


def draw_maize_sample(seed: int, split: str, index: int,
                      image_size: tuple[int, int] = (64, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One ``toy_maize_field`` image and its label map (0 soil, 1 crop, 2 weed); pure."""
    rng = sample_rng(seed, split, index, MAIZE_DOMAIN_CODE)
    h, w = image_shape(rng, image_size)
    m = min(h, w)
    image = _sandy_soil(rng, h, w)
    angle = rng.uniform(0, np.pi)                                 # orthomosaic tiles: rows at any angle
    crops = _row_points(rng, h, w, angle, spacing=m * rng.uniform(0.25, 0.4),
                        rows=int(rng.integers(1, 4)), row_gap=m * rng.uniform(0.4, 0.55))
    crops = _ensure_a_crop(crops, rng, index, h, w)
    instances = [(CROP, _maize(rng, image, y, x, angle, m)) for y, x in crops]
    instances += [(WEED, _grass_weed(rng, image, y, x)) for y, x in _weed_points(rng, index, h, w, 2.5)]
    return to_uint8(image), label_map((h, w), [(c, mask) for c, mask in instances if mask.any()], 0)


__all__ = ["GENERATOR_VERSION", "draw_beet_sample", "draw_maize_sample"]
