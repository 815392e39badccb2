"""Patch grid, masks and per-patch losses (selmask_lib.masking)."""

import math

import pytest
import torch
from pytorch_msssim import ssim

from selmask_lib.errors import SelmaskError
from selmask_lib.masking import (
    apply_mask,
    grid_shape,
    patch_grid,
    patch_index_map,
    patch_losses,
    pixel_mask,
    random_mask,
    selective_mask,
)


def test_grid_at_256_is_21_by_21_with_16px_last_strip():
    grid = patch_grid(256, 256)
    assert grid.shape == (441, 4)
    assert grid_shape(grid) == (21, 21)
    assert grid[0].tolist() == [0, 12, 0, 12]
    assert grid[1].tolist() == [0, 12, 12, 24]  # row-major: second patch is to the right
    assert grid[-1].tolist() == [240, 256, 240, 256]


def reference_edges(length, n=512):
    """METHOD.md's formula written as plainly as possible."""
    step = math.ceil(length / math.sqrt(n))
    cuts = [c for c in range(0, length, step)]
    strips = [[c, min(c + step, length)] for c in cuts]
    if len(strips) > 1 and strips[-1][1] - strips[-1][0] < 0.5 * length / math.sqrt(n):
        last = strips.pop()
        strips[-1][1] = last[1]
    return strips


@pytest.mark.parametrize("height,width", [(256, 256), (64, 64), (96, 128), (375, 500), (23, 40), (1024, 2048)])
def test_grid_matches_formula_and_tiles_the_image(height, width):
    grid = patch_grid(height, width)
    rows, cols = reference_edges(height), reference_edges(width)
    expected = [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]
    assert [tuple(r) for r in grid.tolist()] == expected
    coverage = torch.zeros(height, width, dtype=torch.long)
    for y0, y1, x0, x1 in grid.tolist():
        coverage[y0:y1, x0:x1] += 1
    assert bool((coverage == 1).all())  # every pixel in exactly one patch
    if min(height, width) >= 64:  # tiny images get fewer, 1-2 px strips
        assert abs(grid_shape(grid)[0] - 21) <= 2 and abs(grid_shape(grid)[1] - 21) <= 2


def test_grid_with_few_patches_and_index_map():
    grid = patch_grid(30, 20, n_patches=4)
    assert grid_shape(grid) == (2, 2)
    index = patch_index_map(grid)
    assert index.shape == (30, 20)
    assert index[0, 0] == 0 and index[0, 19] == 1 and index[29, 0] == 2 and index[29, 19] == 3


def test_grid_too_small_is_a_clear_error():
    with pytest.raises(SelmaskError, match="height=16"):
        patch_grid(16, 64)
    with pytest.raises(SelmaskError, match="width=10"):
        patch_grid(64, 10)
    with pytest.raises(SelmaskError, match="n_patches"):
        patch_grid(64, 64, n_patches=0)


def test_random_mask_counts_and_seeding():
    mask = random_mask(6, 441, 0.5, generator=torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == (6, 441)
    assert mask.sum(dim=1).tolist() == [220] * 6
    again = random_mask(6, 441, 0.5, generator=torch.Generator().manual_seed(1))
    other = random_mask(6, 441, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(mask, again)
    assert not torch.equal(mask, other)
    assert not torch.equal(mask[0], mask[1])  # each image its own mask
    assert random_mask(2, 10, 0.75).sum(dim=1).tolist() == [7, 7]


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_rejected(ratio):
    with pytest.raises(SelmaskError, match="ratio"):
        random_mask(1, 10, ratio)
    with pytest.raises(SelmaskError, match="ratio"):
        selective_mask(torch.rand(1, 10), ratio)


def test_selective_mask_picks_top_k_with_deterministic_ties():
    loss = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.2, 0.3], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    mask = selective_mask(loss, 0.5)
    assert mask[0].tolist() == [False, True, True, True, False, False]
    # ties: the lower patch index wins, whatever the platform's sort does
    assert mask[1].tolist() == [True, True, True, False, False, False]
    big = torch.rand(4, 441)
    picked = selective_mask(big, 0.5)
    assert picked.sum(dim=1).tolist() == [220] * 4
    for row, row_mask in zip(big, picked):
        assert row[row_mask].min() >= row[~row_mask].max()


def test_selective_mask_rejects_nan():
    loss = torch.rand(2, 10)
    loss[1, 3] = float("nan")
    with pytest.raises(SelmaskError, match="patch_loss"):
        selective_mask(loss)


def test_apply_mask_fills_exactly_the_masked_pixels():
    images = torch.randn(3, 3, 48, 64)
    grid = patch_grid(48, 64)
    mask = random_mask(3, grid.shape[0], generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([0.1, -0.2, 0.3])
    masked, pixels = apply_mask(images, mask, grid, fill)
    assert pixels.shape == (3, 48, 64) and pixels.dtype == torch.bool
    for b in range(3):
        for p, (y0, y1, x0, x1) in enumerate(grid.tolist()):
            assert bool(pixels[b, y0:y1, x0:x1].all()) == bool(mask[b, p])
            assert bool(pixels[b, y0:y1, x0:x1].any()) == bool(mask[b, p])
    expected = images.clone()
    for c in range(3):
        expected[:, c][pixels] = fill[c]
    assert torch.equal(masked, expected)
    assert torch.equal(pixel_mask(mask, grid), pixels)


def test_apply_mask_rejects_grid_of_another_size():
    with pytest.raises(SelmaskError, match="grid"):
        apply_mask(torch.zeros(1, 3, 64, 64), torch.zeros(1, 441, dtype=torch.bool), patch_grid(256, 256), 0.0)


def loop_patch_losses(pred, target, grid):
    """The authors' way: crop every patch and call pytorch-msssim on it."""
    rows = []
    for b in range(pred.shape[0]):
        row = []
        for y0, y1, x0, x1 in grid.tolist():
            p, t = pred[b : b + 1, :, y0:y1, x0:x1], target[b : b + 1, :, y0:y1, x0:x1]
            row.append((p - t).abs().mean() + 1 - ssim(p, t, data_range=1.0, win_size=3))
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (256, 256)])
def test_patch_losses_equal_the_per_patch_loop(size):
    generator = torch.Generator().manual_seed(3)
    target = torch.randn(2, 3, *size, generator=generator)
    pred = target + 0.5 * torch.randn(2, 3, *size, generator=generator)
    grid = patch_grid(*size)
    fast = patch_losses(pred, target, grid)
    assert fast.shape == (2, grid.shape[0])
    assert torch.allclose(fast, loop_patch_losses(pred, target, grid), atol=1e-4)


def test_patch_losses_are_zero_for_a_perfect_reconstruction_and_rank_errors():
    target = torch.randn(1, 3, 64, 64)
    grid = patch_grid(64, 64)
    assert torch.allclose(patch_losses(target, target, grid), torch.zeros(1, grid.shape[0]), atol=1e-5)
    pred = target.clone()
    y0, y1, x0, x1 = grid[100].tolist()
    pred[:, :, y0:y1, x0:x1] += 1.0
    assert int(patch_losses(pred, target, grid).argmax()) == 100


def test_patch_losses_bad_input():
    grid = patch_grid(64, 64)
    with pytest.raises(SelmaskError, match="pred and target"):
        patch_losses(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 65), grid)
    bad = torch.zeros(1, 3, 64, 64)
    bad[0, 0, 5, 5] = float("nan")
    with pytest.raises(SelmaskError, match="NaN"):
        patch_losses(bad, torch.zeros(1, 3, 64, 64), grid)
    # at 70 px the grid formula keeps a last strip of 2 px: too thin for a 3x3 SSIM window
    with pytest.raises(SelmaskError, match="smaller than the 3x3"):
        patch_losses(torch.zeros(1, 3, 70, 90), torch.zeros(1, 3, 70, 90), patch_grid(70, 90))
