"""Pretraining data: partitions, the scoring view of an image, and augmented (image, pixel mask) pairs.

Kept apart from the training loops so each piece can be read (and tested)
alone. The one rule that ties them together: a fixed patch mask is defined on
the *scoring view* of an image (shorter side ``score_size``), and the
training augmentation crops and flips image and pixel mask together, so the
mask moves with the image (METHOD.md).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .config import PretrainConfig
from .data import UnlabelledImages, load_pretraining_images, resolve_data_root
from .errors import SelmaskError
from .masking import patch_grid, pixel_mask, random_mask


def pretraining_pool(cfg: PretrainConfig) -> UnlabelledImages:
    """The pretraining images of ``cfg.dataset``, the first ``cfg.max_images`` in list order."""
    pool = load_pretraining_images(cfg.dataset, resolve_data_root(cfg.dataset, cfg.data_root))
    if cfg.max_images is not None and cfg.max_images < len(pool):
        pool = UnlabelledImages(pool.paths[: cfg.max_images])
    return pool


def partition_indices(n_images: int, n_partitions: int) -> list[list[int]]:
    """K interleaved partitions: partition i holds images i, i+K, i+2K, ... (METHOD.md)."""
    if n_images < n_partitions:
        raise SelmaskError(
            f"{n_images} pretraining images cannot fill n_partitions={n_partitions} partitions"
        )
    return [list(range(start, n_images, n_partitions)) for start in range(n_partitions)]


def train_val_split(indices: Sequence[int], val_fraction: float) -> tuple[list[int], list[int]]:
    """Split in list order: the last ``val_fraction`` (at least one image) is validation.

    METHOD.md says 90/10 without saying which images; list order keeps it
    reproducible and independent of the seed. With fewer than two images, or
    ``val_fraction == 0``, there is no validation set.
    """
    indices = list(indices)
    n_val = int(len(indices) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(indices) >= 2:
        n_val = 1
    return indices[: len(indices) - n_val], indices[len(indices) - n_val :]


def scoring_view(pool: UnlabelledImages, index: int, score_size: int) -> torch.Tensor:
    """Image ``index`` with its shorter side resized to ``score_size``: float [3, h, w] in [0, 1].

    Selective masks are scored, saved and later applied on exactly this view.
    """
    image = tv_tensors.Image(pool[index])
    return v2.functional.resize(image, [score_size], antialias=True).as_subclass(torch.Tensor)


class ReconstructionDataset(Dataset):
    """Augmented images of a pretraining subset -> ``(image [3, S, S], pixel_mask [S, S])``.

    Without ``patch_masks`` the pixel mask is all False: random masks are drawn
    fresh for every batch by the training loop. With ``patch_masks`` (a dict
    pool index -> Bool [P] on the image's scoring view) the pixel mask is built
    on the scoring view and cropped and flipped together with the image.
    """

    def __init__(
        self,
        pool: UnlabelledImages,
        indices: Sequence[int],
        transform,
        score_size: int,
        n_patches: int,
        patch_masks: dict[int, torch.Tensor] | None = None,
    ):
        self.pool, self.indices, self.transform = pool, list(indices), transform
        self.score_size, self.n_patches, self.patch_masks = score_size, n_patches, patch_masks
        if patch_masks is not None:
            missing = [i for i in self.indices if i not in patch_masks]
            if missing:
                raise SelmaskError(f"no saved mask for pretraining image {pool.ids[missing[0]]!r}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices[item]
        if self.patch_masks is None:
            image = self.pool[index]  # [3, H, W]
            pixels = torch.zeros(image.shape[-2:], dtype=torch.bool)
        else:
            image = scoring_view(self.pool, index, self.score_size)  # [3, h, w]
            grid = patch_grid(*image.shape[-2:], self.n_patches)
            pixels = pixel_mask(self.patch_masks[index][None], grid)[0]  # [h, w]
        image, pixels = self.transform(tv_tensors.Image(image), tv_tensors.Mask(pixels))
        return image.as_subclass(torch.Tensor), pixels.as_subclass(torch.Tensor).bool()


def masked_inputs(images: torch.Tensor, pixel_masks: torch.Tensor, crop_grid: torch.Tensor, mask_ratio: float,
                  generator: torch.Generator) -> torch.Tensor:
    """The network's input: ``images [B, 3, S, S]`` with masked pixels set to the dataset mean (0 here).

    Fixed masks arrive as ``pixel_masks [B, S, S]`` from a
    :class:`ReconstructionDataset`; a batch without any (random masking)
    gets a fresh random patch mask per image on ``crop_grid``, drawn from
    ``generator`` (a CPU generator, so the draws are the same on any device)
    and expanded to pixels on the images' device.
    """
    if not pixel_masks.any():
        patches = random_mask(images.shape[0], crop_grid.shape[0], mask_ratio, generator).to(images.device)  # [B, P]
        pixel_masks = pixel_mask(patches, crop_grid)  # [B, S, S]
    return images.masked_fill(pixel_masks.unsqueeze(1), 0.0)
