"""Joint transforms: sizes are parameters, masks stay class ids (NEAREST), and
a boolean pixel mask of masked patches moves with the image."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

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


TRAIN_TRANSFORM_SETTINGS = {
    "usual": dict(),
    "every image jittered": dict(color_jitter=0.4, jitter_p=1.0),
    "no jitter": dict(color_jitter=0),
    "uint8 batches": dict(uint8_batch=True, jitter_p=1.0),
    "the authors' resize": dict(antialias=False, scale=(0.05, 1.0)),
}


def nested_jitter_transform() -> T.ImageAndMasksCompose:
    jitter = v2.ColorJitter(0.3, 0.3, 0.3, 0.1)
    return T.ImageAndMasksCompose([v2.RandomResizedCrop(24, scale=(0.3, 1.0)), v2.RandomHorizontalFlip(p=0.3),
                                   v2.RandomApply([v2.RandomApply([jitter], p=0.7), v2.ToDtype(torch.float32, scale=True)],
                                                  p=0.6)])


def same_outputs_and_draws(transform, reference, inputs, seed, compose_forward_raises=None):
    """``transform`` and ``reference`` (v2.Compose of the same steps) from the same seed: outputs, their types and
    dtypes, and the random state after them. With ``compose_forward_raises`` (a monkeypatch), v2.Compose's own
    forward raises while ``transform`` runs: proof that it took the shortcut."""
    torch.manual_seed(seed)
    want = T.as_outputs(reference(*inputs))
    state_after = torch.get_rng_state()
    torch.manual_seed(seed)
    if compose_forward_raises is None:
        got = T.as_outputs(transform(*inputs))
    else:
        with compose_forward_raises.context() as patch:
            patch.setattr(v2.Compose, "forward", lambda self, *inputs: pytest.fail("v2.Compose's path was taken"))
            got = T.as_outputs(transform(*inputs))
    assert torch.equal(torch.get_rng_state(), state_after)
    assert [type(output) for output in got] == [type(output) for output in want]
    for output, expected in zip(got, want):
        assert output.dtype == expected.dtype and torch.equal(output, expected)


@pytest.mark.parametrize("settings", TRAIN_TRANSFORM_SETTINGS.values(), ids=TRAIN_TRANSFORM_SETTINGS.keys())
def test_the_training_transforms_shortcut_gives_v2_composes_outputs_and_draws(settings, monkeypatch):
    """ImageAndMasksCompose skips v2's per-step dispatch for an image and masks: the same outputs to the bit,
    the same types, and the same random numbers used (so every later draw is the same too)."""
    transform = T.train_transform(size=24, **settings)
    assert isinstance(transform, T.ImageAndMasksCompose) and transform.shortcut
    cases = []
    generator = torch.Generator().manual_seed(5)
    for height, width in ((40, 48), (17, 90), (24, 24)):  # landscape, a strip (the crop's fallback), square
        image, labels = image_and_mask(height, width, seed=height)
        pixels = tv_tensors.Mask(torch.rand(height, width, generator=generator) > 0.6)  # a boolean pixel mask
        target = tv_tensors.Mask(image.as_subclass(torch.Tensor).clone())  # a baked item's uint8 target [3, h, w]
        as_float = tv_tensors.Image(image.float() / 255)
        cases += [(image,), (as_float,), (image, labels), (as_float, pixels), (image, target, pixels),
                  (image.as_subclass(torch.Tensor), pixels)]  # a plain tensor: an image to v2
    for number, inputs in enumerate(cases):
        for seed in range(12):
            for compose in (transform, nested_jitter_transform()):
                same_outputs_and_draws(compose, v2.Compose(compose.transforms), inputs, seed + 100 * number,
                                       compose_forward_raises=monkeypatch)


def test_the_shortcut_leaves_other_inputs_and_steps_to_v2(monkeypatch):
    image, labels = image_and_mask()
    transform = T.train_transform(size=16)
    reference = v2.Compose(transform.transforms)
    boxes = tv_tensors.BoundingBoxes([[0, 0, 10, 10]], format="XYXY", canvas_size=(40, 48))
    plain_second = labels.as_subclass(torch.Tensor)  # v2 leaves a plain tensor after an image as it is
    for inputs in ((image, boxes), (image, plain_second), (image.as_subclass(torch.Tensor), labels, plain_second)):
        for seed in range(6):
            same_outputs_and_draws(transform, reference, inputs, seed)
    torch.manual_seed(0)
    assert torch.equal(transform(image, plain_second)[1], plain_second)
    # steps the shortcut does not know, a subclass, and a ToDtype that picks its dtype by the input's type
    assert not T.ImageAndMasksCompose([v2.RandomResizedCrop(16), v2.GaussianBlur(3)]).shortcut

    class Flip(v2.RandomHorizontalFlip):
        pass

    assert not T.ImageAndMasksCompose([Flip()]).shortcut
    by_type = T.ImageAndMasksCompose([v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])
    assert not by_type.shortcut
    same_outputs_and_draws(by_type, v2.Compose(by_type.transforms), (image, labels), 0)
    assert by_type(image, labels)[0].dtype == torch.float32
    # a step added after construction is seen
    grown = T.train_transform(size=16)
    grown.transforms.append(v2.GaussianBlur(3))
    assert not grown.shortcut
    with pytest.raises(ValueError):  # v2's own check, in the shortcut too: an image and a mask of different sizes
        transform(image, tv_tensors.Mask(labels[:-1]))


# --------------------------------------------------------------------------- colour jitter on the device


def deferred_and_in_worker(images, jitter_p=0.5, color_jitter=0.2, size=32):
    """Each image through the usual training transform and through the deferred one, from the same seed:
    (worker-jittered batch, batch finished by ColourJitterOnDevice, uncoloured crops, draws)."""
    full = T.train_transform(size, color_jitter=color_jitter, jitter_p=jitter_p)
    deferred = T.train_transform(size, color_jitter=color_jitter, jitter_p=jitter_p, defer_colour=True)
    in_worker, crops, draws = [], [], []
    for index, image in enumerate(images):
        torch.manual_seed(100 + index)
        in_worker.append(full(tv_tensors.Image(image)).as_subclass(torch.Tensor))
        torch.manual_seed(100 + index)
        crop, extra = deferred(tv_tensors.Image(image))
        crops.append(crop.as_subclass(torch.Tensor))
        draws.append(extra[T.COLOUR_DRAWS])
    crops, draws = torch.stack(crops), torch.stack(draws)
    return torch.stack(in_worker), T.ColourJitterOnDevice(DEFAULT_MEAN, DEFAULT_STD)(crops, draws), crops, draws


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32], ids=["uint8 (fine-tuning)", "float (pretraining)"])
@pytest.mark.parametrize("jitter_p", [0.5, 1.0])
def test_colour_jitter_on_the_device_gives_the_workers_images(dtype, jitter_p):
    """Same draws, same crops, and the batched jitter equals torchvision's per-image one up to float rounding."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (24, 3, 40, 52), dtype=torch.uint8, generator=generator)
    images = images if dtype == torch.uint8 else images.float() / 255
    in_worker, on_device, crops, draws = deferred_and_in_worker(images, jitter_p)
    assert crops.dtype == dtype and on_device.dtype == torch.float32
    applied = draws[:, 0] == 1
    assert 0 < applied.sum() <= len(images) and (applied.all() or jitter_p < 1)
    orders = {tuple(order.int().tolist()) for order in draws[applied, 1:5]}
    assert len(orders) > 1 and all(sorted(order) == [0, 1, 2, 3] for order in orders)
    difference = (in_worker - on_device).abs() * torch.tensor(DEFAULT_STD).view(1, 3, 1, 1)  # in [0, 1] units
    if dtype == torch.uint8:  # the same arithmetic, truncated to uint8 after each operation as torchvision does
        assert difference.max() == 0
    else:
        assert difference.max() < 1e-5
    unjittered = ~applied
    torch.testing.assert_close(on_device[unjittered], in_worker[unjittered], rtol=0, atol=0)


def test_colour_jitter_on_the_device_follows_each_images_order_and_factors():
    """Swapping two images' draws must change both results: each image gets its own jitter, in its own order."""
    images = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    _, on_device, crops, draws = deferred_and_in_worker(images, jitter_p=1.0, color_jitter=0.4)
    swapped = draws.clone()
    swapped[[0, 1]] = draws[[1, 0]]
    other = T.ColourJitterOnDevice(DEFAULT_MEAN, DEFAULT_STD)(crops, swapped)
    assert not torch.allclose(other[0], on_device[0]) and not torch.allclose(other[1], on_device[1])
    torch.testing.assert_close(other[2:], on_device[2:], rtol=0, atol=0)


@pytest.mark.parametrize("order", [(3, 0, 1, 2), (0, 3, 1, 2)], ids=["hue first", "brightness first"])
def test_colour_jitter_on_the_device_leaves_the_callers_batch_as_it_was(order):
    """The hue is written into the batch in place: into a copy, even when it comes first in a float batch."""
    crops = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    draws = torch.tensor([[1, *order, 1.1, 0.9, 0.8, 0.05, 1]] * 4, dtype=torch.float32)
    before = crops.clone()
    finished = T.ColourJitterOnDevice(DEFAULT_MEAN, DEFAULT_STD)(crops, draws)
    assert torch.equal(crops, before) and not torch.equal(finished, T.normalise(before, DEFAULT_MEAN, DEFAULT_STD))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32], ids=["uint8", "float"])
def test_one_blend_gives_torchvisions_brightness_contrast_and_saturation_of_each_image(dtype):
    """Each image its own operation (or none) and factor, in one pass: torchvision's per-image result, uint8
    exactly (64x64 images: enough pixels for a rounding that differs once in 100 000 to show)."""
    generator = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=generator)
    images = images if dtype == torch.uint8 else images.float() / 255
    operation = torch.tensor([0, 1, 2, -1] * 3, dtype=torch.float32)
    factor = torch.where(operation >= 0, 0.8 + 0.4 * torch.rand(12, generator=generator), 1.0)
    adjust = (v2.functional.adjust_brightness, v2.functional.adjust_contrast, v2.functional.adjust_saturation)
    expected = torch.stack([image if op < 0 else adjust[int(op)](image, float(f))
                            for image, op, f in zip(images, operation, factor)])
    blended = T._blended(images, factor, operation, contrast=True, saturation=True)
    assert blended.dtype == dtype
    if dtype == torch.uint8:
        assert torch.equal(blended, expected)
    else:
        torch.testing.assert_close(blended, expected, rtol=0, atol=1e-6)
        assert torch.equal(blended[3::4], images[3::4])  # nothing to do: exactly as they were


def test_jitter_groups_put_each_image_in_the_slot_of_each_of_its_operations():
    """Not applied: in no group; an operation that is off (NaN factor): in no slot; the rest: once per operation."""
    nan = float("nan")
    draws = torch.tensor([
        [1, 3, 0, 2, 1, 1.1, 0.9, 0.8, 0.05, 1],  # hue first, then brightness, saturation, contrast
        [0, nan, nan, nan, nan, nan, nan, nan, nan, 1],  # jitter not applied
        [1, 0, 3, 1, 2, 1.2, nan, 0.7, -0.1, 1],  # contrast off
    ])
    groups = [(g.slot, g.operation, g.rows, g.factors) for g in T.jitter_groups(draws)]
    assert groups == [
        (0, 0, [2], [pytest.approx(1.2)]), (0, 3, [0], [pytest.approx(0.05)]),
        (1, 0, [0], [pytest.approx(1.1)]), (1, 3, [2], [pytest.approx(-0.1)]),
        (2, 2, [0], [pytest.approx(0.8)]),
        (3, 1, [0], [pytest.approx(0.9)]), (3, 2, [2], [pytest.approx(0.7)]),
    ]


def test_deferred_items_carry_their_draws_and_a_mask_keeps_its_geometry():
    image, mask = image_and_mask()
    torch.manual_seed(0)
    want_image, want_mask = T.train_transform(size=24, color_jitter=0)(image, mask)
    torch.manual_seed(0)
    crop, crop_mask, extra = T.train_transform(size=24, defer_colour=True)(image, mask)
    assert crop.dtype == torch.uint8 and torch.equal(crop_mask, want_mask)
    torch.testing.assert_close(normalise(crop), want_image)
    assert extra[T.COLOUR_DRAWS].shape == (10,)
