"""Joint transforms: sizes are parameters, masks stay class ids (NEAREST), and
a boolean pixel mask of masked patches moves with the image."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from selmask_lib import transforms as T
from selmask_lib.config import DEFAULT_MEAN, DEFAULT_STD


def image_and_mask(height=40, width=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
    mask = tv_tensors.Mask(torch.randint(0, 3, (height, width), generator=generator))
    mask[:2] = 255  # an ignore border
    return image, mask


# METHOD.md's normalisation, written out here rather than read from the library, so that the
# expected values below do not move with the constants they check.
METHOD_MEAN = (0.4529, 0.4317, 0.3999)
METHOD_STD = (0.4443, 0.4665, 0.4887)


def normalise(image_uint8):
    mean, std = torch.tensor(METHOD_MEAN)[:, None, None], torch.tensor(METHOD_STD)[:, None, None]
    return (image_uint8.as_subclass(torch.Tensor).float() / 255 - mean) / std


def test_config_defaults_are_the_method_constants():
    assert DEFAULT_MEAN == METHOD_MEAN
    assert DEFAULT_STD == METHOD_STD


DEFAULT_NORMALISATION_TRANSFORMS = {
    "train": lambda: T.train_transform(size=16, scale=(1.0, 1.0), color_jitter=0),
    "val": lambda: T.val_transform(size=16),
    "test": lambda: T.test_transform(size=16),
    "normalise": lambda: T.normalise_transform(),
}


@pytest.mark.parametrize("name", sorted(DEFAULT_NORMALISATION_TRANSFORMS))
def test_default_transforms_normalise_with_the_method_constants(name):
    transform = DEFAULT_NORMALISATION_TRANSFORMS[name]
    # a uniform image of value v per channel becomes (v / 255 - mean) / std, whatever the geometry does
    values = (51, 128, 230)
    image = tv_tensors.Image(torch.tensor(values, dtype=torch.uint8)[:, None, None].repeat(1, 20, 24))
    mask = tv_tensors.Mask(torch.zeros(20, 24, dtype=torch.int64))
    torch.manual_seed(0)
    out_image, _ = transform()(image, mask)
    assert out_image.shape[0] == 3 and out_image.dtype == torch.float32
    for channel, value in enumerate(values):
        expected = (value / 255 - METHOD_MEAN[channel]) / METHOD_STD[channel]
        torch.testing.assert_close(out_image[channel], torch.full_like(out_image[channel], expected),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [16, 24])
def test_train_transform_output(size):
    image, mask = image_and_mask()
    torch.manual_seed(0)
    out_image, out_mask = T.train_transform(size=size)(image, mask)
    assert out_image.shape == (3, size, size) and out_image.dtype == torch.float32
    assert out_mask.shape == (size, size) and out_mask.dtype == torch.int64
    assert set(out_mask.unique().tolist()) <= {0, 1, 2, 255}  # NEAREST: no blended class ids


def test_val_transform_resizes_shorter_side_then_centre_crops():
    image, mask = image_and_mask(40, 48)
    out_image, out_mask = T.val_transform(size=20)(image, mask)
    assert out_image.shape == (3, 20, 20) and out_mask.shape == (20, 20)
    assert set(out_mask.unique().tolist()) <= {0, 1, 2, 255}


def test_test_transform_keeps_aspect_ratio():
    image, mask = image_and_mask(40, 48)
    out_image, out_mask = T.test_transform(size=20)(image, mask)
    assert out_image.shape == (3, 20, 24) and out_mask.shape == (20, 24)
    out_image, _ = T.test_transform(size=40)(image, mask)  # already the right size: only normalised
    torch.testing.assert_close(out_image, normalise(image))


def test_horizontal_flip_moves_the_pixel_mask_with_the_image():
    image, mask = image_and_mask(32, 32)
    patch_mask = tv_tensors.Mask(torch.zeros(32, 32, dtype=torch.bool))
    patch_mask[:, :8] = True  # the left patches are masked
    # Full-area square crop at the input size: the only random geometry left is the flip.
    transform = T.train_transform(size=32, scale=(1.0, 1.0), color_jitter=0)
    outcomes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask, out_patch_mask = transform(image, mask, patch_mask)
        assert out_patch_mask.dtype == torch.bool
        flipped = bool(out_patch_mask[0, -1])
        outcomes.add(flipped)
        expected = [x.flip(-1) if flipped else x for x in (image, mask, patch_mask)]
        torch.testing.assert_close(out_image, normalise(expected[0]))
        assert torch.equal(out_mask.as_subclass(torch.Tensor), expected[1].as_subclass(torch.Tensor))
        assert torch.equal(out_patch_mask.as_subclass(torch.Tensor), expected[2].as_subclass(torch.Tensor))
    assert outcomes == {True, False}


def test_random_crop_moves_every_mask_identically():
    image, mask = image_and_mask(40, 48)
    patch_mask = tv_tensors.Mask(mask == 1)  # a pixel mask that must stay equal to (mask == 1)
    for seed in range(5):
        torch.manual_seed(seed)
        _, out_mask, out_patch_mask = T.train_transform(size=24)(image, mask, patch_mask)
        assert torch.equal(out_patch_mask.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor) == 1)


def test_colour_jitter_changes_the_image_only():
    image, mask = image_and_mask(32, 32)
    transform = T.train_transform(size=32, scale=(1.0, 1.0), color_jitter=0.5, jitter_p=1.0)
    torch.manual_seed(0)
    out_image, out_mask = transform(image, mask)
    flipped = not torch.equal(out_mask.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor))
    reference = image.flip(-1) if flipped else image
    assert not torch.allclose(out_image, normalise(reference))


def test_same_seed_same_augmentation():
    image, mask = image_and_mask()
    results = []
    for _ in range(2):
        torch.manual_seed(3741)
        results.append(T.train_transform(size=16)(image, mask))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
