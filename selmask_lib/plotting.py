"""Figures shared by the demo and the notebooks (matplotlib / seaborn)."""

from __future__ import annotations

from typing import Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import torch

from .masking import pixel_mask


def to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``[3, H, W]`` tensor -> displayable ``[H, W, 3]`` array in [0, 1]."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (image.detach().cpu().float() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


def loss_heatmap(patch_loss: torch.Tensor, grid: torch.Tensor) -> np.ndarray:
    """Per-patch values ``[P]`` painted onto their pixels, ``[H, W]``."""
    from .masking import patch_index_map

    return patch_loss.detach().cpu()[patch_index_map(grid)].numpy()


def masking_figure(
    images: torch.Tensor,
    random_masks: torch.Tensor,
    reconstructions: torch.Tensor,
    patch_loss: torch.Tensor,
    selected_masks: torch.Tensor,
    grid: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    title: str | None = None,
) -> "matplotlib.figure.Figure":
    """One row per image: input / random mask / reconstruction / patch loss / selective mask.

    ``images`` and ``reconstructions`` are normalised ``[B, 3, H, W]``; masks
    are Bool ``[B, P]`` (True = masked) and ``patch_loss`` is ``[B, P]``.
    """
    columns = ["input", "random mask (50%)", "reconstruction", "patch loss (mean of draws)",
               "selective mask (top 50% loss)"]
    n_rows = images.shape[0]
    figure, axes = plt.subplots(n_rows, len(columns), figsize=(2.6 * len(columns), 2.6 * n_rows),
                                squeeze=False)
    random_pixels = pixel_mask(random_masks.cpu(), grid)
    selected_pixels = pixel_mask(selected_masks.cpu(), grid)
    for row in range(n_rows):
        picture = to_display(images[row], mean, std)
        grey = np.full_like(picture, np.asarray(mean))  # masked patches show the mean colour
        panels = [
            picture,
            np.where(random_pixels[row, ..., None].numpy(), grey, picture),
            to_display(reconstructions[row], mean, std),
            None,
            np.where(selected_pixels[row, ..., None].numpy(), grey, picture),
        ]
        for column, (axis, panel) in enumerate(zip(axes[row], panels)):
            if panel is None:
                shown = axis.imshow(loss_heatmap(patch_loss[row], grid), cmap="magma")
                figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
            else:
                axis.imshow(panel)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
