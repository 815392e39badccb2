"""How a training batch travels, decided in one place (``engine.training_batch_form``).

``jitter_on_device`` and ``uint8_batches`` act on CUDA only, and ``jitter_on_device`` wins where both
are on. The other tests of these keys force one answer on a CPU; here the device lookup is made to say
CUDA, so the real precedence is what runs, for every combination of the keys, in both loops (and the
selective steps' baked masks, which keep their jitter in the workers and go uint8 with ``uint8_batches``).
"""

from __future__ import annotations

import logging

import pytest
import torch

import selmask_lib.engine as engine
import selmask_lib.finetuning as ft
import selmask_lib.pretraining as pt
from selmask_lib import estimate
from selmask_lib.config import finetune_preset, pretrain_preset
from selmask_lib.transforms import DeferredColourJitter, ImageAsUint8


@pytest.fixture
def on_cuda(monkeypatch):
    """The engine's device lookup says CUDA (nothing here touches a GPU: only the decisions run)."""
    monkeypatch.setattr(engine, "pick_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(engine, "local_device", lambda device: device)


KEY_SETTINGS = [(jitter, uint8) for jitter in (False, True) for uint8 in (False, True)]


def expected_form(jitter: bool, uint8: bool) -> str:
    return "jitter_on_device" if jitter else "uint8_batches" if uint8 else "float"


@pytest.mark.parametrize("jitter, uint8", KEY_SETTINGS)
def test_on_cuda_jitter_on_device_wins_over_uint8_batches(jitter, uint8, on_cuda, caplog):
    cfg = finetune_preset("smoke", "synthetic", jitter_on_device=jitter, uint8_batches=uint8)
    with caplog.at_level(logging.INFO, logger="selmask_lib"):
        assert engine.training_batch_form(cfg) == expected_form(jitter, uint8)
    # both on: the user is told that uint8_batches does nothing
    assert ("uint8_batches: no effect" in caplog.text) == (jitter and uint8)
    assert ft.sends_uint8_labels(cfg) == (jitter or uint8)
    last_step = ft.training_transform(cfg).transforms[-1]
    assert isinstance(last_step, DeferredColourJitter) == jitter
    assert isinstance(last_step, ImageAsUint8) == (uint8 and not jitter)


def expected_baked_form(jitter: bool, uint8: bool) -> str:
    """Baked masks keep their jitter in the worker: uint8 wherever the run sends uint8 batches."""
    return "baked_uint8" if expected_form(jitter, uint8) == "uint8_batches" else "baked"


@pytest.mark.parametrize("bake", [False, True], ids=["masks not baked", "baked masks"])
@pytest.mark.parametrize("jitter, uint8", KEY_SETTINGS)
def test_a_selective_step_with_baked_masks_sends_uint8_only_with_uint8_batches(jitter, uint8, bake, on_cuda):
    cfg = pretrain_preset("smoke", "synthetic", jitter_on_device=jitter, uint8_batches=uint8,
                          bake_selective_masks=bake)
    assert pt.loop_batch_form(cfg, fixed_masks=False) == expected_form(jitter, uint8)  # random masking
    assert pt.loop_batch_form(cfg, fixed_masks=True) == (expected_baked_form(jitter, uint8) if bake
                                                         else expected_form(jitter, uint8))
    assert estimate.batch_format(cfg, selective=True) == estimate.BATCH_FORMS[pt.loop_batch_form(cfg, True)]


@pytest.mark.parametrize("jitter, uint8", KEY_SETTINGS)
def test_on_a_cpu_every_batch_is_finished_by_the_loader(jitter, uint8):
    fine = finetune_preset("smoke", "synthetic", device="cpu", jitter_on_device=jitter, uint8_batches=uint8)
    pre = pretrain_preset("smoke", "synthetic", device="cpu", jitter_on_device=jitter, uint8_batches=uint8,
                          bake_selective_masks=True)
    assert engine.training_batch_form(fine) == pt.loop_batch_form(pre, fixed_masks=False) == "float"
    assert pt.loop_batch_form(pre, fixed_masks=True) == "baked"  # baking is the method's, not the device's
    assert not ft.sends_uint8_labels(fine)
    assert estimate.batch_format(fine) == "float32, finished by the loader"
