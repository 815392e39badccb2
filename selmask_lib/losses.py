"""Whole-image reconstruction loss for pretraining: L1 + (1 - MS-SSIM).

The authors call pytorch-msssim with its defaults (Gaussian window 11,
sigma 1.5, 5 scales) and ``data_range=1.0`` on the *normalised* tensors; we
do the same. Five-scale MS-SSIM needs the shorter image side to exceed
(11 - 1) * 2**4 = 160 px, so for the small images of the CPU presets the loss
falls back to single-scale SSIM (same window) and logs that once.
"""

from __future__ import annotations

import logging

import torch
from pytorch_msssim import ms_ssim, ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d

from .config import RECON_LOSSES  # the values of the config key ``recon_loss``
from .errors import SelmaskError

log = logging.getLogger(__name__)

MS_SSIM_WINDOW = 11
MS_SSIM_SIGMA = 1.5  # pytorch-msssim's default
MS_SSIM_SCALES = 5
MIN_MS_SSIM_SIDE = (MS_SSIM_WINDOW - 1) * 2 ** (MS_SSIM_SCALES - 1)  # 160 px
SSIM3_WINDOW = 3


def uses_ms_ssim(height: int, width: int) -> bool:
    """True if images this size are big enough for 5-scale MS-SSIM."""
    return min(height, width) > MIN_MS_SSIM_SIDE


class ReconstructionLoss(torch.nn.Module):
    """L1 + (1 - similarity) over the whole image; ``kind`` is ``ms_ssim`` or ``ssim3`` (module doc)."""

    def __init__(self, kind: str = "ms_ssim", data_range: float = 1.0):
        super().__init__()
        if kind not in RECON_LOSSES:
            raise SelmaskError(f"reconstruction loss must be one of {', '.join(RECON_LOSSES)}, got {kind!r}")
        self.kind = kind
        self.data_range = data_range
        self._warned_fallback = False
        self._windows: dict[tuple, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise SelmaskError(
                f"pred and target must have the same shape, got {list(pred.shape)} and {list(target.shape)}"
            )
        # SSIM statistics are sensitive to half precision: compute them in float32 under AMP.
        pred, target = pred.float(), target.float()
        l1 = (pred - target).abs().mean()
        height, width = pred.shape[-2:]
        if self.kind == "ssim3":
            similarity = ssim(pred, target, data_range=self.data_range, win=self._window(pred, SSIM3_WINDOW))
        elif uses_ms_ssim(height, width):
            similarity = ms_ssim(pred, target, data_range=self.data_range, win=self._window(pred, MS_SSIM_WINDOW))
        else:
            if not self._warned_fallback:
                log.warning(
                    "images are %dx%d, too small for 5-scale MS-SSIM (needs > %d px): "
                    "using single-scale SSIM in the reconstruction loss",
                    height, width, MIN_MS_SSIM_SIDE,
                )
                self._warned_fallback = True
            similarity = ssim(pred, target, data_range=self.data_range, win=self._window(pred, MS_SSIM_WINDOW))
        return l1 + (1.0 - similarity)

    def _window(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """pytorch-msssim's own Gaussian window (sigma 1.5), built once and kept on the images' device.

        Given no window, pytorch-msssim builds one on the CPU and copies it to
        the images' device at every scale of every call: 5 copies a call for
        MS-SSIM, each from pageable memory, and on a GPU each makes the host
        wait for the GPU's queued work. The same numbers, made once.
        """
        key = (images.device, images.dtype, images.shape[1], size)
        if key not in self._windows:
            window = _fspecial_gauss_1d(size, MS_SSIM_SIGMA).repeat([images.shape[1], 1, 1, 1])
            self._windows[key] = window.to(images.device, images.dtype)
        return self._windows[key]
