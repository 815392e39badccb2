"""The paper's U-Net (pytorch-toolbelt's ``resnet34_unet64_s4``) and weight transfer.

Encoder: ResNet-34 from segmentation_models_pytorch, built with
``weights=None`` so nothing is downloaded; stages 1-4 give 64/128/256/512
channels at strides 4/8/16/32 (the stem's stride-2 map is not used).

Decoder, from the deepest map upwards: nearest-neighbour x2 upsample,
concatenate the skip, two 3x3 conv + BatchNorm + SiLU, giving 256 channels at
stride 16, 128 at stride 8 and 64 at stride 4. No library ships this exact
decoder (smp's Unet decodes to stride 1), so it is written here; it is short.

Head: Dropout2d(0.2) + 1x1 conv to the output channels, then bilinear resize
to the input size. Pretraining uses 3 outputs (RGB); segmentation uses C.
Everything but the head is transferred from pretraining to segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from .errors import SelmaskError

DECODER_CHANNELS = (256, 128, 64)  # at strides 16, 8, 4
# The encoder's total stride. The transforms resize every image, so the model runs on any size, but an
# image with a side under this holds less than one pixel per cell of the deepest feature map: fine-tuning
# refuses such images (finetuning.check_every_sample).
ENCODER_STRIDE = 32
HEAD_PREFIX = "head."
IMAGENET_RESNET34_FILE = "resnet34-b627a593.pth"  # torchvision's IMAGENET1K_V1 weights
IMAGENET_RESNET34_URL = f"https://download.pytorch.org/models/{IMAGENET_RESNET34_FILE}"


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip, then two 3x3 conv + BN + SiLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.SiLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.SiLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Upsample to the skip's exact size: x2 when the input divides by 32,
        # and still correct for any other input size.
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.convs(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """ResNet-34 U-Net with a stride-4 decoder; ``forward`` maps [B, 3, H, W] to [B, out, H, W]."""

    def __init__(self, out_channels: int, dropout: float = 0.2, pad_to_multiple: int = 0):
        super().__init__()
        self.out_channels = out_channels
        self.pad_to_multiple = pad_to_multiple  # the authors' code: reflect-pad to a multiple of 64
        self.encoder = smp.encoders.get_encoder("resnet34", in_channels=3, depth=5, weights=None)
        encoder_channels = self.encoder.out_channels[2:]  # (64, 128, 256, 512) at strides 4..32
        deepest = encoder_channels[-1]
        blocks = []
        for skip_channels, width in zip(reversed(encoder_channels[:-1]), DECODER_CHANNELS):
            blocks.append(DecoderBlock(deepest, skip_channels, width))
            deepest = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(deepest, out_channels, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pad_to_multiple > 1:
            height, width = images.shape[-2:]
            outputs = self._forward(pad_to_multiple(images, self.pad_to_multiple))
            return outputs[..., :height, :width]  # the padding was added at the bottom and right
        return self._forward(images)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)[2:]  # strides 4, 8, 16, 32
        x = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            x = block(x, skip)  # stride 16, then 8, then 4
        x = self.head(x)
        return F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=False)


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad ``images`` [B, C, H, W] at the bottom and right so H and W are multiples of ``multiple``.

    Why: the authors' code pads every input this way (so every feature map
    of the encoder has an exact size) and crops the output back. Reflection
    needs the pad to be smaller than the side; a side too small for that
    (below the CPU presets' sizes only) is padded by replicating its edge.
    """
    height, width = images.shape[-2:]
    pad_bottom, pad_right = -height % multiple, -width % multiple
    if pad_bottom == 0 and pad_right == 0:
        return images
    mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
    return F.pad(images, (0, pad_right, 0, pad_bottom), mode=mode)


def build_reconstruction_model(dropout: float = 0.2, pad_to_multiple: int = 0) -> UNet:
    """U-Net with 3 outputs (RGB) for masked image reconstruction."""
    return UNet(out_channels=3, dropout=dropout, pad_to_multiple=pad_to_multiple)


def build_segmentation_model(num_classes: int, dropout: float = 0.2, pad_to_multiple: int = 0) -> UNet:
    """U-Net with one output per class for semantic segmentation."""
    if num_classes < 2:
        raise SelmaskError(f"num_classes must be at least 2, got {num_classes}")
    return UNet(out_channels=num_classes, dropout=dropout, pad_to_multiple=pad_to_multiple)


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did, tensor name by tensor name."""

    copied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    missing: list[str] = field(default_factory=list)  # in the destination, absent from the source

    def summary(self) -> str:
        return f"copied {len(self.copied)} tensors, skipped {len(self.skipped)}, missing {len(self.missing)}"


def transfer_weights(
    source: nn.Module | dict, destination: nn.Module, exclude_prefixes: tuple[str, ...] = (HEAD_PREFIX,)
) -> TransferReport:
    """Copy every matching tensor (encoder and decoder, not the head) from ``source`` into ``destination``.

    ``source`` is a model or a state dict. Tensors whose name starts with one of
    ``exclude_prefixes`` or whose shape differs are skipped with a reason.
    """
    source_state = source.state_dict() if isinstance(source, nn.Module) else source
    destination_state = destination.state_dict()
    report = TransferReport()
    updates = {}
    for name, tensor in destination_state.items():
        if name not in source_state:
            report.missing.append(name)
        elif name.startswith(exclude_prefixes):
            report.skipped[name] = "excluded (head)"
        elif source_state[name].shape != tensor.shape:
            report.skipped[name] = f"shape {tuple(source_state[name].shape)} != {tuple(tensor.shape)}"
        else:
            updates[name] = source_state[name]
            report.copied.append(name)
    destination.load_state_dict(updates, strict=False)
    return report


def imagenet_weights_path(weights_path: str | Path | None = None) -> Path:
    """Where ImageNet ResNet-34 weights are read from: the given file, else the torch hub cache."""
    if weights_path is not None:
        return Path(weights_path)
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_RESNET34_FILE


def load_imagenet_encoder(
    model: UNet, weights_path: str | Path | None = None, download: bool = False
) -> list[str]:
    """Initialise ``model.encoder`` from supervised ImageNet ResNet-34 weights (encoder only).

    Reads torchvision's ``resnet34-b627a593.pth`` from ``weights_path`` or the
    torch hub cache. With ``download=True`` (online users only) a missing file
    is fetched into the cache first. Returns the names of the loaded tensors.
    """
    path = imagenet_weights_path(weights_path)
    if not path.is_file():
        if download and weights_path is None:
            torch.hub.load_state_dict_from_url(IMAGENET_RESNET34_URL, progress=True)
        else:
            raise SelmaskError(
                f"ImageNet ResNet-34 weights not found at {path}: download {IMAGENET_RESNET34_URL} "
                f"and pass its path (imagenet_weights), or place it in {imagenet_weights_path()}"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise SelmaskError(f"cannot read ImageNet weights {path}: {error}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    encoder_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    report = transfer_weights(encoder_state, model.encoder, exclude_prefixes=())
    if report.missing or report.skipped:
        raise SelmaskError(
            f"{path} is not a ResNet-34 state dict: {len(report.missing)} encoder tensors missing, "
            f"{len(report.skipped)} with the wrong shape"
        )
    return report.copied
