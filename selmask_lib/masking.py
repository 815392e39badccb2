"""Patch grid, random and selective masks, and per-patch reconstruction losses.

Everything here is a pure function of tensors: a mask is a function of a
score map (random scores for random masking, per-patch reconstruction losses
for selective masking), never a side effect of data loading.

Shapes used throughout (``True = masked``):

- images ``[B, 3, H, W]``
- patch grid ``[P, 4]`` rows of ``(y0, y1, x0, x1)``, row-major
- patch scores, losses and masks ``[B, P]``
- pixel masks ``[B, H, W]``
"""

from __future__ import annotations

import math

import torch

# pytorch-msssim is what the authors call for SSIM. Its public `ssim()` only
# returns the per-image average, so we take its Gaussian window and separable
# "valid" filter and keep the SSIM *map*, which we then average inside each
# patch. `tests/test_masking.py` checks this against `pytorch_msssim.ssim` run
# on every patch crop separately.
from pytorch_msssim.ssim import _fspecial_gauss_1d, gaussian_filter

from .errors import SelmaskError

PATCH_SSIM_WINDOW = 3
PATCH_SSIM_SIGMA = 1.5


def _check_ratio(ratio: float) -> None:
    if not 0.0 < float(ratio) < 1.0:
        raise SelmaskError(f"ratio must lie strictly between 0 and 1, got {ratio}")


def _strip_edges(length: int, n_patches: int) -> list[int]:
    """Cut points of one axis, following the authors' grid formula (METHOD.md).

    step = ceil(length / sqrt(n)); cut at 0, step, 2*step, ... < length; a
    last strip shorter than half of length / sqrt(n) is merged into the one
    before it.
    """
    per_side = math.sqrt(n_patches)
    step = math.ceil(length / per_side)
    edges = list(range(0, length, step)) + [length]
    if len(edges) > 2 and (edges[-1] - edges[-2]) < 0.5 * length / per_side:
        del edges[-2]
    return edges


def patch_grid(height: int, width: int, n_patches: int = 512) -> torch.Tensor:
    """Rectangular patch grid of an image, ``[P, 4]`` rows of (y0, y1, x0, x1).

    At 256x256 with the paper's n_patches=512 this is 21x21 patches of 12 px
    (the last row and column 16 px). Non-square images get non-square patches;
    the grid is always about sqrt(n_patches) x sqrt(n_patches).
    """
    if n_patches < 1:
        raise SelmaskError(f"n_patches must be a positive integer, got {n_patches}")
    per_side = math.ceil(math.sqrt(n_patches))
    for name, size in (("height", height), ("width", width)):
        if size < per_side:
            raise SelmaskError(
                f"{name}={size} is smaller than the patch grid: n_patches={n_patches} "
                f"needs at least {per_side} pixels per side"
            )
    row_edges = _strip_edges(int(height), n_patches)
    col_edges = _strip_edges(int(width), n_patches)
    rows = [
        (y0, y1, x0, x1)
        for y0, y1 in zip(row_edges[:-1], row_edges[1:])
        for x0, x1 in zip(col_edges[:-1], col_edges[1:])
    ]
    return torch.tensor(rows, dtype=torch.long)


def grid_shape(grid: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) of a row-major patch grid."""
    n_cols = int((grid[:, 0] == grid[0, 0]).sum())
    return grid.shape[0] // n_cols, n_cols


def _strip_index(starts: torch.Tensor, ends: torch.Tensor, positions: torch.Tensor, window: int):
    """Strip holding each window [pos, pos + window) along one axis, or -1 if it straddles two."""
    strip = torch.searchsorted(starts, positions, right=True) - 1
    inside = positions + window <= ends[strip]
    return torch.where(inside, strip, torch.full_like(strip, -1))


def _window_index_map(grid: torch.Tensor, window: int = 1) -> torch.Tensor:
    """Patch that wholly contains each window position, ``[H - window + 1, W - window + 1]``.

    The window whose top-left corner is (i, j) covers rows i..i+window-1 and
    columns j..j+window-1. Positions whose window straddles two patches get
    the index P (one past the last patch), so they can be dropped. With
    ``window=1`` this is simply the patch of every pixel.
    """
    n_rows, n_cols = grid_shape(grid)
    row_starts, row_ends = grid[::n_cols, 0].contiguous(), grid[::n_cols, 1].contiguous()
    col_starts, col_ends = grid[:n_cols, 2].contiguous(), grid[:n_cols, 3].contiguous()
    height, width = int(row_ends[-1]), int(col_ends[-1])
    row = _strip_index(row_starts, row_ends, torch.arange(height - window + 1), window)
    col = _strip_index(col_starts, col_ends, torch.arange(width - window + 1), window)
    index_map = row[:, None] * n_cols + col[None, :]  # [H', W']
    straddles = (row[:, None] < 0) | (col[None, :] < 0)
    return index_map.masked_fill(straddles, grid.shape[0])


def patch_index_map(grid: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` map from each pixel to the index of the patch that holds it."""
    return _window_index_map(grid, window=1)


def pixel_mask(mask: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Expand a patch mask ``[B, P]`` to a pixel mask ``[B, H, W]``."""
    if mask.ndim != 2 or mask.shape[1] != grid.shape[0]:
        raise SelmaskError(
            f"mask must have shape [B, {grid.shape[0]}] for this grid, got {list(mask.shape)}"
        )
    index_map = patch_index_map(grid).to(mask.device)
    return mask[:, index_map]  # [B, H, W]


def selective_mask(patch_loss: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Mask the floor(ratio * P) highest-scoring patches of each row.

    ``patch_loss`` is ``[B, P]``; returns Bool ``[B, P]``. Ties are broken
    deterministically in favour of the lower patch index (stable sort).
    """
    _check_ratio(ratio)
    if patch_loss.ndim != 2:
        raise SelmaskError(f"patch_loss must have shape [B, P], got {list(patch_loss.shape)}")
    if torch.isnan(patch_loss).any():
        raise SelmaskError("patch_loss contains NaN; cannot rank patches")
    n_masked = int(ratio * patch_loss.shape[1])
    order = torch.sort(patch_loss, dim=1, descending=True, stable=True).indices  # [B, P]
    mask = torch.zeros_like(patch_loss, dtype=torch.bool)
    mask.scatter_(1, order[:, :n_masked], True)
    return mask


def random_mask(
    batch: int, n_patches: int, ratio: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniformly random mask with exactly floor(ratio * P) True per row, ``[B, P]``.

    The same function as :func:`selective_mask`, with random scores instead of
    losses (as in MAE's ``random_masking``).
    """
    _check_ratio(ratio)
    scores = torch.rand(batch, n_patches, generator=generator)  # [B, P]
    return selective_mask(scores, ratio)


def apply_mask(
    images: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor, fill
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set masked patches to ``fill`` and return ``(masked_images, pixel_mask)``.

    ``fill`` is the dataset mean colour *in the tensor's space*: for images
    normalised with the dataset mean/std that is zero; pass a per-channel
    sequence or tensor of length C, or a scalar.
    """
    height, width = images.shape[-2:]
    grid_size = (int(grid[:, 1].max()), int(grid[:, 3].max()))
    if grid_size != (height, width):
        raise SelmaskError(
            f"grid covers {grid_size[0]}x{grid_size[1]} pixels but images are {height}x{width}"
        )
    if mask.shape[0] != images.shape[0]:
        raise SelmaskError(f"mask has {mask.shape[0]} rows but there are {images.shape[0]} images")
    pixels = pixel_mask(mask.to(images.device), grid)  # [B, H, W]
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    fill = fill.reshape(1, -1, 1, 1) if fill.ndim else fill  # [1, C, 1, 1] or scalar
    masked = torch.where(pixels.unsqueeze(1), fill, images)  # [B, C, H, W]
    return masked, pixels


def _sum_per_patch(values: torch.Tensor, index_map: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Sum ``values [B, h, w]`` into ``[B, P]`` bins given ``index_map [h, w]``.

    Pixels whose index is ``n_patches`` (or more) are dropped: they belong to
    no patch (e.g. SSIM windows straddling two patches).
    """
    batch = values.shape[0]
    sums = values.new_zeros(batch, n_patches + 1)
    index = index_map.clamp(max=n_patches).flatten().to(values.device)
    sums.index_add_(1, index, values.flatten(1))
    return sums[:, :n_patches]


def ssim_map(
    pred: torch.Tensor,
    target: torch.Tensor,
    window: int = PATCH_SSIM_WINDOW,
    sigma: float = PATCH_SSIM_SIGMA,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-window SSIM ``[B, H - window + 1, W - window + 1]``, averaged over channels.

    Same formula, window and constants as ``pytorch_msssim.ssim``, without the
    final spatial average and with no padding ("valid" windows only).
    """
    channels = pred.shape[1]
    win = _fspecial_gauss_1d(window, sigma).to(pred).repeat(channels, 1, 1, 1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_pred, mu_target = gaussian_filter(pred, win), gaussian_filter(target, win)
    var_pred = gaussian_filter(pred * pred, win) - mu_pred**2
    var_target = gaussian_filter(target * target, win) - mu_target**2
    covariance = gaussian_filter(pred * target, win) - mu_pred * mu_target
    luminance = (2 * mu_pred * mu_target + c1) / (mu_pred**2 + mu_target**2 + c1)
    contrast_structure = (2 * covariance + c2) / (var_pred + var_target + c2)
    return (luminance * contrast_structure).mean(dim=1)  # [B, H', W']


def patch_losses(
    pred: torch.Tensor, target: torch.Tensor, grid: torch.Tensor, data_range: float = 1.0
) -> torch.Tensor:
    """Per-patch reconstruction loss L1 + (1 - SSIM), ``[B, P]``, for all patches at once.

    For each patch: L1 is its mean absolute error; SSIM uses a 3x3 Gaussian
    window (sigma 1.5) with no padding, so only windows wholly inside the patch
    count (a 12x12 patch averages 10x10 SSIM values). This equals the authors'
    Python loop over patch crops, but computes one SSIM map for the whole image
    and sums it per patch with ``index_add_`` (no per-patch host sync).
    """
    if pred.shape != target.shape:
        raise SelmaskError(
            f"pred and target must have the same shape, got {list(pred.shape)} and {list(target.shape)}"
        )
    if pred.ndim != 4:
        raise SelmaskError(f"pred must have shape [B, C, H, W], got {list(pred.shape)}")
    height, width = pred.shape[-2:]
    if (int(grid[:, 1].max()), int(grid[:, 3].max())) != (height, width):
        raise SelmaskError(f"grid does not cover the {height}x{width} images")
    patch_heights, patch_widths = grid[:, 1] - grid[:, 0], grid[:, 3] - grid[:, 2]
    if int(patch_heights.min()) < PATCH_SSIM_WINDOW or int(patch_widths.min()) < PATCH_SSIM_WINDOW:
        raise SelmaskError(
            f"grid has patches smaller than the {PATCH_SSIM_WINDOW}x{PATCH_SSIM_WINDOW} SSIM window "
            f"at {height}x{width}; use larger images or fewer patches"
        )
    n_patches = grid.shape[0]
    pred, target = pred.float(), target.float()

    abs_error = (pred - target).abs().mean(dim=1)  # [B, H, W]
    pixel_count = (patch_heights * patch_widths).to(pred)  # [P]
    l1 = _sum_per_patch(abs_error, patch_index_map(grid), n_patches) / pixel_count  # [B, P]

    ssim_values = ssim_map(pred, target, data_range=data_range)  # [B, H-2, W-2]
    window_count = ((patch_heights - PATCH_SSIM_WINDOW + 1) * (patch_widths - PATCH_SSIM_WINDOW + 1)).to(pred)
    window_index = _window_index_map(grid, PATCH_SSIM_WINDOW)
    ssim = _sum_per_patch(ssim_values, window_index, n_patches) / window_count  # [B, P]

    loss = l1 + (1.0 - ssim)
    if torch.isnan(loss).any():
        raise SelmaskError("patch losses contain NaN: check pred and target for NaN or inf values")
    return loss
