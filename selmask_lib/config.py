"""Run configuration: two typed dataclasses, YAML files and named presets.

A pretraining run is described by a :class:`PretrainConfig`, a downstream
segmentation run by a :class:`FinetuneConfig`. Both are frozen dataclasses
that check every value when built, so a typo or a wrong type fails at once,
with the key named, instead of hours into a run::

    cfg = pretrain_preset("demo", "synthetic")
    cfg = cfg.updated(epochs=3)                      # checked like the rest
    save_config(cfg, "runs/demo/config.yaml")
    cfg = load_config("runs/demo/config.yaml")
    run_id = config_hash(cfg)                        # same fields -> same id

Presets (``smoke``, ``demo``, ``paper``) are documented in
:func:`pretrain_preset` and :func:`finetune_preset`; ``paper`` is the recipe
of METHOD.md exactly, the other two shrink it to run on a CPU.

A YAML file holds the fields of one config plus a ``kind`` line
(``pretrain`` or ``finetune``). It may instead name a preset and override a
few of its fields::

    kind: finetune
    preset: demo
    dataset: synthetic
    init: selective_ir
    pretrained: runs/pretrain-selective-synthetic
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import yaml

from .errors import SelmaskError

# Datasets generated from a seed when no data root is given (selmask_lib/data/embedded.py).
EMBEDDED_DATASETS = ("synthetic", "toy_street", "toy_tabletop", "toy_beet_field", "toy_maize_field")
DATASET_NAMES = ("voc", "cityscapes", "nassar", "sugarbeets", "folder", *EMBEDDED_DATASETS)
PRESET_NAMES = ("smoke", "demo", "paper")
STRATEGIES = ("random", "selective")
# The initialisations that load a pretraining run, and the strategy of the run each one needs.
IR_INIT_STRATEGY = {f"{strategy}_ir": strategy for strategy in STRATEGIES}  # random_ir, selective_ir
IR_INITS = tuple(IR_INIT_STRATEGY)
INITS = ("none", "imagenet", *IR_INITS)

# METHOD.md: one normalisation for every dataset (the authors' statistics of the
# Pascal VOC pretraining images). Defined here only; transforms.py imports them.
DEFAULT_MEAN = (0.4529, 0.4317, 0.3999)
DEFAULT_STD = (0.4443, 0.4665, 0.4887)
PAPER_SEED = 3741

# GPU path settings that change speed, never the method (no-ops on a CPU by design). On a GPU they may
# change rounding: other kernels (channels_last, compile, the fused Adam of sync_free_steps), or
# pretraining crops rounded to uint8 before the colour jitter (jitter_on_device: 0.35 of a level of 255
# on average; benchmarks/README.md), or pretraining images rounded to uint8 after it (uint8_batches: at
# most half a level).
GPU_SPEED_FIELDS = ("channels_last", "compile", "compile_mode", "pin_memory", "persistent_workers", "prefetch_factor",
                    "jitter_on_device", "uint8_batches", "sync_free_steps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # 'auto': amp decides (bf16 where supported, else fp16)
# torch.compile's modes. 'reduce-overhead' also replays the compiled step as CUDA graphs: one launch
# for what the host otherwise launches kernel by kernel (the GPU steps measured here are host-bound).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Fields that change how fast or where a run goes, never what it computes.
# They are left out of config_hash so that, e.g., more data-loader workers
# do not invalidate a finished run.
NON_RESULT_FIELDS = frozenset({"data_root", "num_workers", "device", "checkpoint_every", "image_cache_mb"}) | {
    *GPU_SPEED_FIELDS,  # GPU path (benchmarks/README.md): same arithmetic, other kernels or loading
}

# Settings added after the first runs were made (most of them reproduce a detail of
# the authors' code). Each is hashed only when it differs from its default, so a
# run made before the setting existed keeps its config hash and stays reusable.
# Add every new result-changing key here.
HASHED_WHEN_CHANGED = frozenset({
    "recon_loss", "pretrained_checkpoint", "pad_to_multiple", "bake_selective_masks",
    "baked_image_quality", "transfer_head_if_shapes_match",
    # data and evaluation details of the authors' code (METHOD.md items 4, 7-11)
    "void_as_class", "absent_class_iou", "drop_last", "antialias", "cityscapes_pool", "split_list",
    "precision",  # arithmetic of CUDA runs: fp32, bf16 or fp16 autocast (CPU runs are always fp32)
})
RECON_LOSSES = ("ms_ssim", "ssim3")  # losses.py: L1 + (1 - MS-SSIM) or L1 + (1 - SSIM, 3x3 window)
PRETRAINED_CHECKPOINTS = ("last", "best_val_loss")

# Data and evaluation settings of the authors' code (METHOD.md items 4, 7-11).
# Datasets whose labels mark void pixels (255), the only ones that can train void
# as a class: VOC and Cityscapes, the embedded general domains (VOC trees with a void
# band round each object) and folder (its format reserves 255 for unlabelled pixels).
# Nassar, Sugarbeets and the embedded field domains label every pixel (background, crop or weed).
VOID_LABEL_DATASETS = ("voc", "cityscapes", "synthetic", "toy_street", "toy_tabletop", "folder")
ABSENT_CLASS_IOU_RULES = ("nan", "zero")
CITYSCAPES_POOLS = ("train", "all_fine_and_extra")
SPLIT_LIST_DATASETS = ("sugarbeets",)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _ConfigBase:
    """Validation, dict conversion and overrides shared by both configs."""

    KIND: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _coerce(field.name, getattr(self, field.name), hints[field.name])
            object.__setattr__(self, field.name, value)
        self._check_values()

    def _check_values(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _result_fields(self) -> dict[str, Any]:
        """The fields that can change the run's outcome (hashed by config_hash)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in self.to_dict().items()
                if k not in NON_RESULT_FIELDS
                and not (k in HASHED_WHEN_CHANGED and v == _plain(defaults[k]))}

    # -- conversion -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples become lists) in field order; YAML/JSON safe."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build a config from plain data, rejecting unknown and missing keys."""
        if not isinstance(data, dict):
            raise SelmaskError(
                f"{cls.KIND} config must be a mapping of keys to values, got {type(data).__name__}"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        _reject_unknown_keys(data, names, cls.KIND)
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise SelmaskError(f"missing config key '{missing[0]}' in {cls.KIND} config")
        return cls(**data)

    def updated(self, **overrides: Any):
        """A copy with ``overrides`` applied; keys and values are checked."""
        _reject_unknown_keys(overrides, [f.name for f in dataclasses.fields(self)], self.KIND)
        return dataclasses.replace(self, **overrides)

    # -- shared range checks ---------------------------------------------
    def _check_common(self) -> None:
        _check_choice("dataset", self.dataset, DATASET_NAMES)
        if self.image_size < 32 or self.image_size % 32:
            raise SelmaskError(
                f"config key 'image_size' must be a positive multiple of 32 "
                f"(the encoder's total stride), got {self.image_size}"
            )
        _check_at_least("epochs", self.epochs, 1)
        _check_at_least("batch_size", self.batch_size, 1)
        if not self.lr > 0:
            raise SelmaskError(f"config key 'lr' must be > 0, got {self.lr}")
        _check_at_least("warmup_epochs", self.warmup_epochs, 0)
        if not 0 < self.min_lr_ratio <= 1:
            raise SelmaskError(
                f"config key 'min_lr_ratio' must be in (0, 1], got {self.min_lr_ratio}"
            )
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise SelmaskError(
                f"config key 'crop_scale' must be (low, high) with 0 < low <= high <= 1, "
                f"got {list(self.crop_scale)}"
            )
        if any(not s > 0 for s in self.std):
            raise SelmaskError(f"config key 'std' must be positive, got {list(self.std)}")
        if not 0 <= self.dropout < 1:
            raise SelmaskError(f"config key 'dropout' must be in [0, 1), got {self.dropout}")
        _check_at_least("seed", self.seed, 0)
        _check_at_least("num_workers", self.num_workers, 0)
        _check_at_least("checkpoint_every", self.checkpoint_every, 1)
        _check_at_least("pad_to_multiple", self.pad_to_multiple, 0)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        _check_at_least("prefetch_factor", self.prefetch_factor, 1)
        _check_at_least("image_cache_mb", self.image_cache_mb, 0)
        if not _DEVICE_PATTERN.match(self.device):
            raise SelmaskError(
                f"config key 'device' must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', "
                f"got {self.device!r}"
            )


@dataclasses.dataclass(frozen=True)
class PretrainConfig(_ConfigBase):
    """Masked image reconstruction pretraining (random or selective masking).

    ``epochs`` is E of METHOD.md: selective masking trains E epochs on each of
    its K partitions (K x E epochs on 1/K of the data), random masking trains
    E epochs on the whole set, so both do the same amount of work.
    """

    KIND: ClassVar[str] = "pretrain"

    dataset: str                       # one of DATASET_NAMES
    data_root: Optional[str] = None    # None: the dataset module's default location
    strategy: str = "selective"        # 'random' | 'selective'
    image_size: int = 256              # train crop side (RandomResizedCrop)
    n_patches: int = 512               # nominal patch count of the grid (21x21 at 256 px)
    mask_ratio: float = 0.5            # fraction of patches masked, both strategies
    epochs: int = 1000                 # E: per selective step / on the whole set for random
    batch_size: int = 128
    lr: float = 3e-3                   # Adam
    warmup_epochs: int = 10            # linear warm-up from min_lr_ratio * lr
    min_lr_ratio: float = 0.01         # start of warm-up and end of cosine decay
    n_partitions: int = 10             # K: selective steps
    n_scoring_draws: int = 5           # S: random masks averaged when scoring an image
    val_fraction: float = 0.1          # per-partition (selective) / whole-set (random) val split
    score_size: int = 256              # shorter side of an image when it is scored
    crop_scale: tuple[float, float] = (0.25, 1.0)
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    dropout: float = 0.2               # Dropout2d before the 1x1 head
    seed: int = PAPER_SEED
    max_images: Optional[int] = None   # cap on pretraining images (first N in list order)
    num_workers: int = 0               # DataLoader workers (not hashed)
    device: str = "auto"               # 'auto' | 'cpu' | 'mps' | 'cuda[:N]' (not hashed)
    amp: bool = True                   # mixed precision; only ever used on CUDA
    precision: str = "auto"           # CUDA arithmetic: auto (amp: bf16 if supported, else fp16) | fp32 | bf16 | fp16
    channels_last: bool = False        # CUDA: NHWC memory format (not hashed)
    compile: bool = False              # CUDA: torch.compile the training model (not hashed)
    compile_mode: str = "default"      # with compile: torch.compile's mode, one of COMPILE_MODES (not hashed)
    pin_memory: bool = True            # CUDA: pinned host memory for loaded batches (not hashed)
    persistent_workers: bool = True    # keep loader workers alive between epochs (not hashed; workers only)
    prefetch_factor: int = 2           # batches each loader worker prepares ahead (not hashed)
    jitter_on_device: bool = False     # CUDA: colour jitter + normalisation of training batches on the GPU (not hashed)
    uint8_batches: bool = True         # CUDA: workers jitter, send uint8, the GPU normalises; needs jitter_on_device
    #                                    false, else ignored (its batches are uint8 already) (not hashed). On by
    #                                    default: H200, 8 workers, 0.87x of a bare loop against 0.70x with the
    #                                    jitter on the GPU (benchmarks/README.md, calls 7 and 8). Baked selective
    #                                    masks send uint8 too: exactly their float batches
    sync_free_steps: bool = True       # CUDA: losses read once per epoch, not each step; fused Adam (not hashed)
    image_cache_mb: int = 512          # decoded images kept in memory, MB per cache and process (not hashed)
    checkpoint_every: int = 1          # epochs between checkpoints (not hashed)
    # Details of the authors' code (docs/METHOD.md); the paper preset sets them their way.
    recon_loss: str = "ms_ssim"        # 'ms_ssim' | 'ssim3': the similarity term of the training loss
    pretrained_checkpoint: str = "last"  # 'last' | 'best_val_loss': weights saved as pretrained.pt
    pad_to_multiple: int = 0           # reflect-pad every forward input to a multiple (0: never)
    bake_selective_masks: bool = False  # burn fixed masks into the images before augmentation
    baked_image_quality: Optional[int] = None  # JPEG quality of baked images; None: lossless
    # -- data details of the authors' code (METHOD.md items 8-10)
    drop_last: bool = False            # train and val loaders drop their last partial batch
    antialias: bool = True             # antialiased resizes (torchvision); False: OpenCV-like bilinear
    cityscapes_pool: str = "train"     # 'train' (+ train_extra) | 'all_fine_and_extra' (24,997 frames)

    def _check_values(self) -> None:
        self._check_common()
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("recon_loss", self.recon_loss, RECON_LOSSES)
        _check_choice("pretrained_checkpoint", self.pretrained_checkpoint, PRETRAINED_CHECKPOINTS)
        if self.baked_image_quality is not None:
            if not self.bake_selective_masks:
                raise SelmaskError("config key 'baked_image_quality' needs bake_selective_masks: true")
            if not 1 <= self.baked_image_quality <= 95:
                raise SelmaskError(f"config key 'baked_image_quality' must be a JPEG quality in 1..95 "
                                   f"or null (lossless), got {self.baked_image_quality}")
        if self.pretrained_checkpoint == "best_val_loss" and self.val_fraction == 0:
            raise SelmaskError("config key 'pretrained_checkpoint' 'best_val_loss' needs validation images "
                               "(val_fraction > 0)")
        if self.bake_selective_masks and self.strategy != "selective":
            raise SelmaskError("config key 'bake_selective_masks' needs strategy 'selective' "
                               "(only the selective loop fixes each image's mask)")
        _check_choice("cityscapes_pool", self.cityscapes_pool, CITYSCAPES_POOLS)
        if self.cityscapes_pool != "train" and self.dataset != "cityscapes":
            raise SelmaskError(f"config key 'cityscapes_pool' is for dataset cityscapes only; "
                               f"dataset {self.dataset!r} needs the default 'train'")
        _check_at_least("n_patches", self.n_patches, 4)
        if not 0 < self.mask_ratio < 1:
            raise SelmaskError(f"config key 'mask_ratio' must be in (0, 1), got {self.mask_ratio}")
        _check_at_least("n_partitions", self.n_partitions, 2 if self.strategy == "selective" else 1)
        _check_at_least("n_scoring_draws", self.n_scoring_draws, 1)
        if not 0 <= self.val_fraction < 1:
            raise SelmaskError(
                f"config key 'val_fraction' must be in [0, 1), got {self.val_fraction}"
            )
        _check_at_least("score_size", self.score_size, 32)
        if self.max_images is not None:
            _check_at_least("max_images", self.max_images, 1)

    def updated(self, **overrides: Any) -> "PretrainConfig":
        """A copy with ``overrides`` applied. Turning a ``paper`` config of one strategy into the
        other also swaps the settings the authors' two kinds of run differ in (loss, baked masks),
        so the result is the ``paper`` config of the new strategy, never a mix of the two."""
        strategy = overrides.get("strategy", self.strategy)
        if strategy != self.strategy and strategy in STRATEGIES and self._is_paper_config():
            swapped = _paper_strategy_settings(self.dataset, strategy == "selective")
            overrides = {**{k: v for k, v in swapped.items() if k not in overrides}, **overrides}
        return super().updated(**overrides)

    def _is_paper_config(self) -> bool:
        paper = _paper_strategy_settings(self.dataset, self.strategy == "selective")
        return all(getattr(self, key) == value for key, value in paper.items())

    def _result_fields(self) -> dict[str, Any]:
        fields = super()._result_fields()
        if self.dataset == "folder":  # the path is the only identity a folder dataset has
            fields["data_root"] = self.data_root
        if self.strategy == "random":  # scoring settings play no part in random masking
            for name in ("n_partitions", "n_scoring_draws", "score_size"):
                fields.pop(name)
        return fields


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(_ConfigBase):
    """Downstream semantic segmentation from one of four initialisations.

    ``init``: ``none`` (random weights), ``imagenet`` (supervised ResNet-34
    encoder only; ``imagenet_weights`` is a local file, or None for the model
    library's own download), ``random_ir`` / ``selective_ir`` (the whole
    U-Net but the head from the pretraining run directory ``pretrained``).
    """

    KIND: ClassVar[str] = "finetune"

    dataset: str
    data_root: Optional[str] = None
    init: str = "none"                 # 'none' | 'imagenet' | 'random_ir' | 'selective_ir'
    pretrained: Optional[str] = None   # pretraining run dir (random_ir / selective_ir)
    imagenet_weights: Optional[str] = None  # encoder weights file (imagenet); None: library default
    image_size: int = 256
    epochs: int = 500
    batch_size: int = 8
    lr: float = 3e-3
    warmup_epochs: int = 10
    min_lr_ratio: float = 0.01
    crop_scale: tuple[float, float] = (0.25, 1.0)
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    dropout: float = 0.2
    seed: int = PAPER_SEED
    max_train_images: Optional[int] = None  # cap on downstream train images (first N)
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True
    precision: str = "auto"           # CUDA arithmetic: auto (amp: bf16 if supported, else fp16) | fp32 | bf16 | fp16
    channels_last: bool = False        # CUDA: NHWC memory format (not hashed)
    compile: bool = False              # CUDA: torch.compile the training model (not hashed)
    compile_mode: str = "default"      # with compile: torch.compile's mode (not hashed)
    pin_memory: bool = True            # CUDA: pinned host memory for loaded batches (not hashed)
    persistent_workers: bool = True    # keep loader workers alive between epochs (not hashed; workers only)
    prefetch_factor: int = 2           # batches each loader worker prepares ahead (not hashed)
    jitter_on_device: bool = False     # CUDA: as in pretraining; measured slower at fine-tuning's batch 8 (not hashed)
    uint8_batches: bool = True         # CUDA: as in pretraining; the same batches, a fifth of the bytes (not hashed)
    sync_free_steps: bool = True       # CUDA: as in pretraining (not hashed)
    image_cache_mb: int = 512          # decoded images kept in memory, MB per cache and process (not hashed)
    checkpoint_every: int = 1
    # Details of the authors' code (docs/METHOD.md); the paper preset sets them their way.
    pad_to_multiple: int = 0           # reflect-pad every forward input to a multiple (0: never)
    transfer_head_if_shapes_match: bool = False  # IR inits: copy the RGB head into a 3-class head
    # -- data and evaluation details of the authors' code (METHOD.md items 4, 7-9, 11)
    void_as_class: bool = False        # void (255) trained as one more output; only VOID_LABEL_DATASETS
    absent_class_iou: str = "nan"      # class absent from truth and prediction: 'nan' (left out) | 'zero'
    drop_last: bool = False            # train and val loaders drop their last partial batch
    antialias: bool = True             # antialiased resizes (torchvision); False: OpenCV-like bilinear
    split_list: Optional[str] = None   # sugarbeets: file listing the downstream frames (its content is hashed)

    def _check_values(self) -> None:
        self._check_common()
        _check_choice("init", self.init, INITS)
        _check_choice("absent_class_iou", self.absent_class_iou, ABSENT_CLASS_IOU_RULES)
        if self.void_as_class and self.dataset not in VOID_LABEL_DATASETS:
            raise SelmaskError(f"config key 'void_as_class' needs a dataset with a void label "
                               f"({', '.join(VOID_LABEL_DATASETS)}); {self.dataset!r} has none")
        if self.split_list is not None and self.dataset not in SPLIT_LIST_DATASETS:
            raise SelmaskError(f"config key 'split_list' is for dataset {', '.join(SPLIT_LIST_DATASETS)} only, "
                               f"not {self.dataset!r}")
        if self.split_list == "":
            raise SelmaskError("config key 'split_list' must be a file path or null, got ''")
        if self.init in IR_INITS and self.pretrained is None:
            raise SelmaskError(
                f"config key 'pretrained' must name a pretraining run directory "
                f"when init is '{self.init}'"
            )
        if self.max_train_images is not None:
            _check_at_least("max_train_images", self.max_train_images, 1)

    def _result_fields(self) -> dict[str, Any]:
        fields = super()._result_fields()
        if self.dataset == "folder":
            fields["data_root"] = self.data_root
        if self.init not in IR_INITS:
            fields.pop("pretrained")
        else:
            # The pretraining run's folder name, not its path: the kit names a run by its own
            # config hash and data, so a runs folder that moves, or is named relatively, keeps its
            # fine-tuning runs. finetune() also checks the pretraining run's own config hash.
            fields["pretrained"] = Path(self.pretrained).name
        if self.init != "imagenet":
            fields.pop("imagenet_weights")
        # The list's content, not its path, is the run's identity: finetuning.load_splits hashes
        # the file into the data fingerprint, so a moved list keeps its run and an edited one
        # (another order, other frames) gets a new run, whatever its path.
        fields.pop("split_list", None)
        return fields


Config = Union[PretrainConfig, FinetuneConfig]
_CLASSES = {cls.KIND: cls for cls in (PretrainConfig, FinetuneConfig)}


# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------

# Loader workers of the paper preset (speed only, not hashed; per process under torchrun). A worker built a
# 256 px training item of the embedded images in 3.5 ms on one core of an H200's host (bench_item_cost.py),
# some 280 a second; a bare loop there took 900-1300 images a second at batch 32, so 4 workers could not
# keep up once they jitter (uint8_batches); with 8 the kit ran at 0.87x of the bare loop (calls 7 and 8,
# benchmarks/README.md). Items cropped from larger images cost more (7.5 ms in `selmask estimate`), and
# at the paper's batch 128 the estimate asks for 12 there: it names the workers that would keep up.
PAPER_NUM_WORKERS = 8

# METHOD.md: pretraining batch per dataset. 'folder' and the embedded datasets are not
# in the paper; they get the general-dataset value (VOC, Cityscapes).
PAPER_PRETRAIN_BATCH = {"voc": 128, "cityscapes": 128, "nassar": 256, "sugarbeets": 64,
                        "folder": 128, **{name: 128 for name in EMBEDDED_DATASETS}}

# The paper's four datasets: image counts of the pretraining pool and of the downstream
# train / val / test splits, and the classes the head predicts. From METHOD.md ("Datasets and
# splits"); VOC's pool is all 17,125 files of VOC2012 JPEGImages; Nassar uses the first 1/5 of
# its 1784 / 168 train / val tiles; Sugarbeets cuts its 757 weed frames 70/10/20 in list order.
# Used by `selmask estimate` to project the wall time of the whole paper run.
PAPER_DATASET_SIZES = {
    "voc": dict(pretrain=17125, train=1464, val=1449, test=210, classes=21),
    "cityscapes": dict(pretrain=24997, train=2380, val=595, test=500, classes=19),
    "nassar": dict(pretrain=40710, train=356, val=33, test=266, classes=3),
    "sugarbeets": dict(pretrain=12330, train=529, val=76, test=152, classes=3),
}


def pretrain_preset(name: str, dataset: str, **overrides: Any) -> PretrainConfig:
    """A named pretraining config for ``dataset``, with ``overrides`` applied.

    ``paper`` -- METHOD.md exactly: 256 px crops, 512 nominal patches (21x21
    grid of 12 px), mask ratio 0.5, E = 1000 epochs per selective step, batch
    128 (voc, cityscapes), 256 (nassar), 64 (sugarbeets), Adam lr 3e-3, 10
    warm-up epochs then cosine to 0.01x, K = 10, S = 5, 90/10 train/val,
    scored at shorter side 256, seed 3741, all images. Only departure:
    ``folder`` and the embedded datasets (not in the paper) use batch 128.
    ``num_workers`` is 8 (speed only, not hashed; ``PAPER_NUM_WORKERS``). As the authors' code
    does (METHOD.md, "Details of the authors' code"): loaders drop their
    last partial batch (``drop_last``), resizes are bilinear without
    antialiasing (``antialias=False``), and the Cityscapes pool is all 5,000
    fine frames plus train_extra (``cityscapes_pool='all_fine_and_extra'``,
    24,997 images, the downstream test frames included).

    ``demo`` -- minutes on a laptop CPU (meant for the embedded datasets,
    whose images are 64 px high). Sized on the random-masking baseline, never
    on the selective arm: a budget at which random IR beats no
    pretraining on the embedded domains (README, "Is the demo big enough?").
    Departures: 64 px crops and score size 64 (the embedded images' height;
    CPU time grows with pixels); 64 nominal patches, an 8x8 grid of 8 px
    (512 patches at 64 px would be 2 px, thinner than the 3x3 SSIM window);
    K = 4 so each step still sees a useful share of a small pool; S = 3
    draws; at most 560 images (a whole embedded pool); E = 20 epochs per
    step with 2 warm-up epochs; batch 18. About 10k image-steps: at 2k
    (80 images x 30 epochs) pretraining did not help at all. Scoring an image
    (S = 3 forward passes) costs about as much as 1.4 training epochs of it,
    once per step, so it takes about 1/E of a selective run (0.1 % in the
    paper, 7 % here). 560 images split evenly: both strategies train on 504
    images and validate on 56 per epoch, in 28 optimiser steps of 18
    (4 partitions x 7 vs 1 x 28), so neither pays for extra images or
    partial batches. No resumable checkpoint inside a step
    (``checkpoint_every=30``, not hashed): selective masking saves its step
    models, and a 300 MB resumable checkpoint per short epoch would cost it
    (K x E epochs) more than random masking (E epochs). A crash loses at
    most one selective step (about a minute here) or the whole
    random-masking run (about 4 minutes).

    ``smoke`` -- seconds, for CI. Departures: 64 px crops and score size 64;
    64 nominal patches (8x8 grid of 8 px); E = 1 epoch; batch 4; no warm-up
    (one epoch at full lr); K = 2, S = 2; at most 24 images. No resumable
    checkpoint inside a step either (``checkpoint_every=30``), as in ``demo``.

    ``demo`` and ``smoke`` keep the kit's defaults for the authors' code
    details: partial batches kept, antialiased resizes, Cityscapes pool =
    train + train_extra (no val or test frame).
    """
    _check_choice("dataset", dataset, DATASET_NAMES)
    values: dict[str, Any] = dict(dataset=dataset)
    if name == "paper":
        selective = overrides.get("strategy", "selective") == "selective"
        values.update(batch_size=PAPER_PRETRAIN_BATCH[dataset], num_workers=PAPER_NUM_WORKERS, **paper_code_details(dataset, selective))
    elif name == "demo":
        values.update(image_size=64, score_size=64, n_patches=64, epochs=20, batch_size=18,
                      warmup_epochs=2, n_partitions=4, n_scoring_draws=3, max_images=560,
                      checkpoint_every=30)
    elif name == "smoke":
        values.update(image_size=64, score_size=64, n_patches=64, epochs=1, batch_size=4,
                      warmup_epochs=0, n_partitions=2, n_scoring_draws=2, max_images=24, checkpoint_every=30)
    else:
        _check_choice("preset", name, PRESET_NAMES)
    return PretrainConfig(**values).updated(**overrides)


def finetune_preset(name: str, dataset: str, **overrides: Any) -> FinetuneConfig:
    """A named fine-tuning config for ``dataset``, with ``overrides`` applied.

    All presets start from ``init='none'``; set ``init`` (and ``pretrained``
    for the IR inits) through ``overrides``.

    ``paper`` -- METHOD.md exactly: 256 px crops, 500 epochs, batch 8, Adam
    lr 3e-3, 10 warm-up epochs then cosine to 0.01x, head dropout 0.2, seed
    3741, all training images. ``num_workers`` is 8 (speed only). As the
    authors' code does: void is a trained class on voc and cityscapes
    (``void_as_class``, 22 and 20 outputs), a class absent from truth and
    prediction scores 0 in the mean (``absent_class_iou='zero'``), loaders
    drop their last partial batch, resizes do not antialias. ``split_list``
    stays null: pass the authors' Sugarbeets list (``--set
    split_list=FILE``) to test on their frames.

    ``demo`` -- minutes on a CPU. Departures: 64 px crops; 30 epochs; 2
    warm-up epochs; at most 48 training images. Batch 8 as in the paper. A
    resumable checkpoint every 10 epochs (``checkpoint_every=10``, not
    hashed): an epoch takes seconds, and writing ~300 MB (weights and Adam
    state) after each made a toy_beet_field run take 81 s instead of 56 s on
    2 CPU cores (same results); a crash loses at most 10 epochs. The best
    epoch's weights are kept however short the run.
    Why 48: the paper fine-tunes on 1/10 to 1/100 as many labelled images as
    it pretrains on (VOC 1,464 of 17,125; Cityscapes 2,380 of 24,997); 48 of
    560 keeps VOC's ratio. With all 120 labelled images of an embedded
    domain the network learns it from scratch and no initialisation matters
    (toy_street: 65.5 vs 66.0 mIoU); with 48, random IR beats no
    pretraining (README, "Is the demo big enough?").

    ``smoke`` -- seconds, for CI. Departures: 64 px crops; 2 epochs; batch 4;
    no warm-up; at most 8 training images; ``checkpoint_every=10`` as in
    ``demo``.

    ``demo`` and ``smoke`` keep the kit's defaults for the authors' code
    details: void ignored, absent classes left out of the mean, partial
    batches kept, antialiased resizes.
    """
    _check_choice("dataset", dataset, DATASET_NAMES)
    values: dict[str, Any] = dict(dataset=dataset)
    if name == "paper":
        values.update(num_workers=PAPER_NUM_WORKERS, **paper_code_details(dataset))
    elif name == "demo":
        values.update(image_size=64, epochs=30, warmup_epochs=2, max_train_images=48, checkpoint_every=10)
    elif name == "smoke":
        values.update(image_size=64, epochs=2, batch_size=4, warmup_epochs=0, max_train_images=8,
                      checkpoint_every=10)
    else:
        _check_choice("preset", name, PRESET_NAMES)
    return FinetuneConfig(**values).updated(**overrides)


def paper_code_details(dataset: str, selective: Optional[bool] = None) -> dict[str, Any]:
    """The settings that make a run do what the authors' code did (docs/METHOD.md, items 1-12).

    ``selective`` is None for a fine-tuning config, else whether the
    pretraining run is selective: the authors' selective runs train on
    L1 + (1 - SSIM 3x3) at every step and bake their fixed masks into the
    images; their random-masking runs train on L1 + (1 - MS-SSIM).
    """
    shared: dict[str, Any] = dict(pad_to_multiple=64, amp=False, drop_last=True, antialias=False)  # 5, 12, 8, 9
    if selective is None:
        return dict(shared, transfer_head_if_shapes_match=True, absent_class_iou="zero",  # 2, 7
                    void_as_class=dataset in ("voc", "cityscapes"))  # 4
    details = dict(shared, recon_loss="ssim3" if selective else "ms_ssim", pretrained_checkpoint="best_val_loss")
    if dataset == "cityscapes":
        details.update(cityscapes_pool="all_fine_and_extra")  # 10
    if selective:
        details.update(bake_selective_masks=True, baked_image_quality=75 if dataset == "voc" else None)
    return details


def _paper_strategy_settings(dataset: str, selective: bool) -> dict[str, Any]:
    """:func:`paper_code_details` of a pretraining run, with every key the other strategy sets named too."""
    defaults = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}
    both = {**paper_code_details(dataset, True), **paper_code_details(dataset, False)}
    return {**{key: defaults[key] for key in both}, **paper_code_details(dataset, selective)}


_PRESET_FUNCTIONS = {"pretrain": pretrain_preset, "finetune": finetune_preset}


def describe_keys(kind: str, dataset: str = "voc") -> list[dict[str, Any]]:
    """Every key of a ``kind`` config: its type and its value in each preset for ``dataset``.

    What ``selmask config pretrain`` prints, so a user can see which keys
    ``--set`` accepts without reading the source.
    """
    _check_choice("kind", kind, tuple(_CLASSES))
    presets = {name: _PRESET_FUNCTIONS[kind](name, dataset).to_dict() for name in PRESET_NAMES}
    hints = typing.get_type_hints(_CLASSES[kind])
    rows = []
    for field in dataclasses.fields(_CLASSES[kind]):
        type_name = _type_name(hints[field.name])
        if typing.get_origin(hints[field.name]) in (Union, types.UnionType):
            inner = [a for a in typing.get_args(hints[field.name]) if a is not type(None)]
            type_name = f"{_type_name(inner[0])} or null"
        rows.append({"key": field.name, "type": type_name,
                     **{name: values[field.name] for name, values in presets.items()},
                     "hashed": field.name not in NON_RESULT_FIELDS})
    return rows


# ---------------------------------------------------------------------------
# YAML and hashing
# ---------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``3e-3`` as a float (YAML 1.1 wants ``3.0e-3``)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str, key: str = "value") -> Any:
    """One value typed by a user (``--set lr=3e-3``), read as YAML exactly like a config file.

    The same loader as :func:`load_config`, so ``3e-3`` is a float on the
    command line as in a file. ``key`` names the setting in the error.
    """
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SelmaskError(f"value {text!r} of '{key}' is not valid YAML ({problem})") from None


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write ``cfg`` to ``path`` as YAML (with its ``kind``); returns the path."""
    path = Path(path)
    data = {"kind": cfg.KIND, **cfg.to_dict()}
    text = f"# selmask {cfg.KIND} config, config_hash {config_hash(cfg)}\n"
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as err:
        raise SelmaskError(f"cannot write config file {path}: {err.strerror or err}") from err
    return path


def load_config(path: str | Path, kind: str | None = None) -> Config:
    """Read a config written by :func:`save_config` or by hand.

    The kind comes from ``kind`` (argument), else the file's ``kind`` key,
    else is guessed (``strategy`` -> pretrain, ``init`` -> finetune). With a
    ``preset`` key the named preset is the base and the other keys override
    it. Every problem raises :class:`SelmaskError` naming the file and key.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SelmaskError(f"config file {path} does not exist") from None
    except OSError as err:
        raise SelmaskError(f"cannot read config file {path}: {err.strerror or err}") from err
    try:
        data = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as err:
        raise SelmaskError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SelmaskError(f"config file {path} must hold a mapping of keys to values")
    data = dict(data)
    file_kind = data.pop("kind", None)
    kind = kind or file_kind
    if kind is None:
        if "strategy" in data or "n_partitions" in data:
            kind = "pretrain"
        elif "init" in data or "pretrained" in data:
            kind = "finetune"
        else:
            raise SelmaskError(
                f"config file {path}: cannot tell a pretrain from a finetune config; "
                f"add 'kind: pretrain' or 'kind: finetune'"
            )
    try:
        _check_choice("kind", kind, tuple(_CLASSES))
        preset = data.pop("preset", None)
        if preset is None:
            return _CLASSES[kind].from_dict(data)
        if "dataset" not in data:
            raise SelmaskError(f"missing config key 'dataset' in {kind} config")
        return _PRESET_FUNCTIONS[kind](preset, **data)
    except SelmaskError as err:
        raise SelmaskError(f"config file {path}: {err}") from err


def config_hash(cfg: Config) -> str:
    """A 16-hex-digit id of the fields that can change a run's result.

    Canonical JSON (sorted keys) of the config's kind and result fields,
    SHA-256. Excluded: ``num_workers``, ``device``, ``checkpoint_every``,
    ``data_root`` (except for the ``folder`` dataset, whose only identity is
    its path), and fields the run ignores (scoring settings for random
    masking; ``pretrained`` / ``imagenet_weights`` when ``init`` does not
    use them).
    """
    payload = {"kind": cfg.KIND, **cfg._result_fields()}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _reject_unknown_keys(data: dict[str, Any], names: list[str], kind: str) -> None:
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SelmaskError(f"unknown config key '{key}' in {kind} config{hint}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SelmaskError(
            f"config key '{key}' must be one of {', '.join(choices)}; got {value!r}{hint}"
        )


def _check_at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise SelmaskError(f"config key '{key}' must be >= {minimum}, got {value}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"a list of {len(args)} {_type_name(args[0])}s"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints become floats, lists tuples."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            try:
                return _coerce(key, value, args[0])
            except SelmaskError:
                raise SelmaskError(
                    f"config key '{key}' must be {_type_name(args[0])} or null, "
                    f"got {type(value).__name__} {value!r}"
                ) from None
        tp = args[0]  # pragma: no cover - no multi-type fields
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        args = typing.get_args(tp)
        ok = isinstance(value, (list, tuple)) and len(value) == len(args)
        if ok:
            try:
                value = tuple(_coerce(key, v, a) for v, a in zip(value, args))
            except SelmaskError:
                ok = False
    if not ok:
        raise SelmaskError(
            f"config key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
