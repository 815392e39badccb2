"""Joint image + mask augmentation (torchvision.transforms.v2).

Every transform here is a ``v2.Compose`` that takes a ``tv_tensors.Image``
followed by any number of ``tv_tensors.Mask`` and returns them in the same
order. The geometric ops (crop, resize, flip) are applied to every input with
the *same* random parameters, so

* a segmentation mask stays aligned with its image (masks use NEAREST
  interpolation automatically, so class ids are never blended), and
* a boolean pixel mask of masked patches (selective-masking pretraining)
  moves with the image: METHOD.md, "geometric augmentation moves the mask
  with the image".

Photometric ops (colour jitter, dtype conversion, normalisation) touch the
image only. Example::

    image, mask = train_transform(size=256)(image, mask)
    image, mask, patch_mask = train_transform(size=256)(image, mask, patch_mask)

The recipe follows METHOD.md ("Augmentation"): train = RandomResizedCrop
(scale 0.25-1) + horizontal flip + colour jitter; val = shorter side then
centre crop; test = shorter side only (any size, batch 1). The colour jitter
strength is not in METHOD.md: the authors used albumentations' ``ColorJitter``
with its defaults (0.2 for brightness/contrast/saturation/hue, applied with
probability 0.5), which is what ``color_jitter=0.2, jitter_p=0.5`` gives.

Resizing (config key ``antialias``): images are resized bilinearly with
antialiasing by default (torchvision's default); ``antialias=False`` is the
authors' OpenCV-like bilinear resize, which samples without low-pass
filtering when it shrinks (METHOD.md item 9). Masks always use NEAREST.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2

from .config import DEFAULT_MEAN, DEFAULT_STD


def _to_normalised_float(mean: Sequence[float], std: Sequence[float]) -> list:
    """uint8 or float [0, 1] image -> float32 normalised; masks untouched.

    ``ToDtype`` with a plain dtype converts images only, so class-id masks keep
    their integer dtype and boolean pixel masks stay boolean.
    """
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(
    size: int = 256,
    scale: tuple[float, float] = (0.25, 1.0),
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    color_jitter: float = 0.2,
    jitter_p: float = 0.5,
    antialias: bool = True,
) -> v2.Compose:
    """Training augmentation: random crop of ``scale`` of the area resized to
    ``size`` x ``size``, horizontal flip (p=0.5), colour jitter (image only),
    then float conversion and normalisation. ``color_jitter=0`` drops the
    jitter (useful for tests and for geometry-only pipelines)."""
    steps = [v2.RandomResizedCrop(size, scale=scale, antialias=antialias), v2.RandomHorizontalFlip(p=0.5)]
    if color_jitter > 0 and jitter_p > 0:
        jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(color_jitter, 0.5))
        steps.append(v2.RandomApply([jitter], p=jitter_p))
    return v2.Compose(steps + _to_normalised_float(mean, std))


def val_transform(
    size: int = 256, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
    antialias: bool = True,
) -> v2.Compose:
    """Validation: shorter side to ``size``, then a centre ``size`` x ``size``
    crop, so that validation images can be batched."""
    return v2.Compose([v2.Resize(size, antialias=antialias), v2.CenterCrop(size)] + _to_normalised_float(mean, std))


def test_transform(
    size: int = 256, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
    antialias: bool = True,
) -> v2.Compose:
    """Test: shorter side to ``size`` only; the aspect ratio is kept, so the
    result has any size and test batches hold one image."""
    return v2.Compose([v2.Resize(size, antialias=antialias)] + _to_normalised_float(mean, std))


def normalise_transform(
    mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD
) -> v2.Compose:
    """No geometry: float conversion and normalisation only. This is what a
    :class:`~selmask_lib.data.base.SegmentationDataset` applies when it is given
    no transform."""
    return v2.Compose(_to_normalised_float(mean, std))


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A batch of float [0, 1] images ``[B, 3, H, W]`` normalised like the transforms above.

    For images that bypass a transform, e.g. the scoring views selective
    masking feeds straight to the model.
    """
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


__all__ = [
    "normalise",
    "train_transform",
    "val_transform",
    "test_transform",
    "normalise_transform",
]

# ``test_transform`` starts with "test": tell pytest it is not a test when a
# test module imports it by name.
test_transform.__test__ = False
