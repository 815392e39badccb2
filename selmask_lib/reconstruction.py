"""Look inside a pretraining run: reconstruct masked images, paste the visible patches back, score draw by draw.

The walkthrough notebook and the patch viewer show what the pretext task
looks like to the model. Everything heavy lives here so the notebooks stay
short; shapes follow :mod:`selmask_lib.masking` (``True = masked``):

- pictures ``[N, 3, s, s]`` in [0, 1] (square centre crops of the scoring view,
  so every picture shares one patch grid ``[P, 4]``);
- images ``[N, 3, s, s]``: the same, normalised with the run's mean / std;
- masks and patch losses ``[N, P]``; per-draw ones ``[N, S, P]``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd
import torch

from .engine import load_checkpoint
from .errors import SelmaskError
from .masking import apply_mask, patch_losses, pixel_mask, random_mask
from .models import UNet, build_reconstruction_model
from .pretrain_data import partition_indices, pretraining_pool, scoring_view, train_val_split


def load_reconstruction_model(run, step: Optional[int] = None) -> UNet:
    """The run's final reconstruction model (``step=None``) or the model of selective step ``step``, in eval mode.

    Step ``k``'s model is the one that scored, and so picked the masks of, step ``k + 1``.
    """
    from .pretraining import STEP_MODEL_FILE, step_name

    path = run.weights if step is None else run.run_dir / step_name(step) / STEP_MODEL_FILE
    if step is not None and not path.is_file():
        raise SelmaskError(f"{run.run_dir}: no model of step {step} ({path.name} missing); "
                           f"a selective run of K partitions has steps 0..K-1")
    model = build_reconstruction_model(run.config.dropout, run.config.pad_to_multiple)
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval()


def held_out_indices(cfg) -> list[int]:
    """Pool indices no step of the run trained on: the validation images of each loop, in pool order.

    Reconstructions of these show what the model learnt, not what it remembers.
    """
    n_images = len(pretraining_pool(cfg))
    loops = ([list(range(n_images))] if cfg.strategy == "random"
             else partition_indices(n_images, cfg.n_partitions))
    held_out = sorted(index for loop in loops for index in train_val_split(loop, cfg.val_fraction)[1])
    if not held_out:  # val_fraction 0: every image was trained on, none shows what the model learnt
        raise SelmaskError(f"config key 'val_fraction' is {cfg.val_fraction}: the run holds out no image to show; "
                           "use a run with val_fraction > 0")
    return held_out


def square_pictures(cfg, indices: Sequence[int]) -> torch.Tensor:
    """Centre squares of the scoring views of ``indices``, ``[N, 3, s, s]`` in [0, 1] (s = ``cfg.score_size``).

    Square crops give every picture the same patch grid, so they batch together.
    """
    pool = pretraining_pool(cfg)
    side = cfg.score_size
    squares = []
    for index in indices:
        view = scoring_view(pool, index, side, cfg.antialias)  # [3, h, w], shorter side = side
        top, left = (view.shape[1] - side) // 2, (view.shape[2] - side) // 2
        squares.append(view[:, top : top + side, left : left + side])
    return torch.stack(squares)


def pool_ids(cfg, indices: Sequence[int]) -> list[str]:
    """The image ids of pool ``indices`` (figure labels)."""
    pool = pretraining_pool(cfg)
    return [pool.ids[index] for index in indices]


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The model's output for ``images`` with the ``masks`` patches filled with the mean colour (0), ``[N, 3, s, s]``."""
    masked_inputs, _ = apply_mask(images, masks, grid, 0.0)
    return model(masked_inputs)


def paste_visible(images: torch.Tensor, reconstructions: torch.Tensor, masks: torch.Tensor,
                  grid: torch.Tensor) -> torch.Tensor:
    """Reconstruction where the patch was masked, the original where it was visible (MAE's usual picture).

    The loss is taken on every pixel, but only the masked patches are a real
    test of the model: pasting the visible ones back shows just that part.
    """
    pixels = pixel_mask(masks.to(images.device), grid).unsqueeze(1)  # [N, 1, s, s]
    return torch.where(pixels, reconstructions, images)


@torch.no_grad()
def score_draws(model: torch.nn.Module, images: torch.Tensor, grid: torch.Tensor, n_draws: int,
                mask_ratio: float = 0.5, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The scoring step one draw at a time: ``(draws [N, S, P] bool, losses [N, S, P])``.

    Same random draws, in the same order, as :func:`selmask_lib.strategies.score_patches`
    given the same generator state, so ``losses.mean(dim=1)`` is its score.
    """
    batch, n_patches = images.shape[0], grid.shape[0]
    draws = random_mask(batch * n_draws, n_patches, mask_ratio, generator).to(images.device)  # [N*S, P]
    targets = images.repeat_interleave(n_draws, dim=0)  # [N*S, 3, s, s]
    losses = patch_losses(reconstruct(model, targets, draws, grid), targets, grid)  # [N*S, P]
    return draws.view(batch, n_draws, n_patches), losses.view(batch, n_draws, n_patches)


def loss_share_inside(masks: torch.Tensor, patch_loss: torch.Tensor) -> torch.Tensor:
    """Per image, the share of its total patch loss that falls inside the mask, ``[N]``.

    About the mask ratio for a random mask; higher when the mask picks the hard patches.
    """
    return (patch_loss * masks).sum(dim=1) / patch_loss.sum(dim=1)


def pretraining_history(run) -> pd.DataFrame:
    """Every epoch of the run in one table: step, epoch, lr, train_loss, val_loss (random runs: step 0)."""
    from .pretraining import step_name

    if run.config.strategy == "random":
        files = [(0, run.run_dir / "metrics.csv")]
    else:
        files = [(step, run.run_dir / step_name(step) / "metrics.csv") for step in range(run.config.n_partitions)]
    missing = [str(path) for _, path in files if not path.is_file()]
    if missing:
        raise SelmaskError(f"{run.run_dir}: no per-epoch log at {missing[0]}")
    tables = [pd.read_csv(path).assign(step=step) for step, path in files]
    history = pd.concat(tables, ignore_index=True)
    return history[["step", *[name for name in history.columns if name != "step"]]]
