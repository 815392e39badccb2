"""Joint image + mask augmentation (torchvision.transforms.v2).

Every transform here is a ``v2.Compose`` that takes a ``tv_tensors.Image``
followed by any number of ``tv_tensors.Mask`` and returns them in the same
order (the training one is an :class:`ImageAndMasksCompose`: the same
outputs, a little faster). The geometric ops (crop, resize, flip) are
applied to every input with the *same* random parameters, so

* a segmentation mask stays aligned with its image (masks use NEAREST
  interpolation automatically, so class ids are never blended), and
* a boolean pixel mask of masked patches (selective-masking pretraining)
  moves with the image: METHOD.md, "geometric augmentation moves the mask
  with the image".

Photometric ops (colour jitter, dtype conversion, normalisation) touch the
image only. Example::

    image, mask = train_transform(size=256)(image, mask)
    image, mask, patch_mask = train_transform(size=256)(image, mask, patch_mask)

The recipe follows METHOD.md ("Augmentation"): train = RandomResizedCrop
(scale 0.25-1) + horizontal flip + colour jitter; val = shorter side then
centre crop; test = shorter side only (any size, batch 1). The colour jitter
strength is not in METHOD.md: the authors used albumentations' ``ColorJitter``
with its defaults (0.2 for brightness/contrast/saturation/hue, applied with
probability 0.5), which is what ``color_jitter=0.2, jitter_p=0.5`` gives.

Colour on the device (config key ``jitter_on_device``, CUDA only): with
``defer_colour=True`` the training transform stops after the crop and flip
and appends the colour-jitter draws it would have used to its outputs
(:class:`DeferredColourJitter`, the same random numbers in the same order);
:class:`ColourJitterOnDevice` then applies them, and the float conversion and
normalisation, to the whole batch on the GPU. A loader worker does less
work per image, and with uint8 images (pretraining then crops the decoded
uint8 image) it sends a quarter of the bytes. But the GPU's host thread
then launches the jitter's few hundred small kernels a step, and on an H200
the host is what limits a step: off by default since ``uint8_batches`` was
measured (benchmarks/README.md, calls 7 and 8); where both keys are on, this
one wins.

uint8 batches (config key ``uint8_batches``, CUDA only, on by default): with
``uint8_batch=True`` the worker does everything as usual, colour jitter
included, and sends the image as uint8 (:class:`ImageAsUint8`); the device
only converts and normalises the batch. Fine-tuning's images are uint8 all
along, and so are a selective step's baked inputs, so their batches are
exactly the usual ones; pretraining's jittered float image is rounded to the
nearest level, at most half a level of 255.
It leaves the GPU's host thread nothing of the jitter to launch: on an H200,
0.87x a bare loop's images/s in pretraining against 0.70x with the jitter on
the GPU.

Resizing (config key ``antialias``): images are resized bilinearly with
antialiasing by default (torchvision's default); ``antialias=False`` is the
authors' OpenCV-like bilinear resize, which samples without low-pass
filtering when it shrinks (METHOD.md item 9). Masks always use NEAREST.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .config import DEFAULT_MEAN, DEFAULT_STD
from .device import to_device_without_waiting


def _to_normalised_float(mean: Sequence[float], std: Sequence[float]) -> list:
    """uint8 or float [0, 1] image -> float32 normalised; masks untouched.

    ``ToDtype`` with a plain dtype converts images only, so class-id masks keep
    their integer dtype and boolean pixel masks stay boolean.
    """
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(
    size: int = 256,
    scale: tuple[float, float] = (0.25, 1.0),
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    color_jitter: float = 0.2,
    jitter_p: float = 0.5,
    antialias: bool = True,
    defer_colour: bool = False,
    jitter_in_float: bool = False,
    uint8_batch: bool = False,
) -> v2.Compose:
    """Training augmentation: random crop of ``scale`` of the area resized to
    ``size`` x ``size``, horizontal flip (p=0.5), colour jitter (image only),
    then float conversion and normalisation. ``color_jitter=0`` drops the
    jitter (useful for tests and for geometry-only pipelines).

    ``defer_colour``: stop after the crop and flip; the image keeps its dtype
    and the outputs end with the jitter draws (:class:`DeferredColourJitter`),
    for :class:`ColourJitterOnDevice` to finish the batch on the GPU.
    ``jitter_in_float``: the device jitters the image as float [0, 1], whatever
    dtype the worker sends (pretraining sends uint8 crops of images whose
    worker path jitters in float).
    ``uint8_batch`` (ignored with ``defer_colour``): do the colour jitter here
    as usual, then send the image as uint8 (:class:`ImageAsUint8`), for
    :class:`ColourJitterOnDevice` to convert and normalise the batch on the
    GPU (config key ``uint8_batches``). No draws travel with it: a uint8 batch
    is finished on the device by its dtype (``engine.Trainer.finish_batch``),
    and each tensor of a batch costs the loader's main process a shared-memory
    handover of its own.
    """
    steps = [v2.RandomResizedCrop(size, scale=scale, antialias=antialias), v2.RandomHorizontalFlip(p=0.5)]
    jitter = None
    if color_jitter > 0 and jitter_p > 0:
        jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(color_jitter, 0.5))
    if defer_colour:
        return v2.Compose(steps + [DeferredColourJitter(jitter, jitter_p, in_float=jitter_in_float)])
    if jitter is not None:
        steps.append(v2.RandomApply([jitter], p=jitter_p))
    if uint8_batch:  # the same random draws as below; the device converts and normalises
        return ImageAndMasksCompose(steps + [ImageAsUint8()])
    return ImageAndMasksCompose(steps + _to_normalised_float(mean, std))


# --------------------------------------------------------------------------- colour jitter on the device

COLOUR_DRAWS = "colour_jitter"  # the key under which a deferred item carries its draws
# Columns of the draws: applies, the order of the 4 operations, their 4 factors, jitter in float.
_APPLIED, _ORDER, _FACTORS, _IN_FLOAT = 0, slice(1, 5), slice(5, 9), 9


class DeferredColourJitter:
    """The last step of a training transform whose colour work is left to the device.

    It draws exactly what ``RandomApply([ColorJitter], p)`` would draw (the
    same calls on torch's RNG, in the same order), applies none of it, and
    returns the inputs followed by ``{"colour_jitter": draws}``: a float
    tensor [10] holding whether the jitter applies, the order of its four
    operations (0 brightness, 1 contrast, 2 saturation, 3 hue), their
    factors (NaN: that operation is off) and ``in_float``: whether the
    device converts the image to float [0, 1] before the jitter (pretraining,
    whose worker path jitters float images) or jitters it in its own dtype
    (fine-tuning's uint8 images, as in the workers). The default collate
    stacks the draws of a batch into [B, 10].
    """

    def __init__(self, jitter: v2.ColorJitter | None, p: float, in_float: bool = False):
        self.jitter, self.p, self.in_float = jitter, p, in_float

    def __call__(self, *inputs):
        draws = torch.full((10,), float("nan"))
        draws[_APPLIED], draws[_IN_FLOAT] = 0.0, float(self.in_float)
        if self.jitter is not None and not torch.rand(1) >= self.p:  # RandomApply's own test
            # make_params is the public name since torchvision 0.21; _get_params before it
            make_params = getattr(self.jitter, "make_params", None) or self.jitter._get_params
            params = make_params([])
            draws[_APPLIED] = 1.0
            draws[_ORDER] = params["fn_idx"].float()
            factors = [params[f"{name}_factor"] for name in ("brightness", "contrast", "saturation", "hue")]
            draws[_FACTORS] = torch.tensor([float("nan") if f is None else f for f in factors])
        return (*inputs, {COLOUR_DRAWS: draws})


def as_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float image in [0, 1] as uint8 levels, each rounded to the nearest (as the authors saved images)."""
    return (image * 255).round().clamp(0, 255).to(torch.uint8)


class ImageAsUint8:
    """A step of a training transform: the image (the first input) as uint8 levels; masks untouched.

    A float image (pretraining's, jittered in float) is rounded to the
    nearest level, at most half a level of 255 from the float; a uint8 image
    (fine-tuning's, or a baked selective item's input, jittered in uint8) is
    left exactly as it is. The worker
    then sends a quarter of a float image's bytes (config key ``uint8_batches``).
    """

    def __call__(self, image, *others):
        if image.dtype != torch.uint8:
            rounded = as_uint8(image.as_subclass(torch.Tensor))
            image = tv_tensors.wrap(rounded, like=image) if isinstance(image, tv_tensors.TVTensor) else rounded
        return (image, *others) if others else image


# make_params and transform are public since torchvision 0.21 (_get_params, _transform before)
_PUBLIC_TRANSFORM_API = hasattr(v2.Transform, "make_params") and hasattr(v2.Transform, "transform")


class ImageAndMasksCompose(v2.Compose):
    """``v2.Compose`` of the training steps, taking a shortcut for the kit's own inputs: an image, then masks.

    Each v2 step finds out, for every call, which of its inputs it transforms
    (flattening them, checking their types, wrapping each kernel's output
    back into a tv_tensor). For an image followed by masks
    (``tv_tensors.Mask``) the answer is known: the image gets every step, the masks get the
    geometric ones (the colour steps pass a mask through). So this calls
    each step's own ``make_params`` and ``transform`` directly, in the same
    order, with the same random draws: the outputs are v2.Compose's to the
    bit (tests/test_transforms.py). A CPU core builds 1.16x as many 64 px
    items a second and 1.07x as many 256 px ones (1.03-1.06x with
    ``uint8_batch``, which has no float steps to skip; benchmarks/README.md,
    "A loader worker's cost"). Other inputs (PIL images, bounding boxes,
    other steps) take v2.Compose's usual path.
    """

    _SHORTCUT_STEPS = (v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandomApply, v2.ColorJitter, v2.ToDtype,
                       v2.Normalize, ImageAsUint8)

    @property
    def shortcut(self) -> bool:
        """Whether every step (inside ``RandomApply`` too) is one whose draws and inputs are known here: those
        types exactly (a subclass may change its ``forward``), and a ``ToDtype`` to one dtype (a dict of dtypes
        picks by the input's type, and the shortcut hands the image over as a plain tensor)."""
        return _PUBLIC_TRANSFORM_API and all(
            type(step) in self._SHORTCUT_STEPS and not (isinstance(step, v2.ToDtype) and isinstance(step.dtype, dict))
            for step in self._all_steps(self.transforms))

    def forward(self, *inputs):
        image, masks = inputs[0], inputs[1:]
        if not ((type(image) is torch.Tensor or type(image) is tv_tensors.Image)
                and all(isinstance(mask, tv_tensors.Mask) for mask in masks) and self.shortcut):
            return super().forward(*inputs)
        # a plain tensor is an image to v2, and goes to the image kernels without wrapping
        plain, masks = image.as_subclass(torch.Tensor), list(masks)
        for step in self.transforms:
            plain, masks = self._step(step, plain, masks)
        if isinstance(image, tv_tensors.Image):
            plain = tv_tensors.wrap(plain, like=image)
        return (plain, *masks) if masks else plain

    @classmethod
    def _all_steps(cls, steps):
        for step in steps:
            yield step
            if isinstance(step, v2.RandomApply):
                yield from cls._all_steps(step.transforms)

    @classmethod
    def _step(cls, step, image: torch.Tensor, masks: list):
        """One step of v2.Compose: the draws of its ``forward``, in its order, then its ``transform``."""
        if isinstance(step, ImageAsUint8):
            return step(image), masks
        if isinstance(step, (v2.RandomApply, v2.RandomHorizontalFlip)) and torch.rand(1) >= step.p:
            return image, masks  # the step's own test, one draw, as in its forward
        if isinstance(step, v2.RandomApply):
            for inner in step.transforms:
                image, masks = cls._step(inner, image, masks)
            return image, masks
        params = step.make_params([image, *masks])
        return step.transform(image, params), [step.transform(mask, params) for mask in masks]


def as_outputs(outputs) -> tuple:
    """A transform's outputs as a tuple: one input gives one output, unless the transform appends draws."""
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _bound(images: torch.Tensor) -> float:
    return 1.0 if images.is_floating_point() else float(torch.iinfo(images.dtype).max)


def _in_dtype_of(result: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return result if images.is_floating_point() else result.to(images.dtype)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=-3)
    gray = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)
    return gray if images.is_floating_point() else gray.floor_()


def _hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    try:  # torchvision's HSV conversions work on batches; only its adjust_hue takes one factor per call
        from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv
    except ImportError:  # private names: should a release move them, one adjust_hue call per image
        return torch.stack([v2.functional.adjust_hue(image, float(f)) for image, f in zip(images, factor.flatten())])
    hsv = _rgb_to_hsv(v2.functional.to_dtype(images, torch.float32, scale=True))
    hsv[:, 0].add_(factor.view(-1, 1, 1)).remainder_(1.0)
    return v2.functional.to_dtype(_hsv_to_rgb(hsv), images.dtype, scale=True)


_HUE = 3  # in ColorJitter's numbering: 0 brightness, 1 contrast, 2 saturation, 3 hue


def _blended(images: torch.Tensor, factor: torch.Tensor, operation: torch.Tensor, contrast: bool,
             saturation: bool) -> torch.Tensor:
    """Each image's own brightness (operation 0), contrast (1) or saturation (2), or nothing (-1), in one pass.

    torchvision's ``adjust_brightness``, ``adjust_contrast`` and ``adjust_saturation`` (uint8 or float
    [0, 1]) are each ``image.mul(factor).add_(other, alpha=1 - factor)``, clamped (and truncated back to
    uint8), where other is 0 (brightness), the mean of the grayscale (contrast) or the grayscale
    (saturation; floored for uint8). Here ``factor`` (float32 [B]) is one per image, and ``operation``
    (float32 [B]: 0, 1, 2, or -1 for nothing) picks the term each image adds; the others get a weight of
    exactly 0, which adds nothing (``v + 0 * x`` is ``v`` for a finite x). An image that does nothing has
    factor 1, so all its weights (``1 - factor``) are 0 and it comes out as it went in, given values in
    [0, 1] as the kit's are (the clamp would move others). ``addcmul_`` rounds as ``add_(..., alpha)``
    does (a separate ``other.mul(1 - factor)`` would round once more: a uint8 level now and then). One
    launch of each kernel for the batch instead of one per operation. ``contrast``/``saturation``:
    whether any image does it (else its term is left out).
    """
    factor, operation = factor.view(-1, 1, 1, 1), operation.view(-1, 1, 1, 1)
    result = images.mul(factor)
    if contrast or saturation:
        gray, rest = _grayscale(images), 1.0 - factor
        if saturation:
            result.addcmul_(gray, torch.where(operation == 2, rest, 0.0))
        if contrast:
            result.addcmul_(gray.mean(dim=(-3, -2, -1), keepdim=True), torch.where(operation == 1, rest, 0.0))
    return _in_dtype_of(result.clamp_(0, _bound(images)), images)


class ColourJitterOnDevice:
    """Finish a batch where it is: colour jitter (the draws of :class:`DeferredColourJitter` items), float,
    normalise; without draws (``uint8_batches``: jittered by the workers) only float and normalise.

    torchvision's colour kernels take one factor per call, so a batch whose
    images each have their own factors and order would be 4 calls per image;
    :func:`_blended` and :func:`_hue` are the same arithmetic as torchvision's
    (``adjust_brightness`` ... ``adjust_hue``, uint8 or float [0, 1]) with a
    factor per image. The jitter runs slot by slot of the order (the groups
    of :func:`jitter_groups`). In each slot, brightness, contrast and
    saturation run as one blend over the whole batch (:func:`_blended`), each
    image with its own operation and factor, since on a GPU the host's
    launches cost more than the arithmetic; the images whose slot holds the
    hue are jittered as a group on their own and copied back, so that the
    costly HSV round trip runs once per image. Every image goes through
    exactly its own operations. The factors travel to the device in one copy
    per batch, and nothing waits for the GPU. On a CPU the results equal the
    per-image jitter of a loader worker (uint8), or match it up to float
    rounding (float): ``tests/test_transforms.py``. A GPU's kernels may round
    differently (``benchmarks/check_jitter_on_device.py`` measures it).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = list(mean), list(std)
        self._statistics: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, draws: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``images`` [B, 3, H, W] (uint8, or float in [0, 1]) on their device, ``draws`` [B, 10] on the CPU.

        Without draws (``uint8_batches``: the workers jittered already) the images are only converted
        to float and normalised.
        """
        if draws is not None:
            draws = draws.cpu()
            if bool(draws[:, _IN_FLOAT].all()):
                images = v2.functional.to_dtype(images, torch.float32, scale=True)
            groups = jitter_groups(draws)
            if groups:
                images = self._jitter(images, groups)
        mean, std = self._mean_and_std(images.device)
        # v2.functional.normalize's arithmetic, with statistics kept on the device: it would copy them
        # there from pageable memory every batch, and such a copy makes the host wait for the GPU.
        return v2.functional.to_dtype(images, torch.float32, scale=True).sub(mean).div_(std)

    @staticmethod
    def _jitter(images: torch.Tensor, groups: list[JitterGroup]) -> torch.Tensor:
        """``images`` through the operations of ``groups``, slot by slot (a new tensor; the caller's is kept)."""
        batch = len(images)
        hues = {group.slot: group for group in groups if group.operation == _HUE}  # at most one group a slot
        blends: dict[int, tuple[list[float], list[float]]] = {}  # slot -> each image's (factor, operation)
        blended_operations: dict[int, set[int]] = {}  # slot -> the operations blended there
        for group in groups:
            if group.operation != _HUE:
                factors, operations = blends.setdefault(group.slot, ([1.0] * batch, [-1.0] * batch))
                for row, factor in zip(group.rows, group.factors):
                    factors[row], operations[row] = factor, float(group.operation)
                blended_operations.setdefault(group.slot, set()).add(group.operation)
        # One copy: each blended slot's factors and operations, then the hue groups' rows (as float32:
        # exact, as a batch has far fewer than 2**24 images) and factors.
        blend_values = [value for slot in sorted(blends) for column in blends[slot] for value in column]
        hue_rows = [row for slot in sorted(hues) for row in hues[slot].rows]
        hue_factors = [factor for slot in sorted(hues) for factor in hues[slot].factors]
        packed = to_device_without_waiting(torch.tensor(blend_values + hue_rows + hue_factors), images.device)
        blend_columns = dict(zip(sorted(blends), packed[:len(blend_values)].view(-1, 2, batch)))
        device_rows = packed[len(blend_values):len(blend_values) + len(hue_rows)].long()
        device_factors = packed[len(blend_values) + len(hue_rows):]
        owned = False  # whether ``images`` is a tensor of this method's own yet (index_copy_ writes in place)
        start = 0
        for slot in range(4):
            if slot in blends:
                factor, operation = blend_columns[slot]
                images = _blended(images, factor, operation, contrast=1 in blended_operations[slot],
                                  saturation=2 in blended_operations[slot])
                owned = True
            if slot in hues:
                if not owned:
                    images, owned = images.clone(), True
                where = slice(start, start + len(hues[slot].rows))
                start = where.stop
                hued = _hue(images.index_select(0, device_rows[where]), device_factors[where].view(-1, 1, 1, 1))
                images.index_copy_(0, device_rows[where], hued)
        return images

    def _mean_and_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._statistics:
            self._statistics[device] = tuple(torch.tensor(values).view(-1, 1, 1).to(device)
                                             for values in (self.mean, self.std))
        return self._statistics[device]


@dataclass
class JitterGroup:
    """The images of a batch that do ``operation`` (0 brightness ... 3 hue) in ``slot`` of their order."""

    slot: int
    operation: int
    rows: list[int]
    factors: list[float]


def jitter_groups(draws: torch.Tensor) -> list[JitterGroup]:
    """The batch's images grouped by what they do in each slot of the jitter order, slot by slot.

    An image whose jitter does not apply is in no group; an operation that is
    off (NaN factor) leaves its slot empty for that image, as ColorJitter
    skips it.
    """
    found: dict[tuple[int, int], JitterGroup] = {}
    for row, image_draws in enumerate(draws.tolist()):
        if image_draws[_APPLIED] != 1:
            continue
        order, factors = image_draws[_ORDER], image_draws[_FACTORS]
        for slot, operation in enumerate(int(operation) for operation in order):
            if not math.isnan(factors[operation]):
                group = found.setdefault((slot, operation), JitterGroup(slot, operation, [], []))
                group.rows.append(row)
                group.factors.append(factors[operation])
    return [found[key] for key in sorted(found)]


def val_transform(
    size: int = 256, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
    antialias: bool = True,
) -> v2.Compose:
    """Validation: shorter side to ``size``, then a centre ``size`` x ``size``
    crop, so that validation images can be batched."""
    return v2.Compose([v2.Resize(size, antialias=antialias), v2.CenterCrop(size)] + _to_normalised_float(mean, std))


def test_transform(
    size: int = 256, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
    antialias: bool = True,
) -> v2.Compose:
    """Test: shorter side to ``size`` only; the aspect ratio is kept, so the
    result has any size and test batches hold one image."""
    return v2.Compose([v2.Resize(size, antialias=antialias)] + _to_normalised_float(mean, std))


def normalise_transform(
    mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD
) -> v2.Compose:
    """No geometry: float conversion and normalisation only. This is what a
    :class:`~selmask_lib.data.base.SegmentationDataset` applies when it is given
    no transform."""
    return v2.Compose(_to_normalised_float(mean, std))


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A batch of float [0, 1] images ``[B, 3, H, W]`` normalised like the transforms above.

    For images that bypass a transform, e.g. the scoring views selective
    masking feeds straight to the model.
    """
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


__all__ = [
    "COLOUR_DRAWS",
    "ColourJitterOnDevice",
    "DeferredColourJitter",
    "jitter_groups",
    "as_outputs",
    "normalise",
    "ImageAndMasksCompose",
    "train_transform",
    "val_transform",
    "test_transform",
    "normalise_transform",
]

# ``test_transform`` starts with "test": tell pytest it is not a test when a
# test module imports it by name.
test_transform.__test__ = False
