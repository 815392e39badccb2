"""The settings that reproduce the authors' code (docs/METHOD.md, "The authors' code"): each changes
what it should and nothing else, and the ``paper`` preset sets every one of them their way."""

import pytest
import torch
from pytorch_msssim import ms_ssim, ssim
from torchvision.transforms import v2

from selmask_lib.config import (
    DATASET_NAMES,
    config_hash,
    finetune_preset,
    pretrain_preset,
)
import json

from selmask_lib.engine import load_checkpoint
from selmask_lib.errors import SelmaskError
from selmask_lib.finetuning import build_initialised_model
from selmask_lib.losses import ReconstructionLoss
from selmask_lib.masking import patch_grid, pixel_mask
from selmask_lib.models import HEAD_PREFIX, build_reconstruction_model, build_segmentation_model, pad_to_multiple
from selmask_lib.pretrain_data import BakedMasks, ReconstructionDataset, as_uint8, baked_image, pretraining_pool
from selmask_lib.pretraining import pretrain


def read_metrics(csv_path):
    """The rows of a run's metrics log (the JSONL record next to the CSV)."""
    return [json.loads(line) for line in csv_path.with_suffix(".jsonl").read_text().splitlines()]


def smoke(root, **overrides):
    return pretrain_preset("smoke", "synthetic", data_root=str(root), **overrides)


# --------------------------------------------------------------------------- item 1: recon_loss


def test_ssim3_loss_is_l1_plus_one_minus_ssim_with_a_3x3_window(caplog):
    target = torch.randn(2, 3, 64, 64)
    pred = target + 0.3 * torch.randn_like(target)
    expected = (pred - target).abs().mean() + 1 - ssim(pred, target, data_range=1.0, win_size=3)
    with caplog.at_level("WARNING"):
        value = ReconstructionLoss("ssim3")(pred, target)
    assert float(value) == pytest.approx(float(expected), rel=1e-6)
    assert "single-scale SSIM" not in caplog.text  # no fallback: ssim3 is meant for every size
    window11 = (pred - target).abs().mean() + 1 - ssim(pred, target, data_range=1.0, win_size=11)
    assert float(value) != pytest.approx(float(window11), rel=1e-3)


def test_ms_ssim_loss_is_unchanged_by_the_new_setting():
    target = torch.randn(1, 3, 192, 192)
    pred = target + 0.2 * torch.randn_like(target)
    expected = (pred - target).abs().mean() + 1 - ms_ssim(pred, target, data_range=1.0)
    assert float(ReconstructionLoss("ms_ssim")(pred, target)) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(SelmaskError, match="ms_ssim, ssim3"):
        ReconstructionLoss("ssim11")


def test_recon_loss_is_recorded_in_the_run_and_changes_its_weights(small_synthetic_root, tmp_path):
    ms = pretrain(smoke(small_synthetic_root, strategy="random"), out_dir=tmp_path / "ms")
    s3 = pretrain(smoke(small_synthetic_root, strategy="random", recon_loss="ssim3"), out_dir=tmp_path / "s3")
    assert s3.config.recon_loss == "ssim3" and ms.config.recon_loss == "ms_ssim"
    a, b = load_checkpoint(ms.weights)["model"], load_checkpoint(s3.weights)["model"]
    assert any(not torch.equal(a[name], b[name]) for name in a)


# --------------------------------------------------------------------------- item 2: head transfer


@pytest.fixture(scope="module")
def reconstruction_run(small_synthetic_root, tmp_path_factory):
    return pretrain(smoke(small_synthetic_root, strategy="random"), out_dir=tmp_path_factory.mktemp("rec") / "run")


@pytest.mark.parametrize("transfer_head", [False, True])
def test_transfer_head_if_shapes_match_copies_the_rgb_head_into_a_3_class_head(reconstruction_run, transfer_head):
    cfg = finetune_preset("smoke", "synthetic", init="random_ir", pretrained=str(reconstruction_run.run_dir),
                          transfer_head_if_shapes_match=transfer_head)
    source = load_checkpoint(reconstruction_run.weights)["model"]
    model, summary = build_initialised_model(cfg, 3, reconstruction_run)
    state = model.state_dict()
    head = [name for name in state if name.startswith(HEAD_PREFIX)]
    assert head and all(torch.equal(state[n], source[n]) == transfer_head for n in head)
    body = [name for name in state if not name.startswith(HEAD_PREFIX) and "num_batches" not in name]
    assert all(torch.equal(state[n], source[n]) for n in body)  # the rest is copied either way
    assert ("head left random" in summary["summary"]) != transfer_head


def test_transfer_head_skips_a_head_of_another_shape(reconstruction_run):
    cfg = finetune_preset("smoke", "synthetic", init="random_ir", pretrained=str(reconstruction_run.run_dir),
                          transfer_head_if_shapes_match=True)
    model, summary = build_initialised_model(cfg, 5, reconstruction_run)
    assert "head left random" in summary["summary"]
    assert model.state_dict()["head.1.weight"].shape[0] == 5


# --------------------------------------------------------------------------- item 3: pretrained_checkpoint


def test_pretrained_checkpoint_best_val_loss_hands_over_the_best_epoch(small_synthetic_root, tmp_path):
    settings = dict(strategy="random", epochs=4, lr=3e-2)  # a high lr, so validation loss moves around
    last = pretrain(smoke(small_synthetic_root, **settings), out_dir=tmp_path / "last")
    best = pretrain(smoke(small_synthetic_root, pretrained_checkpoint="best_val_loss", **settings),
                    out_dir=tmp_path / "best")
    history = read_metrics(best.run_dir / "metrics.csv")
    assert [row["val_loss"] for row in history] == [row["val_loss"] for row in read_metrics(last.run_dir / "metrics.csv")]
    best_epoch = min(history, key=lambda row: row["val_loss"])["epoch"]
    saved = load_checkpoint(best.weights)
    assert saved["weights"] == "best_val_loss" and saved["epoch"] == best_epoch
    assert saved["val_loss"] == pytest.approx(min(row["val_loss"] for row in history))
    last_weights = load_checkpoint(last.weights)["model"]
    same = all(torch.equal(v, last_weights[k]) for k, v in saved["model"].items())
    assert same == (best_epoch == history[-1]["epoch"])
    assert not (best.run_dir / "best.pt").exists()  # its copy lives in pretrained.pt


def test_best_val_loss_of_a_selective_run_comes_from_its_last_step(small_synthetic_root, tmp_path):
    run = pretrain(smoke(small_synthetic_root, pretrained_checkpoint="best_val_loss", epochs=2), out_dir=tmp_path / "s")
    history = read_metrics(run.run_dir / "step_01" / "metrics.csv")
    saved = load_checkpoint(run.weights)
    assert saved["epoch"] == min(history, key=lambda row: row["val_loss"])["epoch"]


def test_best_val_loss_needs_validation_images():
    with pytest.raises(SelmaskError, match="pretrained_checkpoint"):
        pretrain_preset("smoke", "synthetic", pretrained_checkpoint="best_val_loss", val_fraction=0.0)


# --------------------------------------------------------------------------- item 5: pad_to_multiple


def test_padding_reflects_at_the_bottom_right_and_the_output_is_cropped_back():
    images = torch.arange(2 * 3 * 70 * 90, dtype=torch.float32).reshape(2, 3, 70, 90)
    padded = pad_to_multiple(images, 64)
    assert padded.shape == (2, 3, 128, 128)
    assert torch.equal(padded[..., :70, :90], images)
    assert torch.equal(padded[..., 70, :90], images[..., 68, :])  # reflection, not replication
    torch.manual_seed(0)
    plain = build_segmentation_model(4).eval()
    padding = build_segmentation_model(4, pad_to_multiple=64).eval()
    padding.load_state_dict(plain.state_dict())
    with torch.no_grad():
        out = padding(images)
        assert out.shape == (2, 4, 70, 90)
        assert torch.allclose(out, plain(padded)[..., :70, :90])
        assert not torch.allclose(out, plain(images), atol=1e-4)  # it changes what the model sees
        square = torch.randn(1, 3, 128, 64)
        assert torch.equal(padding(square), plain(square))  # and nothing at a multiple of 64


def test_pad_to_multiple_reaches_the_models_of_both_configs(small_synthetic_root):
    assert build_reconstruction_model(pad_to_multiple=64).pad_to_multiple == 64
    with pytest.raises(SelmaskError, match="pad_to_multiple"):
        pretrain_preset("smoke", "synthetic", pad_to_multiple=-1)


# --------------------------------------------------------------------------- item 6: baked masks


def test_baked_image_fills_exactly_the_masked_pixels_with_the_mean_colour():
    view = torch.rand(3, 24, 32)
    pixels = torch.zeros(24, 32, dtype=torch.bool)
    pixels[4:10, 8:20] = True
    baked = BakedMasks(mean=(0.4529, 0.4317, 0.3999), std=(0.4443, 0.4665, 0.4887))
    assert baked.fill == (115, 110, 102)
    image = baked_image(as_uint8(view), pixels, baked.fill)
    assert image.dtype == torch.uint8
    assert (image[:, pixels] == torch.tensor([115, 110, 102])[:, None]).all()
    assert torch.equal(image[:, ~pixels], (view * 255).round().to(torch.uint8)[:, ~pixels])
    jpeg = baked_image(as_uint8(view), pixels, baked.fill, jpeg_quality=75)
    assert jpeg.shape == image.shape and not torch.equal(jpeg, image)
    assert (jpeg.float() - image.float()).abs().mean() < 60  # lossy, but the same picture


def test_baked_masks_jitter_the_input_and_move_the_target_with_the_geometry(small_synthetic_root):
    cfg = smoke(small_synthetic_root)
    pool = pretraining_pool(cfg)
    grid_size = None
    patch_masks = {}
    for index in range(2):
        from selmask_lib.pretrain_data import scoring_view
        view = scoring_view(pool, index, cfg.score_size)
        grid_size = patch_grid(*view.shape[-2:], cfg.n_patches).shape[0]
        patch_masks[index] = torch.arange(grid_size) % 2 == 0
    baked = BakedMasks(cfg.mean, cfg.std)
    flip_and_darken = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ColorJitter(brightness=(0.5, 0.5)),
                                  v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.mean, cfg.std)])
    data = ReconstructionDataset(pool, [0, 1], flip_and_darken, cfg.score_size, cfg.n_patches, patch_masks, baked)
    masked, target, pixels = data[0]
    view = scoring_view(pool, 0, cfg.score_size)
    expected_target = ((view * 255).round() / 255 - torch.tensor(cfg.mean)[:, None, None]) \
        / torch.tensor(cfg.std)[:, None, None]
    assert torch.allclose(target, expected_target.flip(-1), atol=1e-6)  # flipped, not darkened
    grid = patch_grid(*view.shape[-2:], cfg.n_patches)
    assert torch.equal(pixels, pixel_mask(patch_masks[0][None], grid)[0].flip(-1))
    darkened_fill = (torch.tensor(baked.fill) * 0.5 / 255 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    assert torch.allclose(masked[:, pixels].mean(1), darkened_fill, atol=2e-2)  # the fill was jittered too


def test_baked_items_are_kept_once_and_come_out_as_without_the_cache(small_synthetic_root, monkeypatch):
    """The burned-in, JPEG round-tripped input is the same every epoch: the cache keeps it, so the round
    trip runs once per image, and every augmented item equals the one built without a cache."""
    import selmask_lib.pretrain_data as pretrain_data
    from selmask_lib.data.cache import DecodedCache
    from selmask_lib.engine import SeededAugmentation
    from selmask_lib.pretrain_data import scoring_view

    cfg = smoke(small_synthetic_root)
    pool = pretraining_pool(cfg)
    indices = [3, 0, 2, 1]  # pool indices, not item numbers
    def grid_size(index):  # the images differ in size, so their patch grids do too
        return patch_grid(*scoring_view(pool, index, cfg.score_size).shape[-2:], cfg.n_patches).shape[0]

    patch_masks = {index: torch.rand(grid_size(index), generator=torch.Generator().manual_seed(index)) < 0.5
                   for index in indices}
    transform = v2.Compose([v2.RandomResizedCrop(cfg.image_size, scale=(0.25, 1.0)), v2.RandomHorizontalFlip(),
                            v2.ColorJitter(0.4, 0.4, 0.4, 0.1), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(cfg.mean, cfg.std)])
    baked = BakedMasks(cfg.mean, cfg.std, jpeg_quality=75)
    round_trips = []
    monkeypatch.setattr(pretrain_data, "baked_image", lambda *args: round_trips.append(1) or baked_image(*args))

    def dataset(cache):
        return ReconstructionDataset(pool, indices, transform, cfg.score_size, cfg.n_patches, patch_masks, baked,
                                     cache=cache)

    masked, target, pixels = dataset(DecodedCache(0)).baked_view(1)  # as the authors saved it: through JPEG 75
    view = as_uint8(scoring_view(pool, 1, cfg.score_size))
    grid = patch_grid(*view.shape[-2:], cfg.n_patches)
    assert torch.equal(target, view) and torch.equal(pixels, pixel_mask(patch_masks[1][None], grid)[0])
    assert torch.equal(masked, baked_image(view, pixels, baked.fill, 75))
    assert not torch.equal(masked, baked_image(view, pixels, baked.fill))

    def items(cache):
        data = dataset(cache)
        data.fill_cache()
        round_trips.clear()
        seeded = SeededAugmentation(data)
        return [seeded[item, key] for key in range(3) for item in range(len(indices))]  # three "epochs"

    kept = items(DecodedCache(64))
    assert round_trips == []  # all made by fill_cache, none in the three epochs
    two_images = sum(tensor.nbytes for index in indices[:2] for tensor in dataset(DecodedCache(0)).baked_view(index))
    partly = items(DecodedCache(two_images / 2**20))  # room for the first two images only
    assert len(round_trips) == 3 * 2  # the two images beyond the budget, each epoch (items() counts from 0)
    rebuilt = items(DecodedCache(0))
    assert len(round_trips) == 3 * len(indices)
    for with_cache, partly_kept, without in zip(kept, partly, rebuilt):
        for a, b, c in zip(with_cache, partly_kept, without):
            assert torch.equal(a, b) and torch.equal(a, c)


def test_a_baked_selective_run_trains_and_differs_from_an_unbaked_one(small_synthetic_root, tmp_path):
    plain = pretrain(smoke(small_synthetic_root), out_dir=tmp_path / "plain")
    baked = pretrain(smoke(small_synthetic_root, bake_selective_masks=True, baked_image_quality=75),
                     out_dir=tmp_path / "baked")
    step0 = [load_checkpoint(run.run_dir / "step_00" / "model.pt")["model"] for run in (plain, baked)]
    assert all(torch.equal(step0[0][k], step0[1][k]) for k in step0[0])  # step 0 has no fixed masks
    a, b = (load_checkpoint(run.weights)["model"] for run in (plain, baked))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_bake_settings_are_refused_where_they_cannot_apply():
    with pytest.raises(SelmaskError, match="bake_selective_masks"):
        pretrain_preset("smoke", "synthetic", strategy="random", bake_selective_masks=True)
    with pytest.raises(SelmaskError, match="baked_image_quality"):
        pretrain_preset("smoke", "synthetic", baked_image_quality=75)
    with pytest.raises(SelmaskError, match="baked_image_quality"):
        pretrain_preset("smoke", "synthetic", bake_selective_masks=True, baked_image_quality=100)


# --------------------------------------------------------------------------- the paper preset


@pytest.mark.parametrize("dataset", ["voc", "cityscapes", "nassar", "sugarbeets"])
def test_paper_preset_does_what_the_authors_code_did(dataset):
    selective = pretrain_preset("paper", dataset)
    random = pretrain_preset("paper", dataset, strategy="random")
    finetune = finetune_preset("paper", dataset)
    # 1: the selective loop trains every step on L1 + (1 - SSIM 3x3), random masking on MS-SSIM
    assert (selective.recon_loss, random.recon_loss) == ("ssim3", "ms_ssim")
    # 2: every tensor whose name and shape match is transferred, the head included
    assert finetune.transfer_head_if_shapes_match
    # 3: fine-tuning gets the final loop's best-validation-loss weights
    assert selective.pretrained_checkpoint == random.pretrained_checkpoint == "best_val_loss"
    # 5: every forward pass reflect-pads to a multiple of 64
    assert selective.pad_to_multiple == random.pad_to_multiple == finetune.pad_to_multiple == 64
    # 6: fixed masks are baked into the images, VOC's as JPEG quality 75
    assert selective.bake_selective_masks and not random.bake_selective_masks
    assert selective.baked_image_quality == (75 if dataset == "voc" else None)
    # 4: void is a trained class where the labels have one
    assert finetune.void_as_class == (dataset in ("voc", "cityscapes"))
    # 7: a class absent from truth and prediction scores 0 and counts in the mean
    assert finetune.absent_class_iou == "zero"
    # 8, 9: loaders drop the last partial batch; resizing without antialiasing (OpenCV)
    assert selective.drop_last and random.drop_last and finetune.drop_last
    assert not (selective.antialias or random.antialias or finetune.antialias)
    # 10: the Cityscapes pool is every fine frame plus train_extra
    assert selective.cityscapes_pool == random.cityscapes_pool == \
        ("all_fine_and_extra" if dataset == "cityscapes" else "train")
    # 11: the Sugarbeets list cannot ship with the kit: a user passes it
    assert finetune.split_list is None
    # 12: fp32
    assert not (selective.amp or random.amp or finetune.amp)


@pytest.mark.parametrize("dataset", ["voc", "sugarbeets"])
def test_a_paper_config_names_its_loss_and_a_strategy_change_keeps_it_the_authors(dataset):
    cfg = pretrain_preset("paper", dataset)
    assert cfg.recon_loss == "ssim3"  # no value is left to resolve at run time
    # turned into the other strategy afterwards (pretrain_random(cfg) does this): the authors' other run
    assert cfg.updated(strategy="random") == pretrain_preset("paper", dataset, strategy="random")
    assert pretrain_preset("paper", dataset, strategy="random").updated(strategy="selective") == cfg
    # a config that is not exactly the paper's keeps what it says: the user's loss stays theirs
    mine = pretrain_preset("paper", dataset, seed=1).updated(recon_loss="ms_ssim", bake_selective_masks=False,
                                                             baked_image_quality=None)
    assert mine.updated(strategy="random").recon_loss == "ms_ssim"
    with pytest.raises(SelmaskError, match="bake_selective_masks"):  # and a mix that cannot run is refused
        pretrain_preset("paper", dataset).updated(strategy="random", bake_selective_masks=True)
    # the controlled column is a random run with the selective arm's loss, asked for explicitly
    same_loss = pretrain_preset("paper", dataset, strategy="random", recon_loss=cfg.recon_loss)
    assert same_loss.recon_loss == "ssim3" and same_loss.strategy == "random"


@pytest.mark.parametrize("preset", ["smoke", "demo"])
def test_cpu_presets_keep_the_kits_defaults_and_their_config_hashes(preset):
    for dataset in DATASET_NAMES:
        cfg = pretrain_preset(preset, dataset)
        assert (cfg.recon_loss, cfg.pretrained_checkpoint, cfg.pad_to_multiple, cfg.bake_selective_masks) == \
            ("ms_ssim", "last", 0, False)
        assert "recon_loss" not in cfg._result_fields()  # hashed only when changed: old runs keep their ids
    assert "recon_loss" in pretrain_preset(preset, "voc", recon_loss="ssim3")._result_fields()
    assert config_hash(pretrain_preset(preset, "voc")) != config_hash(pretrain_preset(preset, "voc", recon_loss="ssim3"))
