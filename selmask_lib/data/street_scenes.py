"""The ``toy_street`` dataset's scenes: an outdoor street, drawn from a seed (pure, no files written).

One of the two "general" embedded domains (its cross partner is
``toy_tabletop``, an indoor scene with other colours, textures and objects),
a miniature of Cityscapes: many object classes of very different sizes seen
from the street, with perspective.

What the images look like
-------------------------
Each image is 64-128 px on each side. The background (class 0) is a street:
sky with a vertical gradient and faint clouds at the top, a row of building
facades (brick texture in grey, red or beige, with dark window grids), a
paved sidewalk and an asphalt road (gravel texture) with white lane dashes.
Objects stand on the sidewalk or the road and are drawn far to near, so near
objects hide far ones; objects lower in the image (nearer) are larger.

Classes (index order, background first)
---------------------------------------
====  ==========  ==================================================  ==========
 idx  name        shape / texture                                     frequency
====  ==========  ==================================================  ==========
 0    background  sky, facades with windows, sidewalk, road           ~76 %
 1    vegetation  tree crowns of 3-6 overlapping disks on a trunk,    ~5.8 %
                  grass texture in greens
 2    car         body, roof with dark windows and black wheels, in   ~7.3 %
                  one of six paint colours
 3    person      head, torso in a shirt colour, two legs >= 2 px     ~5.8 %
 4    pole        vertical dark green metal bar 4-6 px wide           ~2.0 %
 5    sign        disk or triangle with a white centre and a red or   ~1.0 %
                  blue rim, 10-15 px across, on top of a pole
 6    bicycle     two wheel rings 2-3 px thick and a frame of 2-3 px  ~1.7 %
                  bars, orange or yellow
====  ==========  ==================================================  ==========

Frequencies are shares of the labelled (non-void) pixels of the default train
split (seed 0), measured by :func:`selmask_lib.data.embedded.class_frequencies`.
As in Cityscapes, the rare classes (sign, bicycle, pole) are small and thin:
nothing is thinner than 2 px, so every class can be learnt by the demo
fine-tuning. Labels carry a 1 px (images shorter than 96 px) or 2 px void
band (255) just outside every object's boundary, as the synthetic set does.

Every split that has at least 6 images contains every object class: image
``i`` of a split holds at least one instance of object class ``1 + i % 6``.
Determinism: every image is drawn by its own generator
(:func:`selmask_lib.data.drawing.sample_rng`); no global random state is used.
"""

from __future__ import annotations

import numpy as np
from skimage import draw

from selmask_lib.data.drawing import (
    band_width,
    box,
    detail,
    disk,
    forced_class,
    image_shape,
    label_map,
    mask_from,
    paste_texture,
    sample_rng,
    thick_line,
    to_uint8,
)

# Bump when the drawing below changes, so cached trees are regenerated.
GENERATOR_VERSION = 2
DOMAIN_CODE = 1  # keeps this domain's generators apart from the other domains' with the same seed

CLASS_NAMES = ("background", "vegetation", "car", "person", "pole", "sign", "bicycle")
VEGETATION, CAR, PERSON, POLE, SIGN, BICYCLE = range(1, 7)
# Mean number of instances per image (Poisson, at most 3): with the sizes, it sets each class's share.
_RATES = {VEGETATION: 1.3, CAR: 1.0, PERSON: 1.4, POLE: 1.0, SIGN: 1.2, BICYCLE: 0.6}

_CAR_PAINTS = ((0.75, 0.1, 0.1), (0.15, 0.25, 0.65), (0.85, 0.85, 0.85), (0.12, 0.12, 0.14),
               (0.6, 0.62, 0.66), (0.2, 0.45, 0.3))
_SHIRTS = ((0.2, 0.3, 0.7), (0.7, 0.2, 0.3), (0.85, 0.75, 0.2), (0.25, 0.25, 0.25), (0.9, 0.9, 0.9))
_FACADES = ((0.55, 0.55, 0.58), (0.62, 0.32, 0.25), (0.8, 0.72, 0.55))


# --------------------------------------------------------------------------- background
def _street(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, int]:
    """Sky, facades, sidewalk and road; returns the image and the row where the road starts."""
    horizon = int(h * rng.uniform(0.38, 0.5))
    image = np.zeros((h, w, 3), np.float32)
    _sky(rng, image, horizon)
    _facades(rng, image, horizon)
    _road(rng, image, horizon)
    return image, horizon


def _sky(rng: np.random.Generator, image: np.ndarray, horizon: int) -> None:
    """A blue-to-pale vertical gradient with faint smooth clouds."""
    h, w, _ = image.shape
    top = np.array([0.35, 0.55, 0.85], np.float32) + rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    low = np.array([0.78, 0.84, 0.9], np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    clouds = np.clip(detail(rng, "grass", h, w, zoom=(0.08, 0.15)), 0, None)[..., None] * 0.08
    image[:] = (1 - t) * top + t * low + clouds
    del horizon  # the facades cover the sky down to the horizon


def _facades(rng: np.random.Generator, image: np.ndarray, horizon: int) -> None:
    """Buildings of different heights and colours, each with a grid of dark windows."""
    h, w, _ = image.shape
    x = 0
    while x < w:
        width = int(rng.integers(w // 5, w // 2 + 1))
        top = int(horizon * rng.uniform(0.05, 0.6))
        block = np.zeros((h, w), bool)
        block[top:horizon, x:x + width] = True
        paste_texture(rng, image, block, "brick", _FACADES[int(rng.integers(len(_FACADES)))])
        _windows(rng, image, top, horizon, x, min(x + width, w))
        x += width


def _windows(rng: np.random.Generator, image: np.ndarray, top: int, bottom: int, x0: int, x1: int) -> None:
    """Dark window panes in a grid on one facade."""
    pitch_y, pitch_x = int(rng.integers(6, 10)), int(rng.integers(6, 10))
    glass = np.array([0.15, 0.18, 0.25], np.float32) + rng.uniform(0, 0.15)
    for y in range(top + 3, bottom - 5, pitch_y):
        for x in range(x0 + 2, x1 - 3, pitch_x):
            image[y:y + 4, x:x + 3] = glass


def _road(rng: np.random.Generator, image: np.ndarray, horizon: int) -> None:
    """Sidewalk strip at the horizon, asphalt below with white lane dashes."""
    h, w, _ = image.shape
    curb = min(h, horizon + max(3, (h - horizon) // 6))
    ground = np.zeros((h, w), bool)
    ground[horizon:curb] = True
    paste_texture(rng, image, ground, "brick", (0.7, 0.68, 0.64))
    asphalt = np.zeros((h, w), bool)
    asphalt[curb:] = True
    paste_texture(rng, image, asphalt, "gravel", tuple(np.full(3, rng.uniform(0.3, 0.42))), zoom=(2.0, 4.0))
    lane = curb + (h - curb) * rng.uniform(0.4, 0.7)
    for x in range(int(rng.integers(0, 10)), w, 16):
        image[int(lane):int(lane) + 2, x:x + 8] = 0.92


# --------------------------------------------------------------------------- objects
def _scale(y: float, horizon: int, h: int) -> float:
    """Perspective: how large an object standing at row ``y`` is, relative to one at the bottom."""
    return 0.45 + 0.55 * (y - horizon) / max(h - horizon, 1)


def _vegetation(rng: np.random.Generator, image: np.ndarray, base: tuple[float, float], m: int) -> np.ndarray:
    """A tree: 3-6 overlapping disks of foliage on a short trunk (the trunk is vegetation too)."""
    h, w, _ = image.shape
    y, x = base
    size = m * rng.uniform(0.12, 0.2)
    trunk = box(y - size * 1.2, y, x - max(1.5, size * 0.1), x + max(1.5, size * 0.1), h, w)
    crown = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = y - size * 1.4 + rng.normal(0, size * 0.3), x + rng.normal(0, size * 0.45)
        crown |= disk(cy, cx, size * rng.uniform(0.45, 0.7), size * rng.uniform(0.45, 0.7), h, w)
    green = (rng.uniform(0.15, 0.3), rng.uniform(0.42, 0.6), rng.uniform(0.12, 0.22))
    for part, texture, tint in ((trunk, "gravel", (0.35, 0.25, 0.15)), (crown, "grass", green)):
        if part.any():
            paste_texture(rng, image, part, texture, tint)
    return trunk | crown


def _car(rng: np.random.Generator, image: np.ndarray, base: tuple[float, float], size: float) -> np.ndarray:
    """A car seen from the side: body, roof with dark windows, two black wheels."""
    h, w, _ = image.shape
    y, x = base
    length, height = size * rng.uniform(0.8, 1.1), size * rng.uniform(0.22, 0.3)
    body = box(y - height * 1.4, y - height * 0.4, x - length / 2, x + length / 2, h, w)
    roof_y = y - height * 1.4 - height * 0.35
    rr, cc = draw.polygon([roof_y + height * 0.5, roof_y - height * 0.2, roof_y - height * 0.2, roof_y + height * 0.5],
                          [x - length * 0.32, x - length * 0.18, x + length * 0.2, x + length * 0.35], shape=(h, w))
    roof = mask_from(rr, cc, h, w)
    paint = _CAR_PAINTS[int(rng.integers(len(_CAR_PAINTS)))]
    shape = body | roof
    if shape.any():
        paste_texture(rng, image, shape, "camera", paint)
    window = roof & ~box(roof_y - height, roof_y + height * 0.05, x - length, x + length, h, w)
    image[window & ~body] = (0.2, 0.25, 0.3)
    wheels = np.zeros((h, w), bool)
    for dx in (-0.3, 0.3):
        wheels |= disk(y - height * 0.35, x + dx * length, height * 0.38, height * 0.38, h, w)
    image[wheels] = (0.08, 0.08, 0.08)
    return shape | wheels


def _person(rng: np.random.Generator, image: np.ndarray, base: tuple[float, float], size: float) -> np.ndarray:
    """A standing person: head, torso in a shirt colour, two legs at least 2 px wide."""
    h, w, _ = image.shape
    y, x = base
    tall = size * rng.uniform(0.8, 1.05)
    leg_w = max(1.1, tall * 0.05)
    legs = (thick_line((y, x - leg_w), (y - tall * 0.45, x - leg_w * 0.5), leg_w, h, w)
            | thick_line((y, x + leg_w), (y - tall * 0.45, x + leg_w * 0.5), leg_w, h, w))
    half_width = max(1.8, tall * 0.1)
    torso = box(y - tall * 0.85, y - tall * 0.42, x - half_width, x + half_width, h, w)
    head = disk(y - tall * 0.9, x, max(1.6, tall * 0.08), max(1.6, tall * 0.08), h, w)
    image[legs] = np.array([0.15, 0.15, 0.3]) + rng.uniform(0, 0.1)
    if torso.any():
        paste_texture(rng, image, torso, "text", _SHIRTS[int(rng.integers(len(_SHIRTS)))])
    image[head] = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.6, 1.05)
    return legs | torso | head


def _pole(rng: np.random.Generator, image: np.ndarray, base: tuple[float, float], tall: float) -> np.ndarray:
    """A vertical dark green metal pole 4-6 px wide."""
    h, w, _ = image.shape
    y, x = base
    half_width = rng.uniform(2.0, 2.8)
    mask = box(y - tall, y, x - half_width, x + half_width, h, w)
    if mask.any():
        paste_texture(rng, image, mask, "moon", (0.18, 0.3, 0.22))
    return mask


def _sign(rng: np.random.Generator, image: np.ndarray, centre_yx: tuple[float, float]) -> np.ndarray:
    """A round or triangular traffic sign 10-15 px across: white centre, red or blue rim."""
    h, w, _ = image.shape
    cy, cx = centre_yx
    r = rng.uniform(5.0, 7.5)
    if rng.random() < 0.5:
        outer, inner = disk(cy, cx, r, r, h, w), disk(cy, cx, r * 0.55, r * 0.55, h, w)
    else:
        angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        outer = mask_from(*draw.polygon(cy + r * 1.2 * np.sin(angles), cx + r * 1.2 * np.cos(angles), (h, w)), h, w)
        inner = mask_from(*draw.polygon(cy + r * 0.5 * np.sin(angles), cx + r * 0.5 * np.cos(angles), (h, w)), h, w)
    image[outer] = (0.85, 0.1, 0.1) if rng.random() < 0.6 else (0.1, 0.25, 0.8)
    image[inner & outer] = (0.95, 0.95, 0.95)
    return outer


def _bicycle(rng: np.random.Generator, image: np.ndarray, base: tuple[float, float], size: float) -> np.ndarray:
    """Two wheel rings 2-3 px thick and a frame of 2-3 px bars: the thin, detail-rich class."""
    h, w, _ = image.shape
    y, x = base
    r = max(4.0, size * rng.uniform(0.14, 0.18))
    thick = rng.uniform(2.0, 2.8)
    hubs = [(y - r, x - r * 1.25), (y - r, x + r * 1.25)]
    wheels = np.zeros((h, w), bool)
    for hy, hx in hubs:
        wheels |= disk(hy, hx, r, r, h, w) & ~disk(hy, hx, r - thick, r - thick, h, w)
    seat, bar = (y - r * 2.2, x - r * 0.4), (y - r * 2.4, x + r * 1.0)
    half = thick / 2 + 0.2
    frame = (thick_line(hubs[0], seat, half, h, w) | thick_line(seat, bar, half, h, w)
             | thick_line(bar, hubs[1], half, h, w) | thick_line(hubs[0], (y - r, x + r * 0.2), half, h, w)
             | thick_line((y - r, x + r * 0.2), seat, half, h, w))
    image[wheels] = (0.1, 0.1, 0.1)
    image[frame] = (0.95, 0.55, 0.05) if rng.random() < 0.5 else (0.95, 0.85, 0.1)
    return wheels | frame


# --------------------------------------------------------------------------- one sample
def _placements(rng: np.random.Generator, index: int, h: int, w: int, horizon: int) -> list[tuple[int, float, float]]:
    """(class, base row, base column) of every object, far to near (the painter's order)."""
    forced = forced_class(index, len(_RATES))
    curb = horizon + max(3, (h - horizon) // 6)
    placed = []
    for cls, rate in _RATES.items():
        count = min(int(rng.poisson(rate)), 3)
        for _ in range(max(count, 1) if cls == forced else count):
            on_road = cls in (CAR, PERSON, BICYCLE)
            y = rng.uniform(curb + 4, h) if on_road else rng.uniform(horizon + 1, curb + 2)
            placed.append((cls, float(y), float(rng.uniform(0.05 * w, 0.95 * w))))
    placed.sort(key=lambda item: item[1])
    return placed


def _draw_object(rng: np.random.Generator, image: np.ndarray, cls: int, y: float, x: float,
                 horizon: int) -> list[tuple[int, np.ndarray]]:
    """Paint one object standing at (y, x); return its labelled parts (a sign brings its pole)."""
    h, w, _ = image.shape
    m = min(h, w)
    size = m * _scale(y, horizon, h)
    if cls == VEGETATION:
        return [(cls, _vegetation(rng, image, (y, x), m))]
    if cls == CAR:
        return [(cls, _car(rng, image, (y, x), size * 0.7))]
    if cls == PERSON:
        return [(cls, _person(rng, image, (y, x), size * 0.7))]
    if cls == BICYCLE:
        return [(cls, _bicycle(rng, image, (y, x), size * 0.7))]
    tall = h * rng.uniform(0.3, 0.5) if cls == POLE else h * rng.uniform(0.15, 0.25)
    parts = [(POLE, _pole(rng, image, (y, x), tall))]
    if cls == SIGN:
        parts.append((SIGN, _sign(rng, image, (y - tall, x))))
    return parts


def draw_sample(seed: int, split: str, index: int,
                image_size: tuple[int, int] = (64, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street image and its label map; a pure function of its arguments.

    Returns ``image`` uint8 [H, W, 3] and ``label`` uint8 [H, W] with values
    in ``range(len(CLASS_NAMES))`` and 255 for the void band.
    """
    rng = sample_rng(seed, split, index, DOMAIN_CODE)
    h, w = image_shape(rng, image_size)
    image, horizon = _street(rng, h, w)
    instances = []
    for cls, y, x in _placements(rng, index, h, w, horizon):
        instances += [(c, mask) for c, mask in _draw_object(rng, image, cls, y, x, horizon) if mask.any()]
    return to_uint8(image), label_map((h, w), instances, band_width(h, w))


__all__ = ["CLASS_NAMES", "GENERATOR_VERSION", "draw_sample"]
