"""Batch reproduction: a user's masking compared with the paper's in the same table."""

import pytest
import torch

from selmask_lib.errors import SelmaskError
from selmask_lib.masking import random_mask
from selmask_lib.pretraining import load_pretrain_run
from selmask_lib.reproduction import reproduce
from selmask_lib.strategies import masking_name
from selmask_lib.tables import format_table, results_table


def first_patches(model, images, grid, mask_ratio, generator):
    """A user's masking: always mask the first half of the patches (no scores)."""
    n_masked = int(mask_ratio * grid.shape[0])
    masks = torch.zeros(images.shape[0], grid.shape[0], dtype=torch.bool)
    masks[:, :n_masked] = True
    return masks, None


def test_masking_names_key_runs_and_columns():
    assert masking_name("random_fixed") == "random_fixed"
    assert masking_name(first_patches) == "first_patches"
    with pytest.raises(SelmaskError, match="unknown masking 'bogus'"):
        masking_name("bogus")

    def random(model, images, grid, mask_ratio, generator):
        return random_mask(images.shape[0], grid.shape[0], mask_ratio, generator), None

    with pytest.raises(SelmaskError, match="name other than 'random'"):
        masking_name(random)
    with pytest.raises(SelmaskError, match="two maskings share a name"):
        reproduce(["synthetic"], maskings=["random_fixed", "random_fixed"])


def test_reproduce_compares_extra_maskings_in_columns_of_their_own(small_synthetic_root, tmp_path):
    reproduction = reproduce(["synthetic"], preset="smoke", data_roots={"synthetic": str(small_synthetic_root)},
                             runs_root=tmp_path, variants=("selective_ir_self",),
                             maskings=["random_fixed", first_patches])
    assert reproduction.extra_columns == ["random_fixed_ir_self", "first_patches_ir_self"]
    df = reproduction.results
    assert sorted(df["variant"]) == ["first_patches_ir_self", "random_fixed_ir_self", "selective_ir_self"]
    for _, row in df.iterrows():  # each fine-tuning read the pretraining run of its own masking
        assert load_pretrain_run(row["pretrain_run"]).masking == row["pretrain_masking"]
    masks = load_pretrain_run(df.set_index("variant").loc["first_patches_ir_self", "pretrain_run"]).load_masks(1)
    n_masked = masks["masks"].sum(1)
    assert all(bool(row[:n].all()) for row, n in zip(masks["masks"], n_masked.tolist()))  # first patches only

    table = results_table(df, columns=reproduction.columns)
    for column in ["selective_ir_self", *reproduction.extra_columns]:
        assert table.loc["synthetic", (column, "n")] == 1
        assert 0 <= table.loc["synthetic", (column, "mean")] <= 100


def test_same_loss_control_is_not_run_where_both_arms_share_a_loss(tmp_path):
    reproduction = reproduce(["synthetic"], preset="smoke", runs_root=tmp_path, variants=(), same_loss_control=True)
    assert reproduction.extra_columns == [] and reproduction.results.empty
    assert any("same loss (ms_ssim)" in reason for reason in reproduction.skipped)


def test_same_loss_control_trains_random_masking_on_the_selective_arms_loss(small_synthetic_root, tmp_path,
                                                                           monkeypatch):
    import selmask_lib.reproduction as reproduction_module
    from selmask_lib.config import pretrain_preset

    def paper_like(name, dataset, **overrides):  # the smoke preset with the authors' loss per strategy
        loss = "ssim3" if overrides.get("strategy", "selective") == "selective" else "ms_ssim"
        return pretrain_preset(name, dataset, **{"recon_loss": loss, **overrides})

    monkeypatch.setattr(reproduction_module, "pretrain_preset", paper_like)
    reproduction = reproduce(["synthetic"], preset="smoke", data_roots={"synthetic": str(small_synthetic_root)},
                             runs_root=tmp_path, variants=("random_ir_self", "selective_ir_self"),
                             same_loss_control=True)
    assert reproduction.extra_columns == ["random_ir_ssim3_self"]
    df = reproduction.results.set_index("variant")
    assert sorted(df.index) == ["random_ir_self", "random_ir_ssim3_self", "selective_ir_self"]
    losses = {variant: load_pretrain_run(df.loc[variant, "pretrain_run"]).config for variant in df.index}
    assert losses["random_ir_ssim3_self"].strategy == "random"
    assert losses["random_ir_ssim3_self"].recon_loss == losses["selective_ir_self"].recon_loss == "ssim3"
    assert losses["random_ir_self"].recon_loss == "ms_ssim"
    table = format_table(results_table(reproduction.results, columns=reproduction.columns))
    assert "Random IR, ssim3 loss (self)" in table.columns
