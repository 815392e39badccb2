"""End-to-end demo on the embedded synthetic data (``selmask demo`` / ``make demo``).

1. generate the synthetic dataset if needed;
2. pretrain the U-Net briefly with random masking (``demo`` preset, cached in
   ``runs/`` by config hash, so a second demo reuses it);
3. take a few images the model has not trained on, mask them randomly and
   reconstruct them;
4. score every patch (L1 + 1 - SSIM, averaged over S random draws) and pick
   the selective mask: the 50% of patches with the highest loss;
5. save ``figures/demo_selective_masking.png`` with input / random mask /
   reconstruction / loss heatmap / selective mask.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the demo writes a file; it never needs a screen

import torch  # noqa: E402

from .config import pretrain_preset  # noqa: E402
from .engine import epoch_generator, load_checkpoint  # noqa: E402
from .masking import apply_mask, patch_grid, random_mask, selective_mask  # noqa: E402
from .models import build_reconstruction_model  # noqa: E402
from .plotting import masking_figure  # noqa: E402
from .pretraining import pretrain  # noqa: E402
from .data import resolve_data_root  # noqa: E402
from .pretrain_data import pretraining_pool, train_val_split  # noqa: E402
from .reconstruction import square_pictures  # noqa: E402
from .strategies import score_patches  # noqa: E402
from .transforms import normalise  # noqa: E402

FIGURE_NAME = "demo_selective_masking.png"


def run_demo(out_dir: str | Path = "figures", data_root: str | Path | None = None,
             runs_root: str | Path = "runs", n_images: int = 4, **overrides) -> Path:
    """Run the demo and return the path of the saved figure."""
    import matplotlib.pyplot as plt

    root = resolve_data_root("synthetic", None if data_root is None else str(data_root))
    cfg = pretrain_preset("demo", "synthetic", data_root=str(root), strategy="random", **overrides)
    run = pretrain(cfg, runs_root=runs_root)

    model = build_reconstruction_model()
    model.load_state_dict(load_checkpoint(run.weights)["model"])
    model.eval()

    pool = pretraining_pool(cfg)
    _, held_out = train_val_split(range(len(pool)), cfg.val_fraction)  # not trained on
    # Square crops so the rows share one grid: the scoring view's centre.
    images = normalise(square_pictures(cfg, held_out[:n_images]), cfg.mean, cfg.std)  # [B, 3, S, S]
    grid = patch_grid(cfg.score_size, cfg.score_size, cfg.n_patches)  # [P, 4]

    generator = epoch_generator(cfg.seed, "demo")
    random_masks = random_mask(images.shape[0], grid.shape[0], cfg.mask_ratio, generator)  # [B, P]
    with torch.no_grad():
        masked_inputs, _ = apply_mask(images, random_masks, grid, 0.0)
        reconstructions = model(masked_inputs)
        patch_loss = score_patches(model, images, grid, cfg.n_scoring_draws, cfg.mask_ratio, generator)
    selected = selective_mask(patch_loss, cfg.mask_ratio)  # [B, P]

    figure = masking_figure(images, random_masks, reconstructions, patch_loss, selected, grid,
                            cfg.mean, cfg.std,
                            title=f"selective masking on held-out synthetic images ({run.run_dir.name})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FIGURE_NAME
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
