"""The patch viewer of notebook 01: views drawn from hand-made masks, overlaps, the widget switch."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from selmask_lib.config import pretrain_preset  # noqa: E402
from selmask_lib.engine import save_checkpoint  # noqa: E402
from selmask_lib.errors import SelmaskError  # noqa: E402
from selmask_lib.masking import patch_grid, random_mask, selective_mask  # noqa: E402
from selmask_lib.models import build_reconstruction_model  # noqa: E402
from selmask_lib.pretraining import PretrainRun  # noqa: E402
from selmask_lib.viewer import (  # noqa: E402
    StepViews,
    gallery_figure,
    is_batch_run,
    jaccard,
    patch_viewer,
    random_jaccard,
    render_view,
    step_overlap,
    step_views,
)

N_IMAGES, SIDE, N_PATCHES = 2, 16, 16


def hand_made_views(same_masks_every_step: bool = False) -> StepViews:
    """Two steps of two 16 px images on a 4 x 4 grid, losses seeded, selective masks from them."""
    generator = torch.Generator().manual_seed(0)
    losses = torch.rand(2, N_IMAGES, N_PATCHES, generator=generator)
    if same_masks_every_step:
        losses[1] = losses[0]
    selective = torch.stack([selective_mask(step_losses, 0.5) for step_losses in losses])
    random = torch.stack([random_mask(N_IMAGES, N_PATCHES, 0.5, generator) for _ in range(2)])
    pictures = torch.rand(N_IMAGES, 3, SIDE, SIDE, generator=generator)
    return StepViews(["a", "b"], pictures, patch_grid(SIDE, SIDE, N_PATCHES), [1, 2], losses, selective, random,
                     (0.5, 0.5, 0.5))


def pixels_of(figure) -> np.ndarray:
    """The drawn figure without its title (which names the step and masking): only what the panel shows."""
    for axis in figure.axes:
        axis.set_title("")
    figure.canvas.draw()
    drawn = np.asarray(figure.canvas.buffer_rgba()).copy()
    plt.close(figure)
    return drawn


@pytest.mark.parametrize("overlay", ["loss", "selected", "masked"])
def test_a_view_differs_between_random_and_selective_and_between_steps(overlay):
    views = hand_made_views()
    selective = pixels_of(render_view(views, 1, 0, overlay, "selective"))
    assert not np.array_equal(selective, pixels_of(render_view(views, 1, 0, overlay, "random")))
    assert not np.array_equal(selective, pixels_of(render_view(views, 2, 0, overlay, "selective")))
    assert np.array_equal(selective, pixels_of(render_view(views, 1, 0, overlay, "selective")))  # same view, same picture


def test_the_selected_overlay_fades_exactly_the_other_patches():
    views = hand_made_views()
    figure = render_view(views, 2, 1, "selected", "selective")
    shown = figure.axes[0].images[0].get_array()  # [s, s, 3]
    plt.close(figure)
    picture = views.pictures[1].permute(1, 2, 0).numpy()
    changed = np.abs(np.asarray(shown) - picture).sum(axis=-1) > 1e-6  # [s, s]
    from selmask_lib.masking import pixel_mask

    assert np.array_equal(changed, ~pixel_mask(views.selective[1, 1][None], views.grid)[0].numpy())


@pytest.mark.parametrize("argument, call", [
    ("step", lambda views: render_view(views, 3)),
    ("overlay", lambda views: render_view(views, 1, overlay="blend")),
    ("masking", lambda views: render_view(views, 1, masking="mae")),
    ("image", lambda views: render_view(views, 1, image=5)),
])
def test_a_wrong_choice_names_its_argument(argument, call):
    with pytest.raises(SelmaskError, match=f"^{argument} must be"):
        call(hand_made_views())


def test_the_gallery_has_one_panel_per_image_step_and_overlay():
    views = hand_made_views()
    figure = gallery_figure(views, overlays=("loss", "selected", "masked"))
    panels = [axis for axis in figure.axes if axis.images]
    plt.close(figure)
    assert len(panels) == N_IMAGES * len(views.steps) * 3


def test_jaccard_by_hand():
    first = torch.tensor([[True, True, False, False], [True, False, False, False], [False] * 4])
    second = torch.tensor([[True, True, False, False], [False, True, True, False], [False] * 4])
    assert jaccard(first, second).tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert float(jaccard(torch.tensor([True, True, True, False]), torch.tensor([True, False, False, True]))) == 0.25


def test_random_masks_overlap_as_expected():
    generator = torch.Generator().manual_seed(1)
    overlaps = jaccard(random_mask(4000, 64, 0.5, generator), random_mask(4000, 64, 0.5, generator))
    assert random_jaccard(0.5) == pytest.approx(1 / 3)
    assert float(overlaps.mean()) == pytest.approx(random_jaccard(0.5), abs=0.01)


def test_step_overlap_is_one_where_a_step_keeps_its_patches():
    table = step_overlap(hand_made_views(same_masks_every_step=True))
    assert list(table.columns) == ["image", "steps", "selective", "random"]
    assert table["steps"].tolist() == ["1->2", "1->2"]
    assert table["selective"].tolist() == [1.0, 1.0]
    moved = step_overlap(hand_made_views())
    assert (moved["selective"] < 1).all()


def test_no_widget_outside_a_live_kernel():
    views = hand_made_views()
    assert is_batch_run()  # pytest is no Jupyter kernel
    assert patch_viewer(views) is None
    assert patch_viewer(views, interactive=False) is None
    widget = patch_viewer(views, interactive=True)
    assert type(widget).__name__ == "VBox"
    widget.close_all()


@pytest.fixture
def untrained_selective_run(tmp_path, small_synthetic_root, drop_checkpoints):
    """A selective run of K = 3 whose step models are seeded, untrained networks: what step_views reads."""
    cfg = pretrain_preset("smoke", "synthetic", data_root=str(small_synthetic_root), image_size=32,
                          score_size=32, n_patches=16, n_partitions=3, n_scoring_draws=2)
    for step in range(2):
        torch.manual_seed(step)
        (tmp_path / f"step_{step:02d}").mkdir()
        save_checkpoint(tmp_path / f"step_{step:02d}" / "model.pt", {"model": build_reconstruction_model().state_dict()})
    return PretrainRun(tmp_path, cfg, tmp_path / "pretrained.pt", "selective")


def test_step_views_score_the_same_images_with_every_step_model(untrained_selective_run):
    views = step_views(untrained_selective_run, n_images=2)
    assert views.steps == [1, 2]
    assert views.losses.shape == views.selective.shape == views.random.shape == (2, 2, 16)
    assert views.selective.sum(dim=-1).tolist() == [[8, 8], [8, 8]]
    assert torch.equal(views.selective, torch.stack([selective_mask(losses, 0.5) for losses in views.losses]))
    assert not torch.equal(views.losses[0], views.losses[1])  # two models, two scores
    again = step_views(untrained_selective_run, n_images=2)
    assert torch.equal(views.losses, again.losses) and torch.equal(views.random, again.random)  # seeded


def test_step_views_refuse_a_random_run(untrained_selective_run):
    run = untrained_selective_run
    random_run = PretrainRun(run.run_dir, run.config.updated(strategy="random"), run.weights, "random")
    with pytest.raises(SelmaskError, match="needs a selective run"):
        step_views(random_run)


def kernel_says_batch_run(tmp_path, extra_arguments) -> str:
    """Start an IPython kernel as a front end does (JupyterLab) or as nbclient does (papermill); ask it."""
    import os

    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}  # its history file goes there, not to ~
    manager, client = start_new_kernel(kernel_name="python3", extra_arguments=extra_arguments, env=env)
    printed = []
    try:
        reply = client.execute_interactive("from selmask_lib.viewer import is_batch_run; print(is_batch_run())",
                                           timeout=60, output_hook=printed.append)
        assert reply["content"]["status"] == "ok"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return "".join(message["content"].get("text", "") for message in printed).strip()


@pytest.mark.parametrize("extra_arguments, expected", [
    ([], "False"),                                          # JupyterLab: a history file, the widget is built
    (["--HistoryManager.hist_file=:memory:"], "True"),      # papermill / nbconvert (nbclient)
])
def test_batch_runs_are_told_apart_from_a_live_kernel(tmp_path, extra_arguments, expected):
    assert kernel_says_batch_run(tmp_path, extra_arguments) == expected
