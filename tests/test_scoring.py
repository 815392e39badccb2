"""Selective masking's scoring step (selmask_lib.strategies.score_patches), against plain loops.

For each image: draw S random masks, fill the masked patches with the mean
colour, reconstruct the *masked* image, take the per-patch loss L1 + 1 - SSIM
against the *original* image, and average over the S draws. The references
below do exactly that one image and one draw at a time.
"""

import pytest
import torch
from pytorch_msssim import ssim

from selmask_lib.masking import patch_grid, random_mask
from selmask_lib.strategies import SelectiveMasking, score_patches

BATCH, HEIGHT, WIDTH, N_PATCHES = 2, 48, 64, 16  # a 4 x 4 grid of 12 x 16 px patches
N_DRAWS = 3


def small_net(seed=0):
    """A fixed, seeded conv net: its output depends on every input pixel near it, non-linearly."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 3, 3, padding=1)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(0.4 * torch.randn(parameter.shape, generator=generator))
    return net.eval()


class RecordingModel(torch.nn.Module):
    """Wraps a network and keeps a copy of every batch it is asked to reconstruct."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


def images_and_grid(seed=1):
    images = torch.randn(BATCH, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))
    grid = patch_grid(HEIGHT, WIDTH, N_PATCHES)
    assert grid.shape == (N_PATCHES, 4)
    assert int((grid[:, 1] - grid[:, 0]).min()) >= 8 and int((grid[:, 3] - grid[:, 2]).min()) >= 8
    return images, grid


def loop_patch_losses(pred, target, grid):
    """The authors' way, for one image [1, 3, H, W]: crop every patch, L1 + 1 - pytorch-msssim SSIM."""
    losses = []
    for y0, y1, x0, x1 in grid.tolist():
        p, t = pred[:, :, y0:y1, x0:x1], target[:, :, y0:y1, x0:x1]
        losses.append((p - t).abs().mean() + 1 - ssim(p, t, data_range=1.0, win_size=3))
    return torch.stack(losses)  # [P]


def mask_by_hand(image, draw, grid, fill):
    """One image [3, H, W] with the patches of ``draw`` [P] (True = masked) set to ``fill``."""
    masked = image.clone()
    for p, (y0, y1, x0, x1) in enumerate(grid.tolist()):
        if draw[p]:
            masked[:, y0:y1, x0:x1] = fill
    return masked


@torch.no_grad()
def per_draw_reference(net, images, grid, draws, fill):
    """``[B, S, P]`` per-patch losses, one image and one draw at a time; ``draws`` is ``[B, S, P]``."""
    batch, n_draws = draws.shape[:2]
    losses = torch.zeros(batch, n_draws, grid.shape[0])
    for b in range(batch):
        for s in range(n_draws):
            masked = mask_by_hand(images[b], draws[b, s], grid, fill)
            reconstruction = net(masked[None])  # [1, 3, H, W]
            losses[b, s] = loop_patch_losses(reconstruction, images[b : b + 1], grid)
    return losses


def assert_draws_matter(per_draw, net, images, grid):
    """Guards against a vacuous test: the draws give different losses, so their mean is not any
    single draw, and reconstructing the unmasked images gives different losses again."""
    mean = per_draw.mean(dim=1)
    for s in range(per_draw.shape[1]):
        assert (per_draw[:, s] - mean).abs().max() > 0.05
    with torch.no_grad():
        unmasked = torch.stack([loop_patch_losses(net(images[b : b + 1]), images[b : b + 1], grid)
                                for b in range(images.shape[0])])
    assert (unmasked - mean).abs().max() > 0.05


@pytest.mark.parametrize("fill", [0.0, 0.7])
def test_scores_are_the_mean_over_draws_of_the_masked_reconstruction_loss(fill):
    # Order-free check: whatever order the draws are made and batched in, each batch the model
    # sees must be original images with exactly half of their patches set to the fill colour;
    # recover every draw from them, redo it by hand, and average per image.
    net = small_net()
    model = RecordingModel(net)
    images, grid = images_and_grid()
    n_masked = int(0.5 * N_PATCHES)
    scores = score_patches(model, images, grid, N_DRAWS, 0.5, torch.Generator().manual_seed(5), fill=fill)
    assert scores.shape == (BATCH, N_PATCHES)

    seen = torch.cat(model.inputs)  # [B*S, 3, H, W] in whatever order the model got them
    assert seen.shape == (BATCH * N_DRAWS, 3, HEIGHT, WIDTH)
    draws = {b: [] for b in range(BATCH)}
    for masked in seen:
        is_fill = torch.tensor([bool((masked[:, y0:y1, x0:x1] == fill).all()) for y0, y1, x0, x1 in grid.tolist()])
        assert int(is_fill.sum()) == n_masked, "the model must reconstruct images with half of the patches masked"
        sources = [b for b in range(BATCH) if torch.equal(mask_by_hand(images[b], is_fill, grid, fill), masked)]
        assert len(sources) == 1, "every masked input is one of the images, masked patch by patch"
        draws[sources[0]].append(is_fill)
    for b in range(BATCH):
        assert len(draws[b]) == N_DRAWS
        assert len({tuple(d.tolist()) for d in draws[b]}) == N_DRAWS  # S different masks per image
    draws = torch.stack([torch.stack(draws[b]) for b in range(BATCH)])  # [B, S, P]

    per_draw = per_draw_reference(net, images, grid, draws, fill)
    assert_draws_matter(per_draw, net, images, grid)
    torch.testing.assert_close(scores, per_draw.mean(dim=1), atol=1e-4, rtol=1e-4)


def test_scores_match_a_loop_over_the_seeded_draws():
    # The documented draw order: one random_mask(B * S, P) call on the given generator, row b * S + s
    # is draw s of image b. Same seed, same draws, so runs and resumed runs pick the same masks.
    net = small_net(seed=2)
    images, grid = images_and_grid(seed=3)
    scores = score_patches(net, images, grid, N_DRAWS, 0.5, torch.Generator().manual_seed(11))
    draws = random_mask(BATCH * N_DRAWS, N_PATCHES, 0.5, torch.Generator().manual_seed(11))
    draws = draws.view(BATCH, N_DRAWS, N_PATCHES)
    per_draw = per_draw_reference(net, images, grid, draws, 0.0)
    assert_draws_matter(per_draw, net, images, grid)
    torch.testing.assert_close(scores, per_draw.mean(dim=1), atol=1e-4, rtol=1e-4)


def test_scores_are_seeded_and_depend_on_the_number_of_draws():
    net = small_net()
    images, grid = images_and_grid()

    def scores(seed, n_draws=N_DRAWS):
        return score_patches(net, images, grid, n_draws, 0.5, torch.Generator().manual_seed(seed))

    assert torch.equal(scores(4), scores(4))
    assert not torch.allclose(scores(4), scores(5), atol=1e-3)
    assert not torch.allclose(scores(4, n_draws=1), scores(4, n_draws=2), atol=1e-3)


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_selective_masking_masks_the_top_scoring_patches(ratio):
    net = small_net()
    images, grid = images_and_grid()
    masks, scores = SelectiveMasking(N_DRAWS)(net, images, grid, ratio, torch.Generator().manual_seed(7))
    # the scores are score_patches' with the strategy's number of draws, on the same generator
    expected_scores = score_patches(net, images, grid, N_DRAWS, ratio, torch.Generator().manual_seed(7))
    torch.testing.assert_close(scores, expected_scores)
    assert masks.dtype == torch.bool and masks.shape == (BATCH, N_PATCHES)
    n_masked = int(ratio * N_PATCHES)  # floor, as in selective_mask and random_mask (16 * 0.3 -> 4)
    for row_scores, row_mask in zip(scores, masks):
        assert int(row_mask.sum()) == n_masked
        top = sorted(range(N_PATCHES), key=lambda p: -float(row_scores[p]))[:n_masked]
        assert sorted(torch.nonzero(row_mask).flatten().tolist()) == sorted(top)  # True = masked = worst
    assert not torch.equal(masks[0], masks[1])  # each image its own mask
