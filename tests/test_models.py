"""U-Net shapes, weight transfer and ImageNet loading from a local file (selmask_lib.models)."""

import pytest
import torch
import torchvision

from selmask_lib.errors import SelmaskError
from selmask_lib.losses import ReconstructionLoss, uses_ms_ssim
from selmask_lib.models import (
    build_reconstruction_model,
    build_segmentation_model,
    load_imagenet_encoder,
    transfer_weights,
)


@pytest.mark.parametrize("size", [(64, 64), (72, 100), (256, 256)])
def test_output_has_input_size(size):
    torch.manual_seed(0)
    images = torch.randn(2, 3, *size)
    assert build_reconstruction_model()(images).shape == (2, 3, *size)
    assert build_segmentation_model(7)(images).shape == (2, 7, *size)


def test_decoder_widths_and_strides():
    model = build_reconstruction_model()
    widths = [block.convs[0].out_channels for block in model.decoder]
    assert widths == [256, 128, 64]
    assert model.head[1].in_channels == 64
    assert isinstance(model.head[0], torch.nn.Dropout2d)


def test_transfer_weights_moves_encoder_and_decoder_not_head():
    torch.manual_seed(0)
    source = build_reconstruction_model()
    destination = build_segmentation_model(4)
    before = {k: v.clone() for k, v in destination.state_dict().items()}
    report = transfer_weights(source, destination)
    after = destination.state_dict()
    assert set(report.skipped) == {"head.1.weight", "head.1.bias"}
    assert report.missing == []
    assert any(name.startswith("encoder.") for name in report.copied)
    assert any(name.startswith("decoder.") for name in report.copied)
    for name in report.copied:
        assert torch.equal(after[name], source.state_dict()[name])
    assert not torch.equal(after["encoder.layer1.0.conv1.weight"], before["encoder.layer1.0.conv1.weight"])
    assert torch.equal(after["head.1.weight"], before["head.1.weight"])


def test_imagenet_encoder_from_local_file(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet34(weights=None)
    path = tmp_path / "resnet34.pth"
    torch.save(reference.state_dict(), path)
    model = build_segmentation_model(3)
    loaded = load_imagenet_encoder(model, path)
    assert "conv1.weight" in loaded and not any(name.startswith("fc.") for name in loaded)
    assert torch.equal(model.encoder.layer4[2].conv2.weight, reference.layer4[2].conv2.weight)


def test_imagenet_missing_or_wrong_file_is_a_clear_error(tmp_path):
    model = build_segmentation_model(3)
    with pytest.raises(SelmaskError, match="not found"):
        load_imagenet_encoder(model, tmp_path / "absent.pth")
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(SelmaskError, match="not a ResNet-34"):
        load_imagenet_encoder(model, tmp_path / "other.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SelmaskError, match="cannot read"):
        load_imagenet_encoder(model, tmp_path / "corrupt.pth")


def test_segmentation_needs_two_classes():
    with pytest.raises(SelmaskError, match="num_classes"):
        build_segmentation_model(1)


def test_reconstruction_loss_falls_back_to_ssim_on_small_images(caplog):
    assert not uses_ms_ssim(64, 64) and uses_ms_ssim(256, 200) and not uses_ms_ssim(256, 160)
    target = torch.randn(2, 3, 64, 64)
    loss = ReconstructionLoss()
    assert float(loss(target, target)) == pytest.approx(0.0, abs=1e-5)
    with caplog.at_level("WARNING"):
        noisy = float(loss(target + 0.3 * torch.randn_like(target), target))
    assert noisy > 0.1
    assert "single-scale SSIM" in caplog.text


@pytest.mark.parametrize("kind, size", [("ms_ssim", 192), ("ms_ssim", 64), ("ssim3", 64)],
                         ids=["MS-SSIM", "single-scale fallback", "ssim3"])
def test_reconstruction_loss_is_pytorch_msssims_own_with_its_window_built_once(kind, size):
    from pytorch_msssim import ms_ssim, ssim

    generator = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, size, size, generator=generator)
    pred = target + 0.2 * torch.randn(target.shape, generator=generator)
    if kind == "ssim3":
        similarity = ssim(pred, target, data_range=1.0, win_size=3)
    elif size > 160:
        similarity = ms_ssim(pred, target, data_range=1.0)
    else:
        similarity = ssim(pred, target, data_range=1.0, win_size=11)
    loss = ReconstructionLoss(kind)
    for _ in range(2):  # the second call reuses the window the first one built
        assert torch.equal(loss(pred, target), (pred - target).abs().mean() + (1 - similarity))
    assert len(loss._windows) == 1


def test_reconstruction_loss_uses_ms_ssim_on_large_images():
    from pytorch_msssim import ms_ssim

    target = torch.randn(1, 3, 192, 192)
    pred = target + 0.2 * torch.randn_like(target)
    expected = (pred - target).abs().mean() + 1 - ms_ssim(pred, target, data_range=1.0)
    assert float(ReconstructionLoss()(pred, target)) == pytest.approx(float(expected), rel=1e-5)
