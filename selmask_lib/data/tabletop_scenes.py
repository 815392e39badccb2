"""The ``toy_tabletop`` dataset's scenes: things on an indoor table, drawn from a seed (pure, no files written).

One of the two "general" embedded domains (its cross partner is
``toy_street``): warm indoor light, a wall and a wooden or cloth table seen
from above at an angle, and household objects. Nothing in it looks like a
street, so pretraining on one and fine-tuning on the other is a real domain
shift, as VOC <-> Cityscapes is in the paper.

What the images look like
-------------------------
Each image is 64-128 px on each side. The background (class 0) is a painted
wall in a pastel colour (faint plaster texture, lit from one side) above a
table top that is either wood (a grain of stretched sine rings in browns) or
a checked table cloth (``skimage.data.checkerboard``, tinted). Objects lie on
the table; large ones are drawn first so small ones stay visible.

Classes (index order, background first)
---------------------------------------
====  ==========  ==================================================  ==========
 idx  name        shape / texture                                     frequency
====  ==========  ==================================================  ==========
 0    background  pastel wall, wooden or checked table top            ~80 %
 1    plate       large ellipse, white or cream, with a darker rim    ~6.3 %
 2    book        rotated rectangle, saturated cover with printed     ~6.5 %
                  text texture and a dark spine band
 3    mug         upright cylinder with an elliptic opening and a     ~2.2 %
                  ring handle 2-3 px thick
 4    fruit       2-4 round fruits (orange, red or green apples)      ~1.7 %
                  with a highlight
 5    cutlery     knife, fork or spoon: a 3-4 px wide metal handle,   ~1.6 %
                  fork tines 2 px wide, spoon bowl
 6    coin        2-5 small gold or copper disks 7-11 px across       ~1.9 %
                  (coins texture)
====  ==========  ==================================================  ==========

Frequencies are shares of the labelled (non-void) pixels of the default train
split (seed 0), measured by :func:`selmask_lib.data.embedded.class_frequencies`.
The rare classes (cutlery, coin) are small, thin and detail-rich, yet nothing
is thinner than 2 px, so every class can be learnt by the demo fine-tuning.
Labels carry a 1 px (images shorter than 96 px) or 2 px void band (255) just
outside every object's boundary, as the synthetic set does.

Every split that has at least 6 images contains every object class: image
``i`` of a split holds at least one instance of object class ``1 + i % 6``.
Determinism: every image is drawn by its own generator
(:func:`selmask_lib.data.drawing.sample_rng`); no global random state is used.
"""

from __future__ import annotations

import numpy as np

from selmask_lib.data.drawing import (
    band_width,
    box,
    centre,
    detail,
    disk,
    forced_class,
    image_shape,
    label_map,
    paste_texture,
    random_crop,
    rotated_rect,
    sample_rng,
    thick_line,
    to_uint8,
)

# Bump when the drawing below changes, so cached trees are regenerated.
GENERATOR_VERSION = 2
DOMAIN_CODE = 2  # keeps this domain's generators apart from the other domains' with the same seed

CLASS_NAMES = ("background", "plate", "book", "mug", "fruit", "cutlery", "coin")
PLATE, BOOK, MUG, FRUIT, CUTLERY, COIN = range(1, 7)
# Mean number of instances per image (Poisson, at most 3), in painter's order (large first).
_RATES = {PLATE: 1.0, BOOK: 1.0, MUG: 0.8, FRUIT: 0.7, CUTLERY: 0.9, COIN: 1.0}

_WALLS = ((0.9, 0.85, 0.72), (0.78, 0.86, 0.78), (0.8, 0.82, 0.9), (0.92, 0.78, 0.7))
_COVERS = ((0.75, 0.15, 0.15), (0.15, 0.35, 0.7), (0.15, 0.55, 0.3), (0.85, 0.65, 0.1), (0.45, 0.2, 0.55))
_MUGS = ((0.95, 0.95, 0.92), (0.2, 0.45, 0.75), (0.8, 0.3, 0.2), (0.3, 0.3, 0.3))
_FRUITS = ((0.95, 0.55, 0.08), (0.8, 0.12, 0.1), (0.5, 0.75, 0.15))


# --------------------------------------------------------------------------- background
def _room(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A pastel wall above a wooden or checked table top that fills most of the image."""
    edge = int(h * rng.uniform(0.08, 0.3))
    image = np.zeros((h, w, 3), np.float32)
    image[:edge] = _wall(rng, edge, w)
    table = box(edge, h, 0, w, h, w)
    image[table] = (_wood(rng, h, w) if rng.random() < 0.6 else _cloth(rng, h, w))[table]
    return image


def _wall(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A pastel wall lit from one side, with a faint plaster texture."""
    colour = np.asarray(_WALLS[int(rng.integers(len(_WALLS)))], np.float32)
    light = np.linspace(1.0, rng.uniform(0.75, 0.95), w, dtype=np.float32)[::int(rng.choice([-1, 1]))]
    plaster = detail(rng, "gravel", max(h, 1), w, zoom=(0.3, 0.6)) * 0.025 if h else 0.0
    return np.clip(colour * light[None, :, None] + np.asarray(plaster)[..., None], 0, 1)


def _wood(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Wood grain: sine rings stretched along the planks, distorted by a smooth noise, in browns."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = detail(rng, "grass", h, w, zoom=(0.08, 0.15)) * rng.uniform(1.5, 3.0)   # smooth: a small crop enlarged
    angle = rng.uniform(-0.3, 0.3)
    across = rows * np.cos(angle) - cols * np.sin(angle)
    grain = 0.5 + 0.5 * np.sin(across * rng.uniform(0.35, 0.6) + warp)
    light, dark = np.array([0.72, 0.5, 0.3]), np.array([0.45, 0.28, 0.15])
    tone = rng.uniform(0.8, 1.1)
    return ((dark + (light - dark) * grain[..., None]) * tone).astype(np.float32)


def _cloth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A checked table cloth: a tinted crop of the checkerboard with a little weave."""
    checks = random_crop(rng, "checkerboard", h, w, zoom=(1.6, 3.0), mode="L")[..., None]
    tint = _FRUITS[int(rng.integers(2))] if rng.random() < 0.5 else (0.2, 0.35, 0.7)
    weave = detail(rng, "text", h, w, zoom=(2.0, 3.0))[..., None] * 0.03
    return np.clip(0.92 - checks * (0.92 - np.asarray(tint, np.float32) * 0.8) + weave, 0, 1)


# --------------------------------------------------------------------------- objects
def _plate(rng: np.random.Generator, image: np.ndarray, m: int) -> np.ndarray:
    """A plate seen at an angle: a white or cream ellipse with a darker rim ring."""
    h, w, _ = image.shape
    cy, cx = centre(rng, h, w, margin=0.2)
    r = m * rng.uniform(0.18, 0.28)
    squash = rng.uniform(0.6, 0.85)
    mask = disk(cy, cx, r * squash, r, h, w)
    white = rng.uniform(0.85, 0.97)
    image[mask] = (white, white, white * rng.uniform(0.85, 1.0))
    rim = mask & ~disk(cy, cx, r * squash * 0.72, r * 0.72, h, w)
    image[rim] *= 0.82
    return mask


def _book(rng: np.random.Generator, image: np.ndarray, m: int) -> np.ndarray:
    """A closed book: rotated rectangle with a printed cover and a dark spine band."""
    h, w, _ = image.shape
    cy, cx = centre(rng, h, w, margin=0.2)
    half_len, half_wid = m * rng.uniform(0.14, 0.22), m * rng.uniform(0.1, 0.15)
    angle = rng.uniform(0, np.pi)
    mask = rotated_rect(cy, cx, half_len, half_wid, angle, h, w)
    if mask.any():
        paste_texture(rng, image, mask, "text", _COVERS[int(rng.integers(len(_COVERS)))])
        spine_at = np.array([cy, cx]) + (half_wid - 1.5) * np.array([np.cos(angle), -np.sin(angle)])
        spine = mask & rotated_rect(*spine_at, half_len, 1.8, angle, h, w)
        image[spine] *= 0.5
    return mask


def _mug(rng: np.random.Generator, image: np.ndarray, m: int) -> np.ndarray:
    """An upright mug: body, an elliptic dark opening on top, a ring handle 2-3 px thick."""
    h, w, _ = image.shape
    cy, cx = centre(rng, h, w, margin=0.2)
    half_w, half_h = m * rng.uniform(0.07, 0.1), m * rng.uniform(0.08, 0.12)
    side = 1 if rng.random() < 0.5 else -1
    hx = cx + side * (half_w + half_h * 0.25)
    r = half_h * 0.55
    handle = disk(cy, hx, r, r, h, w) & ~disk(cy, hx, r - rng.uniform(2.0, 3.0), r - 2.5, h, w)
    body = box(cy - half_h, cy + half_h, cx - half_w, cx + half_w, h, w)
    top = disk(cy - half_h, cx, half_w * 0.35, half_w, h, w)
    mask = body | top | handle
    colour = np.asarray(_MUGS[int(rng.integers(len(_MUGS)))]) * rng.uniform(0.85, 1.0)
    image[mask] = colour
    shade = np.linspace(1.1, 0.75, w, dtype=np.float32)[None, :, None] if side < 0 else 1.0
    image[body] = np.clip((image * shade)[body], 0, 1)
    image[top & ~box(0, cy - half_h - half_w * 0.2, 0, w, h, w)] = colour * 0.35
    return mask


def _fruit(rng: np.random.Generator, image: np.ndarray, m: int) -> np.ndarray:
    """2-4 round fruits of one kind side by side, each with a highlight."""
    h, w, _ = image.shape
    cy, cx = centre(rng, h, w, margin=0.2)
    colour = np.asarray(_FRUITS[int(rng.integers(len(_FRUITS)))], np.float32)
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(2, 5))):
        r = m * rng.uniform(0.05, 0.075)
        y, x = cy + rng.normal(0, r * 1.2), cx + rng.normal(0, r * 1.5)
        one = disk(y, x, r, r, h, w)
        image[one] = colour * rng.uniform(0.8, 1.0)
        image[disk(y - r * 0.4, x - r * 0.35, r * 0.25, r * 0.25, h, w) & one] = np.minimum(colour + 0.35, 1)
        mask |= one
    return mask


def _cutlery(rng: np.random.Generator, image: np.ndarray, m: int) -> np.ndarray:
    """A knife, fork or spoon: a 3-4 px metal handle and a blade, 2 px tines or a bowl."""
    h, w, _ = image.shape
    cy, cx = centre(rng, h, w, margin=0.15)
    length = m * rng.uniform(0.3, 0.45)
    angle = rng.uniform(0, 2 * np.pi)
    along = np.array([np.sin(angle), np.cos(angle)])
    across = np.array([np.cos(angle), -np.sin(angle)])
    start, neck = np.array([cy, cx]) - along * length / 2, np.array([cy, cx]) + along * length * 0.15
    tip = np.array([cy, cx]) + along * length / 2
    mask = thick_line(start, neck, rng.uniform(1.5, 2.0), h, w)
    kind = rng.integers(3)
    if kind == 0:                                   # knife: a wider blade
        mask |= thick_line(neck, tip, 2.2, h, w)
    elif kind == 1:                                 # fork: 3 tines 2 px wide, 1 px apart
        for offset in (-3.0, 0.0, 3.0):
            mask |= thick_line(neck + across * offset * 0.4, tip + across * offset, 1.0, h, w)
        mask |= thick_line(neck, neck + along * 2, 4.0, h, w)
    else:                                           # spoon: an oval bowl
        bowl = neck + along * length * 0.17
        mask |= disk(bowl[0], bowl[1], length * 0.17, length * 0.1, h, w, rotation=angle)
    if mask.any():
        paste_texture(rng, image, mask, "moon", (0.78, 0.8, 0.84))
    return mask


def _coins(rng: np.random.Generator, image: np.ndarray, m: int) -> np.ndarray:
    """2-5 small gold or copper coins 7-11 px across, close together."""
    h, w, _ = image.shape
    cy, cx = centre(rng, h, w, margin=0.15)
    tint = (0.9, 0.75, 0.25) if rng.random() < 0.5 else (0.8, 0.45, 0.25)
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(2, 6))):
        r = rng.uniform(3.5, 5.5)
        mask |= disk(cy + rng.normal(0, 4), cx + rng.normal(0, 4), r, r, h, w)
    if mask.any():
        paste_texture(rng, image, mask, "coins", tint)
    return mask


_DRAW = {PLATE: _plate, BOOK: _book, MUG: _mug, FRUIT: _fruit, CUTLERY: _cutlery, COIN: _coins}


# --------------------------------------------------------------------------- one sample
def draw_sample(seed: int, split: str, index: int,
                image_size: tuple[int, int] = (64, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Draw one tabletop image and its label map; a pure function of its arguments.

    Returns ``image`` uint8 [H, W, 3] and ``label`` uint8 [H, W] with values
    in ``range(len(CLASS_NAMES))`` and 255 for the void band.
    """
    rng = sample_rng(seed, split, index, DOMAIN_CODE)
    h, w = image_shape(rng, image_size)
    image = _room(rng, h, w)
    forced = forced_class(index, len(_RATES))
    instances = []
    for cls, rate in _RATES.items():            # painter's order: large classes first
        count = min(int(rng.poisson(rate)), 3)
        for _ in range(max(count, 1) if cls == forced else count):
            mask = _DRAW[cls](rng, image, min(h, w))
            if mask.any():
                instances.append((cls, mask))
    return to_uint8(image), label_map((h, w), instances, band_width(h, w))


__all__ = ["CLASS_NAMES", "GENERATOR_VERSION", "draw_sample"]
