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


# --------------------------------------------------------------------------- walkthrough figures
# (notebooks/00_walkthrough.ipynb; pictures are [N, 3, s, s] in [0, 1] sharing one grid [P, 4])


def draw_patch_grid(axis, grid: torch.Tensor, colour: str = "white", linewidth: float = 0.7) -> None:
    """Draw the borders of every patch of ``grid`` on ``axis`` (an image drawn with ``imshow``)."""
    from matplotlib.patches import Rectangle

    for y0, y1, x0, x1 in grid.tolist():
        axis.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                 edgecolor=colour, linewidth=linewidth))


def patch_grid_figure(picture: torch.Tensor, grid: torch.Tensor, title: str | None = None) -> "matplotlib.figure.Figure":
    """One picture ``[3, s, s]`` in [0, 1] twice: as it is, and cut into its numbered patches."""
    figure, (plain, cut) = plt.subplots(1, 2, figsize=(7.5, 3.8))
    shown = picture.permute(1, 2, 0).clamp(0, 1).numpy()
    for axis in (plain, cut):
        axis.imshow(shown)
        axis.set_xticks([])
        axis.set_yticks([])
    draw_patch_grid(cut, grid)
    for index, (y0, y1, x0, x1) in enumerate(grid.tolist()):
        cut.text((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, str(index), color="white", fontsize=6,
                 ha="center", va="center")
    plain.set_title(f"image ({picture.shape[1]}x{picture.shape[2]} px)", fontsize=9)
    cut.set_title(f"{grid.shape[0]} patches of about {int(grid[0, 1] - grid[0, 0])} px", fontsize=9)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def reconstruction_figure(
    images: torch.Tensor,
    masks: torch.Tensor,
    reconstructions: torch.Tensor,
    grid: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    titles: Sequence[str] | None = None,
    title: str | None = None,
) -> "matplotlib.figure.Figure":
    """MAE-style view, one row per image: original / masked input / reconstruction / reconstruction
    with the visible patches pasted back (only the masked patches test the model).

    ``images`` and ``reconstructions`` are normalised ``[N, 3, s, s]``; ``masks`` Bool ``[N, P]``.
    """
    from .reconstruction import paste_visible

    pasted = paste_visible(images, reconstructions, masks, grid)
    columns = ["original", "masked input (what the model sees)", "reconstruction",
               "reconstruction + visible patches"]
    figure, axes = _panel_grid(images.shape[0], columns)
    pixels = pixel_mask(masks.cpu(), grid)
    for row, axes_row in enumerate(axes):
        picture = to_display(images[row], mean, std)
        axes_row[0].imshow(picture)
        axes_row[1].imshow(grey_out(picture, pixels[row], mean))
        axes_row[2].imshow(to_display(reconstructions[row], mean, std))
        axes_row[3].imshow(to_display(pasted[row], mean, std))
        if titles is not None:
            axes_row[0].set_ylabel(titles[row], fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def scoring_figure(
    images: torch.Tensor,
    draws: torch.Tensor,
    draw_losses: torch.Tensor,
    selected: torch.Tensor,
    grid: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    titles: Sequence[str] | None = None,
) -> "matplotlib.figure.Figure":
    """The scoring step, two rows per image: each of the S random draws and the patch loss it gave,
    then the mean loss over the draws and the mask it selects (its highest-loss patches).

    ``images`` normalised ``[N, 3, s, s]``; ``draws`` Bool and ``draw_losses`` ``[N, S, P]``;
    ``selected`` Bool ``[N, P]``. Every loss map of an image shares one colour scale.
    """
    n_images, n_draws, _ = draws.shape
    columns = [f"draw {draw + 1}" for draw in range(n_draws)] + ["mean of the draws -> selected"]
    figure, axes = _panel_grid(2 * n_images, columns)
    mean_loss = draw_losses.mean(dim=1)  # [N, P]
    for image in range(n_images):
        picture = to_display(images[image], mean, std)
        top, bottom = axes[2 * image], axes[2 * image + 1]
        scale = {"vmin": 0.0, "vmax": float(draw_losses[image].max())}
        for draw in range(n_draws):
            top[draw].imshow(grey_out(picture, pixel_mask(draws[image, draw][None], grid)[0], mean))
            bottom[draw].imshow(loss_heatmap(draw_losses[image, draw], grid), cmap="magma", **scale)
        top[-1].imshow(grey_out(picture, pixel_mask(selected[image][None], grid)[0], mean))
        shown = bottom[-1].imshow(loss_heatmap(mean_loss[image], grid), cmap="magma", **scale)
        figure.colorbar(shown, ax=list(bottom), fraction=0.02, pad=0.01, label="patch loss (L1 + 1 - SSIM)")
        top[0].set_ylabel("masked input" if titles is None else f"{titles[image]}\nmasked input", fontsize=8)
        bottom[0].set_ylabel("patch loss", fontsize=8)
    return figure


def per_class_iou_figure(per_class_iou: dict, miou: float, title: str | None = None) -> "matplotlib.figure.Figure":
    """Test IoU of every class, weakest first, with the mIoU as a line; IoUs are fractions, None = absent."""
    scored = sorted(((name, value) for name, value in per_class_iou.items() if value is not None),
                    key=lambda item: item[1])
    absent = [name for name, value in per_class_iou.items() if value is None]
    figure, axis = plt.subplots(figsize=(6.5, 0.35 * len(scored) + 1.4))
    axis.barh([name for name, _ in scored], [100 * value for _, value in scored], color="tab:blue")
    axis.axvline(100 * miou, color="black", linestyle="--", linewidth=1, label=f"mIoU {100 * miou:.1f} %")
    axis.set_xlabel("test IoU (%)" + (f"\nabsent from the test split: {', '.join(absent)}" if absent else ""))
    axis.set_xlim(0, 100)
    axis.invert_yaxis()  # the weakest class on top
    axis.legend(loc="lower right", fontsize=8)
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def pretraining_curves_figure(history, title: str | None = None) -> "matplotlib.figure.Figure":
    """Train and validation loss of every epoch (``reconstruction.pretraining_history``), one colour per step.

    Log scale: on small batches the validation loss can jump for an epoch (when the learning
    rate peaks, batch-norm's running statistics lag behind) and would flatten everything else.
    """
    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    history = history.reset_index(drop=True)
    for step, rows in history.groupby("step"):
        axis.plot(rows.index + 1, rows["train_loss"], "o-", markersize=3, label=f"step {step} train")
        if "val_loss" in rows:
            axis.plot(rows.index + 1, rows["val_loss"], "x--", markersize=4, label=f"step {step} val")
    axis.set_xlabel("epoch (all steps in a row)")
    axis.set_ylabel("reconstruction loss (log scale)")
    axis.set_yscale("log")
    axis.legend(fontsize=7, ncol=2)
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure
