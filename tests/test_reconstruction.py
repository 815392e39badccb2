"""The walkthrough's helpers: reconstruction, pasting, per-draw scoring, held-out images, and their figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from selmask_lib.config import pretrain_preset  # noqa: E402
from selmask_lib.errors import SelmaskError  # noqa: E402
from selmask_lib.masking import patch_grid, pixel_mask, random_mask, selective_mask  # noqa: E402
from selmask_lib.plotting import (  # noqa: E402
    patch_grid_figure,
    per_class_iou_figure,
    pretraining_curves_figure,
    reconstruction_figure,
    scoring_figure,
    to_display,
)
from selmask_lib.pretrain_data import pretraining_pool  # noqa: E402
from selmask_lib.pretraining import PretrainRun  # noqa: E402
from selmask_lib.reconstruction import (  # noqa: E402
    held_out_indices,
    load_reconstruction_model,
    loss_share_inside,
    paste_visible,
    pretraining_history,
    reconstruct,
    score_draws,
    square_pictures,
)
from selmask_lib.strategies import score_patches  # noqa: E402

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
GRID = patch_grid(16, 16, 16)  # 4 x 4 patches of 4 px


class Blur(torch.nn.Module):
    """A tiny stand-in for the U-Net: a fixed 3 x 3 box blur, so reconstructions are known."""

    def forward(self, images):
        return torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)


def images_and_masks(n: int = 2):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=generator), random_mask(n, 16, 0.5, generator)


def test_reconstruct_feeds_the_model_the_masked_image():
    images, masks = images_and_masks()
    shown = reconstruct(torch.nn.Identity(), images, masks, GRID)  # the identity returns its input
    pixels = pixel_mask(masks, GRID).unsqueeze(1).expand_as(images)
    assert torch.all(shown[pixels] == 0)  # the mean colour in normalised space
    assert torch.equal(shown[~pixels], images[~pixels])


def test_paste_visible_keeps_the_original_where_visible_and_the_reconstruction_where_masked():
    images, masks = images_and_masks()
    reconstructions = torch.full_like(images, 7.0)
    pasted = paste_visible(images, reconstructions, masks, GRID)
    pixels = pixel_mask(masks, GRID).unsqueeze(1).expand_as(images)
    assert torch.all(pasted[pixels] == 7.0)
    assert torch.equal(pasted[~pixels], images[~pixels])


def test_score_draws_average_to_score_patches():
    images, _ = images_and_masks(3)
    draws, losses = score_draws(Blur(), images, GRID, 4, 0.5, torch.Generator().manual_seed(5))
    assert draws.shape == losses.shape == (3, 4, 16)
    assert draws.sum(dim=-1).eq(8).all()
    expected = score_patches(Blur(), images, GRID, 4, 0.5, torch.Generator().manual_seed(5))
    torch.testing.assert_close(losses.mean(dim=1), expected)
    assert not torch.equal(losses[:, 0], losses[:, 1])  # each draw hides other patches


def test_loss_share_inside_by_hand():
    loss = torch.tensor([[1.0, 1.0, 2.0, 4.0]])
    assert float(loss_share_inside(torch.tensor([[False, False, True, True]]), loss)) == 0.75
    assert float(loss_share_inside(torch.tensor([[True, True, False, False]]), loss)) == 0.25


def smoke_config(root, **overrides):
    return pretrain_preset("smoke", "synthetic", data_root=str(root), image_size=32, score_size=32, n_patches=16,
                           **overrides)


def test_held_out_indices_are_the_validation_images_of_each_loop(small_synthetic_root):
    selective = smoke_config(small_synthetic_root, n_partitions=2, max_images=20)  # partitions of 10: 9 + 1
    assert held_out_indices(selective) == [18, 19]  # partition 0 holds 0, 2, ..., 18; partition 1: 1, ..., 19
    random = smoke_config(small_synthetic_root, strategy="random", max_images=20)
    assert held_out_indices(random) == [18, 19]  # the last 10 % of the pool
    three = smoke_config(small_synthetic_root, n_partitions=3, max_images=30, val_fraction=0.2)
    assert held_out_indices(three) == [24, 25, 26, 27, 28, 29]  # the last 2 of 0, 3, ..., 27; of 1, ...; of 2, ...


def test_square_pictures_are_centre_squares_of_the_scoring_view(small_synthetic_root):
    cfg = smoke_config(small_synthetic_root)
    pictures = square_pictures(cfg, [0, 3])
    assert pictures.shape == (2, 3, 32, 32)
    assert 0 <= float(pictures.min()) and float(pictures.max()) <= 1
    from selmask_lib.pretrain_data import scoring_view

    view = scoring_view(pretraining_pool(cfg), 3, 32)
    top, left = (view.shape[1] - 32) // 2, (view.shape[2] - 32) // 2
    assert torch.equal(pictures[1], view[:, top:top + 32, left:left + 32])


def test_a_missing_step_model_is_one_clear_error(tmp_path, small_synthetic_root):
    run = PretrainRun(tmp_path, smoke_config(small_synthetic_root), tmp_path / "pretrained.pt", "selective")
    with pytest.raises(SelmaskError, match="no model of step 4"):
        load_reconstruction_model(run, step=4)


def test_pretraining_history_joins_the_steps_in_order(tmp_path, small_synthetic_root):
    for step in range(2):
        (tmp_path / f"step_{step:02d}").mkdir()
        (tmp_path / f"step_{step:02d}" / "metrics.csv").write_text(
            "epoch,lr,train_loss,val_loss,seconds\n0,0.1,2.0,2.5,1\n1,0.1,1.5,1.8,1\n")
    run = PretrainRun(tmp_path, smoke_config(small_synthetic_root, n_partitions=2), tmp_path / "p.pt", "selective")
    history = pretraining_history(run)
    assert history[["step", "epoch"]].values.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    figure = pretraining_curves_figure(history)
    assert len(figure.axes[0].lines) == 4  # train and val of two steps
    plt.close(figure)


# --------------------------------------------------------------------------- figures


def test_reconstruction_figure_shows_original_masked_output_and_pasted():
    images, masks = images_and_masks()
    reconstructions = Blur()(images)
    figure = reconstruction_figure(images, masks, reconstructions, GRID, MEAN, STD)
    axes = np.array(figure.axes).reshape(2, 4)
    pasted = paste_visible(images, reconstructions, masks, GRID)
    for row in range(2):
        np.testing.assert_allclose(axes[row, 0].images[0].get_array(), to_display(images[row], MEAN, STD))
        np.testing.assert_allclose(axes[row, 2].images[0].get_array(), to_display(reconstructions[row], MEAN, STD))
        np.testing.assert_allclose(axes[row, 3].images[0].get_array(), to_display(pasted[row], MEAN, STD))
    plt.close(figure)


def test_scoring_figure_shares_one_colour_scale_per_image_and_shows_the_mean():
    images, _ = images_and_masks()
    draws, losses = score_draws(Blur(), images, GRID, 3, 0.5, torch.Generator().manual_seed(2))
    selected = selective_mask(losses.mean(dim=1), 0.5)
    figure = scoring_figure(images, draws, losses, selected, GRID, MEAN, STD)
    loss_rows = [axis for axis in figure.axes if axis.images and axis.images[0].get_cmap().name == "magma"]
    assert len(loss_rows) == 2 * 4  # S draws + the mean, for each image
    first_image = loss_rows[:4]
    assert len({axis.images[0].get_clim() for axis in first_image}) == 1
    mean_map = np.asarray(first_image[-1].images[0].get_array())
    assert mean_map[0, 0] == pytest.approx(float(losses[0, :, 0].mean()))  # pixel (0, 0) lies in patch 0
    plt.close(figure)


def test_per_class_iou_figure_sorts_weakest_first_and_names_absent_classes():
    figure = per_class_iou_figure({"sky": 0.9, "wire": 0.1, "fern": None, "ring": 0.5}, miou=0.5)
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_yticklabels()] == ["wire", "ring", "sky"]
    assert axis.yaxis_inverted()  # drawn top to bottom: the weakest class on top
    assert [bar.get_width() for bar in axis.patches] == pytest.approx([10, 50, 90])
    assert "fern" in axis.get_xlabel()
    plt.close(figure)


def test_patch_grid_figure_outlines_every_patch():
    figure = patch_grid_figure(torch.rand(3, 16, 16), GRID)
    assert len(figure.axes[1].patches) == GRID.shape[0]
    assert len(figure.axes[1].texts) == GRID.shape[0]  # each patch numbered
    plt.close(figure)
