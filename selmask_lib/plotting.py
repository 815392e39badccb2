"""Figures shared by the demo and the notebooks (matplotlib / seaborn)."""

from __future__ import annotations

from typing import Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import torch

from .masking import patch_index_map, pixel_mask


def to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``[3, H, W]`` tensor -> displayable ``[H, W, 3]`` array in [0, 1]."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (image.detach().cpu().float() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


def loss_heatmap(patch_loss: torch.Tensor, grid: torch.Tensor) -> np.ndarray:
    """Per-patch values ``[P]`` painted onto their pixels, ``[H, W]``."""
    return patch_loss.detach().cpu()[patch_index_map(grid)].numpy()


def grey_out(picture: np.ndarray, pixels: torch.Tensor, colour: Sequence[float]) -> np.ndarray:
    """``picture [H, W, 3]`` with the True pixels of ``pixels [H, W]`` painted ``colour`` (the fill)."""
    return np.where(pixels.cpu().numpy()[..., None], np.asarray(colour, dtype=picture.dtype), picture)


def _show_heatmap(figure, axis, patch_loss: torch.Tensor, grid: torch.Tensor) -> None:
    shown = axis.imshow(loss_heatmap(patch_loss, grid), cmap="magma")
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)


def _panel_grid(n_rows: int, columns: Sequence[str]):
    figure, axes = plt.subplots(n_rows, len(columns), figsize=(2.6 * len(columns), 2.6 * n_rows), squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for axis, name in zip(axes[0], columns):
        axis.set_title(name, fontsize=9)
    return figure, axes


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
    figure, axes = _panel_grid(images.shape[0], columns)
    random_pixels = pixel_mask(random_masks.cpu(), grid)
    selected_pixels = pixel_mask(selected_masks.cpu(), grid)
    for row, axes_row in enumerate(axes):
        picture = to_display(images[row], mean, std)
        axes_row[0].imshow(picture)
        axes_row[1].imshow(grey_out(picture, random_pixels[row], mean))
        axes_row[2].imshow(to_display(reconstructions[row], mean, std))
        _show_heatmap(figure, axes_row[3], patch_loss[row], grid)
        axes_row[4].imshow(grey_out(picture, selected_pixels[row], mean))
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def masked_views_figure(
    views: Sequence[torch.Tensor],
    patch_losses: Sequence[torch.Tensor],
    selected_masks: Sequence[torch.Tensor],
    random_masks: Sequence[torch.Tensor],
    grids: Sequence[torch.Tensor],
    fill: Sequence[float] = (0.4529, 0.4317, 0.3999),
    titles: Sequence[str] | None = None,
) -> "matplotlib.figure.Figure":
    """One row per image of a saved selective step: view / patch loss / selective mask / random mask.

    ``views`` are scoring views ``[3, h, w]`` in [0, 1] (sizes may differ);
    losses and masks are ``[P]`` per image, on each image's own grid.
    """
    columns = ["image (scoring view)", "patch loss (mean of S draws)", "selective mask", "random mask"]
    figure, axes = _panel_grid(len(views), columns)
    for row, axes_row in enumerate(axes):
        picture = views[row].permute(1, 2, 0).clamp(0, 1).numpy()
        axes_row[0].imshow(picture)
        if titles is not None:
            axes_row[0].set_ylabel(titles[row], fontsize=8)
        _show_heatmap(figure, axes_row[1], patch_losses[row], grids[row])
        axes_row[2].imshow(grey_out(picture, pixel_mask(selected_masks[row][None], grids[row])[0], fill))
        axes_row[3].imshow(grey_out(picture, pixel_mask(random_masks[row][None], grids[row])[0], fill))
    figure.tight_layout()
    return figure


def per_class_gain_figure(gain, title: str | None = None) -> "matplotlib.figure.Figure":
    """Per-class IoU of baseline and method (left) and their difference (right).

    ``gain`` is :func:`selmask_lib.tables.per_class_gain`'s table: classes
    sorted from the weakest baseline IoU, columns baseline / method / gain,
    and lower / upper: the gain's 95 % interval, drawn as error bars where known.
    """
    import pandas as pd
    import seaborn as sns

    shown = gain.dropna(subset=["gain"])
    baseline, method = gain.attrs.get("baseline", "baseline"), gain.attrs.get("method", "method")
    long = pd.DataFrame({
        "class": list(shown.index) * 2,
        "IoU (%)": list(shown["baseline"]) + list(shown["method"]),
        "init": [baseline] * len(shown) + [method] * len(shown),
    })
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(shown) + 1.8), sharey=True)
    sns.barplot(long, y="class", x="IoU (%)", hue="init", ax=left, orient="h")
    left.set_title("per-class test IoU (weakest baseline class first)", fontsize=10)
    colours = ["tab:green" if value >= 0 else "tab:red" for value in shown["gain"]]
    right.barh(list(shown.index), shown["gain"], color=colours, xerr=_error_bars(shown), capsize=3,
               error_kw={"linewidth": 0.9})
    right.axvline(0, color="black", linewidth=0.8)
    interval = gain.attrs.get("interval")
    right.set_xlabel(f"{method} - {baseline} (points)" + (f"\nbars: 95 % interval, {interval}" if interval else ""))
    right.set_title("gain", fontsize=10)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def _error_bars(gain) -> np.ndarray | None:
    """``[2, n]`` distances from each gain to its interval's ends (0 where unknown); None without intervals."""
    if "lower" not in gain.columns or gain[["lower", "upper"]].isna().all().all():
        return None
    below = (gain["gain"] - gain["lower"]).fillna(0).clip(lower=0)
    above = (gain["upper"] - gain["gain"]).fillna(0).clip(lower=0)
    return np.vstack([below.to_numpy(), above.to_numpy()])


BUDGET_COLOURS = {"self": "tab:blue", "cross": "tab:orange"}


def budget_figure(sweep, gains=None, x: str = "image_steps", title: str | None = None) -> "matplotlib.figure.Figure":
    """Claim (3): test mIoU against the pretraining budget, self and cross, with 95 % interval bands.

    ``sweep`` is :func:`selmask_lib.budget.budget_sweep`'s table, ``gains``
    :func:`~selmask_lib.budget.budget_gains`' (computed when None); each
    budget's verdict on self - cross is written at its x. ``x``:
    ``"image_steps"`` (each line at its own runs' count) or ``"fraction"``.
    """
    from .budget import budget_curves, budget_gains
    from .errors import SelmaskError

    if x not in ("image_steps", "fraction"):
        raise SelmaskError(f"budget_figure: x must be 'image_steps' or 'fraction', got {x!r}")
    gains = budget_gains(sweep) if gains is None else gains
    curves = budget_curves(sweep)
    figure, axis = plt.subplots(figsize=(7.5, 4.6))
    for relation in BUDGET_COLOURS:  # self first
        rows = curves[curves["relation"] == relation]
        pretrained_on = sweep.loc[sweep["relation"] == relation, "pretrain_dataset"].iloc[0]
        colour = BUDGET_COLOURS.get(relation)
        axis.plot(rows[x], rows["miou"], marker="o", color=colour, label=f"{relation} (pretrained on {pretrained_on})")
        axis.fill_between(rows[x], rows["lower"], rows["upper"], color=colour, alpha=0.18, linewidth=0)
    _write_verdicts(axis, curves, gains, x)
    axis.set_xlabel(("pretraining image-steps (training images seen)" if x == "image_steps"
                     else "fraction of the preset's pretraining budget")
                    + "\nboxes: verdict on self - cross (points, 95 % interval)", fontsize=9)
    axis.set_ylabel(f"test mIoU on {sweep['dataset'].iloc[0]} (%)")
    bands = "bands: 95 % interval, " + ", ".join(sorted(set(curves["method"])))
    axis.set_title(f"{title or 'self vs cross selective pretraining by budget'}\n{bands}", fontsize=9)
    axis.legend(loc="upper left", fontsize=8)
    axis.margins(y=0.25)
    figure.tight_layout()
    return figure


def _write_verdicts(axis, curves, gains, x: str) -> None:
    """Each budget's self - cross gain, interval and verdict, near the bottom at the self run's x."""
    self_x = curves[curves["relation"] == "self"].set_index("fraction")[x]
    for _, gain in gains.iterrows():
        interval = "" if np.isnan(gain["lower"]) else f" [{gain['lower']:+.1f}, {gain['upper']:+.1f}]"
        axis.annotate(f"{gain['verdict']}\n{gain['gain']:+.1f}{interval}", (self_x[gain["fraction"]], 0.03),
                      xycoords=("data", "axes fraction"), ha="center", fontsize=7.5,
                      bbox=dict(boxstyle="round,pad=0.2", facecolor="white", alpha=0.8, linewidth=0.5))
