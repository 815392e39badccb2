"""Maskings for the iterative pretraining loop: given a model and images, return masks.

Two words, two ideas: the *strategy* (config key ``strategy``, random |
selective) is the training loop, one pass over all images or K steps over
partitions; the *masking* is how the loop picks the masks of steps 1..K-1.
A masking is any callable with this signature::

    masking(model, images, grid, mask_ratio, generator) -> (masks, scores)

- ``model``: the reconstruction U-Net of the previous step, in eval mode;
- ``images``: ``[B, 3, h, w]`` normalised images of the partition to mask,
  at the scoring size (shorter side ``score_size``);
- ``grid``: the ``[P, 4]`` patch grid of those images;
- returns Bool ``masks [B, P]`` (``True = masked``) and optional float
  ``scores [B, P]`` (saved with the masks so notebooks can show them).

:class:`SelectiveMasking` is the paper's method; :class:`FixedRandomMasking`
is the ablation that fixes *random* masks per step. Pass your own callable to
``pretrain_selective(..., masking=...)`` to compare it in the same tables; its
name (:func:`masking_name`) keys its runs and its table column.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .errors import SelmaskError
from .masking import apply_mask, patch_losses, random_mask, selective_mask

MaskingFunction = Callable[
    [torch.nn.Module, torch.Tensor, torch.Tensor, float, torch.Generator],
    tuple[torch.Tensor, Optional[torch.Tensor]],
]


@torch.no_grad()
def score_patches(
    model: torch.nn.Module,
    images: torch.Tensor,
    grid: torch.Tensor,
    n_draws: int = 5,
    mask_ratio: float = 0.5,
    generator: torch.Generator | None = None,
    fill: float = 0.0,
) -> torch.Tensor:
    """Per-patch reconstruction loss ``[B, P]`` averaged over ``n_draws`` random masks.

    All draws of all images go through the network in one batch of
    ``B * n_draws`` (the authors ran one draw at a time). ``fill`` is the
    dataset mean colour in normalised space, i.e. 0.
    """
    batch, n_patches = images.shape[0], grid.shape[0]
    draws = random_mask(batch * n_draws, n_patches, mask_ratio, generator).to(images.device)  # [B*S, P]
    targets = images.repeat_interleave(n_draws, dim=0)  # [B*S, 3, h, w]
    masked_inputs, _ = apply_mask(targets, draws, grid, fill)
    reconstructions = model(masked_inputs)  # [B*S, 3, h, w]
    losses = patch_losses(reconstructions, targets, grid)  # [B*S, P]
    return losses.view(batch, n_draws, n_patches).mean(dim=1)  # [B, P]


class SelectiveMasking:
    """The paper's strategy: mask the patches the previous model reconstructs worst."""

    name = "selective"

    def __init__(self, n_draws: int = 5):
        self.n_draws = n_draws

    def __call__(self, model, images, grid, mask_ratio, generator):
        scores = score_patches(model, images, grid, self.n_draws, mask_ratio, generator)  # [B, P]
        return selective_mask(scores, mask_ratio), scores


class FixedRandomMasking:
    """Ablation: random masks, but drawn once per step and fixed like selective ones."""

    name = "random_fixed"

    def __call__(self, model, images, grid, mask_ratio, generator):
        return random_mask(images.shape[0], grid.shape[0], mask_ratio, generator), None


#: The maskings a config can name, built from its settings (a user's callable is used as given).
NAMED_MASKINGS: dict[str, Callable[..., MaskingFunction]] = {
    "selective": lambda cfg: SelectiveMasking(cfg.n_scoring_draws),
    "random_fixed": lambda cfg: FixedRandomMasking(),
}
#: The random-masking baseline's name: it draws fresh masks every batch and needs no masking function.
RANDOM_BASELINE = "random"


def masking_name(masking: Union[MaskingFunction, str]) -> str:
    """The name that keys a masking's runs and table column.

    A name of :data:`NAMED_MASKINGS`, or a callable's ``name`` attribute
    (else its ``__name__``). "random" is the baseline's and cannot be taken.
    """
    if isinstance(masking, str):
        if masking not in NAMED_MASKINGS:
            raise SelmaskError(f"unknown masking {masking!r}; choose one of {', '.join(NAMED_MASKINGS)} "
                               "or pass a function of your own")
        return masking
    name = getattr(masking, "name", getattr(masking, "__name__", type(masking).__name__))
    if name == RANDOM_BASELINE:  # ("selective" is left to SelectiveMasking and its subclasses)
        raise SelmaskError("a masking of your own needs a name other than 'random' (the baseline's): "
                           "set its `name` attribute; the name keys its runs and table column")
    return name


def build_masking(masking: Union[MaskingFunction, str], cfg) -> MaskingFunction:
    """The callable a masking name stands for, set up from ``cfg`` (a callable is returned as it is)."""
    return NAMED_MASKINGS[masking_name(masking)](cfg) if isinstance(masking, str) else masking
