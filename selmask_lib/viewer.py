"""The patch viewer of notebook 01: which patches each selective step picks, image by image.

A selective run scores each partition once, with the previous step's model,
so the masks it saves show other images at every step. To follow one image
across steps, :func:`step_views` scores the same held-out images with the
model of every step (step k's masks come from the step k-1 model, as in the
run) and draws a random mask per step to compare with.

- :func:`render_view` draws one view (step, image, overlay, masking) as a
  matplotlib figure: a pure function, what the tests check;
- :func:`patch_viewer` wraps it in ipywidgets for JupyterLab;
- :func:`gallery_figure` draws the views of every image and step at once: the
  static picture a batch run (papermill, nbconvert) keeps. Batch runs get no
  widget (:func:`is_batch_run`): a saved widget shows nothing outside a live
  kernel and only weighs the file down;
- :func:`step_overlap` measures how far the selected patches move from one
  step to the next (Jaccard overlap of the masked patch sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .engine import epoch_generator
from .errors import SelmaskError
from .masking import patch_grid, pixel_mask, random_mask
from .plotting import draw_patch_grid, grey_out, loss_heatmap
from .reconstruction import held_out_indices, load_reconstruction_model, pool_ids, square_pictures
from .strategies import SelectiveMasking
from .transforms import normalise

OVERLAYS = ("loss", "selected", "masked")  # loss heat map / masked patches highlighted / the masked input
MASKINGS = ("selective", "random")
_FADE = 0.7  # the "selected" overlay fades the other patches this far towards white (visible on any colour)


@dataclass(frozen=True)
class StepViews:
    """The same images seen by every selective step of a run (``True = masked``).

    ``pictures`` ``[N, 3, s, s]`` in [0, 1] share ``grid`` ``[P, 4]``; ``losses``
    (mean patch loss over the S draws), ``selective`` and ``random`` are
    ``[T, N, P]``, one row per step of ``steps``.
    """

    ids: list[str]
    pictures: torch.Tensor
    grid: torch.Tensor
    steps: list[int]
    losses: torch.Tensor
    selective: torch.Tensor
    random: torch.Tensor
    fill: tuple[float, float, float]  # colour of masked patches: the dataset mean

    def masks(self, masking: str) -> torch.Tensor:
        """``[T, N, P]`` masks of ``masking`` (selective | random)."""
        _check_choice("masking", masking, MASKINGS)
        return self.selective if masking == "selective" else self.random

    def row_of(self, step: int) -> int:
        """Row of ``step`` in the ``[T, ...]`` tensors."""
        if step not in self.steps:
            raise SelmaskError(f"step must be one of the run's selective steps {self.steps}, got {step!r}")
        return self.steps.index(step)


def _check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise SelmaskError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


# --------------------------------------------------------------------------- computing the views


def step_views(run, n_images: int = 4, n_draws: Optional[int] = None) -> StepViews:
    """Score the first ``n_images`` held-out images with the model of every step of a selective ``run``.

    Uses the paper's scoring (S = ``n_draws`` draws, default the run's) whatever
    masking the run used; the draws and random masks are seeded per step.
    """
    cfg = run.config
    if cfg.strategy != "selective":
        raise SelmaskError(f"{run.run_dir}: the patch viewer needs a selective run, this one is {cfg.strategy}")
    if n_images < 1:
        raise SelmaskError(f"n_images must be at least 1, got {n_images}")
    indices = held_out_indices(cfg)[:n_images]
    pictures = square_pictures(cfg, indices)  # [N, 3, s, s]
    images = normalise(pictures, cfg.mean, cfg.std)
    grid = patch_grid(cfg.score_size, cfg.score_size, cfg.n_patches)
    scoring = SelectiveMasking(n_draws or cfg.n_scoring_draws)
    steps = list(range(1, cfg.n_partitions))
    losses, selective, random = [], [], []
    for step in steps:
        model = load_reconstruction_model(run, step - 1)  # the model that picked step `step`'s masks
        masks, scores = scoring(model, images, grid, cfg.mask_ratio, epoch_generator(cfg.seed, "viewer", step))
        selective.append(masks)
        losses.append(scores)
        random.append(random_mask(len(indices), grid.shape[0], cfg.mask_ratio,
                                  epoch_generator(cfg.seed, "viewer-random", step)))
    return StepViews(pool_ids(cfg, indices), pictures, grid, steps, torch.stack(losses), torch.stack(selective),
                     torch.stack(random), tuple(cfg.mean))


# --------------------------------------------------------------------------- drawing


def _loss_scale(views: StepViews) -> dict:
    """One colour scale for every loss map of the views, so steps and images compare."""
    return {"vmin": 0.0, "vmax": float(views.losses.max())}


def _draw_panel(axis, views: StepViews, row: int, image: int, overlay: str, masking: str):
    """One view on ``axis``; returns the heat map (for a colour bar) or None."""
    picture = views.pictures[image].permute(1, 2, 0).clamp(0, 1).numpy()
    mask = views.masks(masking)[row, image]  # [P]
    pixels = pixel_mask(mask[None], views.grid)[0]  # [s, s]
    axis.set_xticks([])
    axis.set_yticks([])
    if overlay == "masked":
        axis.imshow(grey_out(picture, pixels, views.fill))
        return None
    if overlay == "selected":
        faded = (1 - _FADE) * picture + _FADE
        axis.imshow(np.where(pixels.numpy()[..., None], picture, faded))
        return None
    axis.imshow(picture)
    shown = axis.imshow(loss_heatmap(views.losses[row, image], views.grid), cmap="magma", alpha=0.65,
                        **_loss_scale(views))
    masked_patches = views.grid[mask]
    draw_patch_grid(axis, masked_patches, colour="cyan", linewidth=0.8)  # the masked patches, outlined
    return shown


def render_view(views: StepViews, step: int, image: int = 0, overlay: str = "selected",
                masking: str = "selective") -> "plt.Figure":
    """One view as a figure: image ``image`` (a row of ``views``) at selective ``step``.

    ``overlay``: ``loss`` (the step's patch loss, masked patches outlined),
    ``selected`` (the masked patches as they are, the others faded) or ``masked`` (the input the model
    gets); ``masking``: the ``selective`` mask or a ``random`` one of the same ratio.
    """
    row = views.row_of(step)
    _check_choice("overlay", overlay, OVERLAYS)
    _check_choice("masking", masking, MASKINGS)
    if not 0 <= image < len(views.ids):
        raise SelmaskError(f"image must be between 0 and {len(views.ids) - 1}, got {image!r}")
    figure, axis = plt.subplots(figsize=(4.2, 3.6))
    shown = _draw_panel(axis, views, row, image, overlay, masking)
    if shown is not None:
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04, label="patch loss (L1 + 1 - SSIM)")
    axis.set_title(f"{views.ids[image]}: step {step}, {masking} mask, {overlay}", fontsize=9)
    figure.tight_layout()
    return figure


def gallery_figure(views: StepViews, overlays: Sequence[str] = ("loss", "selected"),
                   masking: str = "selective") -> "plt.Figure":
    """Every image (rows) at every step, one column per (step, overlay): the viewer's views, all at once."""
    for overlay in overlays:
        _check_choice("overlay", overlay, OVERLAYS)
    columns = [(step, overlay) for step in views.steps for overlay in overlays]
    figure, axes = plt.subplots(len(views.ids), len(columns), figsize=(1.7 * len(columns) + 0.8,
                                                                       1.7 * len(views.ids)), squeeze=False)
    shown = None
    for image, axes_row in enumerate(axes):
        for axis, (step, overlay) in zip(axes_row, columns):
            shown = _draw_panel(axis, views, views.row_of(step), image, overlay, masking) or shown
        axes_row[0].set_ylabel(views.ids[image], fontsize=8)
    for axis, (step, overlay) in zip(axes[0], columns):
        axis.set_title(f"step {step}: {overlay}", fontsize=9)
    if shown is not None:
        figure.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label="patch loss")
    figure.suptitle(f"{masking} masks of the same images at every step "
                    f"(step k: scored by the step k-1 model)", fontsize=10)
    return figure


# --------------------------------------------------------------------------- how the selection moves


def jaccard(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Overlap |A and B| / |A or B| of two Bool masks ``[..., P]``, per row (1 when both are empty)."""
    both = (first & second).sum(dim=-1).float()
    either = (first | second).sum(dim=-1).float()
    return torch.where(either > 0, both / either.clamp(min=1), torch.ones_like(both))


def random_jaccard(mask_ratio: float) -> float:
    """Expected overlap of two independent random masks of ``mask_ratio``: r / (2 - r) (1/3 at 0.5)."""
    return mask_ratio / (2 - mask_ratio)


def step_overlap(views: StepViews) -> pd.DataFrame:
    """Per image and consecutive steps k-1 -> k: Jaccard overlap of the selective masks and of the random ones.

    1 means the step kept exactly the same patches; a random mask redrawn
    each step overlaps about :func:`random_jaccard`.
    """
    rows = []
    for before, after in zip(range(len(views.steps) - 1), range(1, len(views.steps))):
        selective = jaccard(views.selective[before], views.selective[after])
        random = jaccard(views.random[before], views.random[after])
        for image, name in enumerate(views.ids):
            rows.append({"image": name, "steps": f"{views.steps[before]}->{views.steps[after]}",
                         "selective": float(selective[image]), "random": float(random[image])})
    return pd.DataFrame(rows, columns=["image", "steps", "selective", "random"])


def overlap_figure(overlap: pd.DataFrame, mask_ratio: float = 0.5) -> "plt.Figure":
    """:func:`step_overlap` as a plot: one line per image, random masks and their expectation for reference."""
    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    for name, rows in overlap.groupby("image", sort=False):
        axis.plot(rows["steps"], rows["selective"], "o-", label=name)
    axis.plot(overlap.groupby("steps", sort=False)["random"].mean(), "s:", color="grey", label="random (mean)")
    axis.axhline(random_jaccard(mask_ratio), color="grey", linewidth=0.8, linestyle="--")
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("consecutive selective steps")
    axis.set_ylabel("Jaccard overlap of masked patches")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- the widget


def is_batch_run() -> bool:
    """True unless this code runs in a live Jupyter kernel that a person drives.

    papermill and nbconvert (nbclient) start their kernels with an in-memory
    history (``HistoryManager.hist_file=:memory:``), which JupyterLab does not:
    that is how a batch run is told apart. Plain Python has no kernel at all.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return True
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return True
    return str(getattr(shell.history_manager, "hist_file", "")) == ":memory:"


def patch_viewer(views: StepViews, interactive: Optional[bool] = None):
    """An ipywidgets viewer of :func:`render_view` (step, image, overlay, masking), or None.

    None in a batch run (``interactive=None`` detects it, see :func:`is_batch_run`)
    or without ipywidgets; display the returned widget in the notebook.
    """
    if interactive is None:
        interactive = not is_batch_run()
    if not interactive:
        return None
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except ImportError:
        return None

    controls = {
        "step": widgets.SelectionSlider(options=views.steps, description="step"),
        "image": widgets.Dropdown(options=[(name, row) for row, name in enumerate(views.ids)], description="image"),
        "overlay": widgets.ToggleButtons(options=OVERLAYS, description="overlay"),
        "masking": widgets.ToggleButtons(options=MASKINGS, description="mask"),
    }

    def show(step, image, overlay, masking):
        figure = render_view(views, step, image, overlay, masking)
        display(figure)
        plt.close(figure)

    output = widgets.interactive_output(show, controls)
    return widgets.VBox([widgets.HBox([controls["step"], controls["image"]]),
                         controls["overlay"], controls["masking"], output])
