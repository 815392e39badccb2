"""Pretraining data: partitions, the scoring view of an image, augmented images and their pixel masks.

Kept apart from the training loops so each piece can be read (and tested)
alone. The one rule that ties them together: a fixed patch mask is defined on
the *scoring view* of an image (shorter side ``score_size``), and the
training augmentation crops and flips image and pixel mask together, so the
mask moves with the image (METHOD.md).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .config import PretrainConfig
from .data import UnlabelledImages, load_pretraining_images, resolve_data_root
from .data.cache import DecodedCache, no_cache
from .device import to_device_without_waiting
from .errors import SelmaskError
from .masking import PATCH_SSIM_WINDOW, patch_grid, patch_index_map, pixel_mask, random_mask
from .transforms import as_outputs, as_uint8

# The smallest patch, in pixels of the image, that is worth scoring or reconstructing (check_patch_size).
MIN_PATCH_SIDE = PATCH_SSIM_WINDOW


def pretraining_pool(cfg: PretrainConfig) -> UnlabelledImages:
    """The pretraining images of ``cfg.dataset`` (``cfg.cityscapes_pool``), the first ``cfg.max_images``."""
    pool = load_pretraining_images(cfg.dataset, resolve_data_root(cfg.dataset, cfg.data_root),
                                   cityscapes_pool=cfg.cityscapes_pool)
    paths = pool.paths[: cfg.max_images] if cfg.max_images is not None else pool.paths
    return UnlabelledImages(paths, cache=DecodedCache(cfg.image_cache_mb))


def check_pool(pool: UnlabelledImages, cfg: PretrainConfig) -> None:
    """Decode every pretraining image and check its size (:func:`check_patch_size`) before training starts.

    A corrupt or too small image fails here, naming its file, before
    anything is written, instead of in a DataLoader worker mid-run.
    """
    pool.check_all(description=f"checking {cfg.dataset} pretraining images",
                   check_size=partial(check_patch_size, score_size=cfg.score_size, n_patches=cfg.n_patches))


def check_patch_size(path: Path, height: int, width: int, score_size: int, n_patches: int) -> None:
    """An image is too small if a patch of its scoring grid holds less than 3x3 px of it.

    The rule is decided on the scoring view, the size the pipeline gives the
    image (shorter side ``score_size``), where :func:`patch_grid` lays about
    sqrt(n_patches) strips along *each* side whatever the aspect ratio: a
    3x200 image becomes 256x17066 px and its patches 12x755 px. So at the
    scoring size alone every image passes; what a patch really holds is the
    image's own pixels under it, and upsampling adds none: those 12 rows of
    the view are 0.14 rows of the image. Hence the grid's patches (its
    regular step; only an axis's last strip differs, and it is never less
    than half a step) must span at least ``MIN_PATCH_SIDE`` (3) px of the
    image, and of the view (the 3x3 SSIM window of scoring must fit). A long
    axis's patches hold at least as many image pixels as the short axis's,
    so the shorter side decides: :func:`min_shorter_side`, 64 px with the
    paper's 256 px and 512 patches, 24 px with the smoke preset's 64 and 64.
    A 1x1 image and a 3x200 one fail. Random masking is held to the same
    rule, so both strategies train on the same pool.
    """
    needed = min_shorter_side(score_size, n_patches)
    if min(height, width) >= needed:
        return
    view_height, view_width = scoring_size(height, width, score_size)
    across = _patch_step(score_size, n_patches) * min(height, width) / score_size
    raise SelmaskError(
        f"{path}: image is {width}x{height} px, too small for the patch grid: scored at {view_width}x{view_height} "
        f"px, its patches would hold {across:.2f} px of the image across, fewer than {MIN_PATCH_SIDE}; "
        f"pretraining images need a shorter side of at least {needed} px (score_size={score_size}, "
        f"n_patches={n_patches})")


def min_shorter_side(score_size: int, n_patches: int) -> int:
    """The shortest shorter side a pretraining image may have (:func:`check_patch_size`)."""
    step = _patch_step(score_size, n_patches)
    if step < MIN_PATCH_SIDE:  # no image fits: the config's fault, not a file's
        raise SelmaskError(f"score_size={score_size} is too small for n_patches={n_patches}: its patches are "
                           f"{step} px, fewer than {MIN_PATCH_SIDE}; raise score_size or lower n_patches")
    return math.ceil(MIN_PATCH_SIDE * score_size / step)


def _patch_step(side: int, n_patches: int) -> int:
    """The regular patch side of :func:`patch_grid` on a ``side`` x ``side`` view, in px."""
    first = patch_grid(side, side, n_patches)[0]  # (y0, y1, x0, x1)
    return int(first[1] - first[0])


def scoring_size(height: int, width: int, score_size: int) -> tuple[int, int]:
    """(height, width) of :func:`scoring_view`: the shorter side ``score_size``, the other scaled and
    truncated to an integer as torchvision's resize does."""
    if height <= width:
        return score_size, int(score_size * width / height)
    return int(score_size * height / width), score_size


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


def scoring_view(pool: UnlabelledImages, index: int, score_size: int, antialias: bool = True) -> torch.Tensor:
    """Image ``index`` with its shorter side resized to ``score_size``: float [3, h, w] in [0, 1].

    Selective masks are scored, saved and later applied on exactly this view.
    ``antialias=False`` is the authors' OpenCV-like bilinear resize (config key ``antialias``).
    """
    image = tv_tensors.Image(pool[index])
    return v2.functional.resize(image, [score_size], antialias=antialias).as_subclass(torch.Tensor)


@dataclass(frozen=True)
class BakedMasks:
    """How fixed masks are burned into images (config ``bake_selective_masks``), as the authors did.

    Their selective steps save each masked image to disk (fill: the dataset
    mean colour as uint8; VOC as JPEG) and train on it with the usual
    augmentation, so colour jitter also changes the fill, while the target
    goes through the same geometry with nearest interpolation and no jitter.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    jpeg_quality: Optional[int] = None  # None: kept lossless
    uint8_targets: bool = False  # uint8_batches: the targets stay uint8 for the device to normalise (TargetLevels)

    @property
    def fill(self) -> tuple[int, int, int]:
        return tuple(round(255 * m) for m in self.mean)


def normalised_targets(targets: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 targets of baked items (``[..., 3, H, W]``) as the loss compares them: float, normalised.

    A loader worker's arithmetic for float batches; the device reads the same values from a table of
    them (:class:`TargetLevels`). ``mean`` and ``std``: float tensors ``[3, 1, 1]``.
    """
    return (targets.float() / 255 - mean) / std


class TargetLevels:
    """uint8 targets of baked items, normalised on their device exactly as a worker normalises them.

    With ``uint8_batches`` the targets travel as uint8. Computing :func:`normalised_targets` on a GPU
    would not give the worker's bits (CUDA divides by a scalar as a multiplication by its inverse), so
    the 3 x 256 values are computed once on the CPU and each target pixel is looked up: the same
    batches on any device, and fewer kernels than the arithmetic.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        levels = torch.arange(256, dtype=torch.uint8).expand(3, 1, 256)  # every level of every channel
        statistics = (torch.tensor(values).view(-1, 1, 1) for values in (mean, std))
        self.table = normalised_targets(levels, *statistics).view(-1)  # [3 x 256]: channel c, level x at 256c + x
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, targets: torch.Tensor) -> torch.Tensor:
        """``targets`` uint8 ``[..., 3, H, W]`` on their device -> float32, normalised."""
        if targets.device not in self._on_device:  # copied there once, not every batch
            self._on_device[targets.device] = (self.table.to(targets.device),
                                               (torch.arange(3) * 256).view(-1, 1, 1).to(targets.device))
        table, channel_offsets = self._on_device[targets.device]
        return table.take(targets.long() + channel_offsets)


def baked_image(image: torch.Tensor, pixels: torch.Tensor, fill: Sequence[int],
                jpeg_quality: Optional[int] = None) -> torch.Tensor:
    """``image`` (uint8 [3, h, w]) with the ``pixels`` (Bool [h, w], True = masked) set to ``fill``,
    then through a JPEG encode/decode at ``jpeg_quality`` if given."""
    image = torch.where(pixels, torch.tensor(fill, dtype=torch.uint8)[:, None, None], image)
    if jpeg_quality is None:
        return image
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=jpeg_quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1)


class ReconstructionDataset(Dataset):
    """Augmented images of a pretraining subset -> ``(image [3, S, S], pixel_mask [S, S])``, or ``(image,)``.

    Without ``patch_masks`` an item is the image alone: random masks are drawn
    fresh for every batch by the training loop, so an item has no mask to
    send (each tensor of a batch costs a loader worker's batch a
    shared-memory handover to the main process). With ``patch_masks`` (a dict
    pool index -> Bool [P] on the image's scoring view) the pixel mask is built
    on the scoring view and cropped and flipped together with the image.
    With ``baked`` (and ``patch_masks``) the items are ``(masked input,
    target, pixel_mask)`` instead: the mask is burned into the input image
    before augmentation (:class:`BakedMasks`). Whatever the transform returns
    after its inputs (the draws of a deferred colour jitter,
    ``transforms.DeferredColourJitter``) ends the item. ``cache`` keeps each image's
    scoring view and pixel mask (with ``baked``: its burned-in input, target and
    pixel mask), which are the same every epoch (none by
    default; :class:`~selmask_lib.data.cache.DecodedCache`). ``uint8_images``:
    the transform gets uint8 images (the decoded image; a fixed-mask item's
    scoring view rounded to uint8, as the authors saved it), for a transform
    that leaves the colour work to the device: a loader worker then crops in
    uint8 and sends a quarter of the bytes (config key ``jitter_on_device``).
    """

    def __init__(
        self,
        pool: UnlabelledImages,
        indices: Sequence[int],
        transform,
        score_size: int,
        n_patches: int,
        patch_masks: dict[int, torch.Tensor] | None = None,
        baked: Optional[BakedMasks] = None,
        antialias: bool = True,
        cache: DecodedCache | None = None,
        uint8_images: bool = False,
    ):
        self.pool, self.indices, self.transform = pool, list(indices), transform
        self.uint8_images = uint8_images
        self.cache = cache if cache is not None else no_cache()
        self.baked = baked if patch_masks is not None else None  # only fixed masks can be baked
        self.score_size, self.n_patches, self.patch_masks = score_size, n_patches, patch_masks
        self.antialias = antialias  # of the scoring view (the transform carries its own)
        if patch_masks is not None:
            missing = [i for i in self.indices if i not in patch_masks]
            if missing:
                raise SelmaskError(f"no saved mask for pretraining image {pool.ids[missing[0]]!r}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, ...]:
        index = self.indices[item]
        if self.patch_masks is None:
            # Random masks are drawn per batch by the training loop: no mask here (the transform draws
            # the same crop and flip with or without one).
            image = self._decoded_uint8(index) if self.uint8_images else self.pool[index]
            image, *extra = as_outputs(self.transform(tv_tensors.Image(image)))
            return image.as_subclass(torch.Tensor), *extra
        kept = [tensor.clone() for tensor in self.cache.get(index, lambda: self.kept_view(index))]
        if self.baked is not None:
            return self._baked_item(*kept)
        image, pixels = kept
        if self.uint8_images:
            image = as_uint8(image)
        image, pixels, *extra = self.transform(tv_tensors.Image(image), tv_tensors.Mask(pixels))
        return image.as_subclass(torch.Tensor), pixels.as_subclass(torch.Tensor).bool(), *extra

    def _decoded_uint8(self, index: int) -> torch.Tensor:
        """Pool image ``index`` as decoded, uint8 [3, H, W] (a copy: the pool's cache keeps its own)."""
        return torch.from_numpy(self.pool.decoded(index)).permute(2, 0, 1).clone()

    def fill_cache(self) -> None:
        """Compute the kept views (:meth:`kept_view`) now, in this process (fixed masks only).

        Loader workers forked afterwards share them, instead of each computing and keeping its
        own. On one torch thread, as a loader item computes them.
        """
        from .engine import one_torch_thread  # lazy: the data layer does not need the engine otherwise

        if self.patch_masks is None:
            return
        with one_torch_thread():
            self.cache.fill(self.indices, self.kept_view)

    def kept_view(self, index: int) -> tuple[torch.Tensor, ...]:
        """What the cache keeps of a fixed-mask item, the same every epoch: :meth:`masked_view`, or with
        ``baked`` the burned-in input, its uint8 target and the pixel mask (:meth:`baked_view`)."""
        return self.baked_view(index) if self.baked is not None else self.masked_view(index)

    def masked_view(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool image ``index`` at its scoring size ``[3, h, w]`` and its fixed pixel mask ``[h, w]``."""
        image = scoring_view(self.pool, index, self.score_size, self.antialias)
        grid = patch_grid(*image.shape[-2:], self.n_patches)
        return image, pixel_mask(self.patch_masks[index][None], grid)[0]

    def baked_view(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(masked input, target, pixel mask)`` of pool image ``index`` before augmentation: its scoring view
        as uint8 with the mask burned in (and through JPEG, as the authors' saved files), that view as uint8,
        and the mask. Kept by the cache, as they are the same bytes every epoch: baking them cost a worker
        about 2 ms an item at 256 px, JPEG included (``benchmarks/bench_item_cost.py``)."""
        image, pixels = self.masked_view(index)
        target = as_uint8(image)
        return baked_image(target, pixels, self.baked.fill, self.baked.jpeg_quality), target, pixels

    def _baked_item(self, masked: torch.Tensor, target: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The target passes as a Mask: same geometry, nearest interpolation, no colour jitter.
        masked, target, pixels = self.transform(tv_tensors.Image(masked), tv_tensors.Mask(target),
                                                tv_tensors.Mask(pixels))
        target = target.as_subclass(torch.Tensor)
        if not self.baked.uint8_targets:
            target = normalised_targets(target, *(torch.tensor(values).view(-1, 1, 1)
                                                  for values in (self.baked.mean, self.baked.std)))
        return masked.as_subclass(torch.Tensor), target, pixels.as_subclass(torch.Tensor).bool()


class RandomPixelMasks:
    """Fresh random patch masks for a batch of training crops, as pixel masks on the device.

    Drawn from a CPU generator, so a seed gives the same masks on any device.
    The pixel-to-patch map of the crop grid is built once and kept on the
    device, and on a GPU the draws travel through pinned memory: building a
    batch's masks never makes the host wait for the GPU (a copy from pageable
    memory, or reading a device value, would).
    """

    def __init__(self, crop_grid: torch.Tensor, mask_ratio: float, device: torch.device | str):
        self.n_patches, self.mask_ratio, self.device = crop_grid.shape[0], mask_ratio, torch.device(device)
        self.cell_of_pixel = patch_index_map(crop_grid).to(self.device)  # [S, S]

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Bool ``[batch_size, S, S]`` on the device, True = masked; each image its own draw."""
        patches = random_mask(batch_size, self.n_patches, self.mask_ratio, generator)  # [B, P], on the CPU
        return to_device_without_waiting(patches, self.device)[:, self.cell_of_pixel]


def masked_inputs(images: torch.Tensor, pixel_masks: torch.Tensor) -> torch.Tensor:
    """The network's input: ``images [B, 3, S, S]`` with masked pixels (``pixel_masks [B, S, S]``) set to 0.

    0 is the dataset mean once images are normalised. The masks are a
    :class:`ReconstructionDataset`'s fixed ones (selective steps) or a batch
    of :class:`RandomPixelMasks` (random masking).
    """
    return images.masked_fill(pixel_masks.unsqueeze(1), 0.0)
