"""Segmentation evaluation: confusion matrix, per-class IoU, mIoU, pixel accuracy.

The confusion matrix is accumulated with
:class:`torchmetrics.classification.MulticlassConfusionMatrix` (rows = ground
truth, columns = prediction; pixels whose ground truth is ``ignore_index``,
255 by default, are dropped before counting). Every score is then derived from
that one matrix by :func:`iou_from_confusion`, so the IoU rule lives in one
place.

IoU of class ``c`` over the whole evaluated split::

    IoU_c = TP_c / (TP_c + FP_c + FN_c)
          = C[c, c] / (row_sum_c + col_sum_c - C[c, c])

The absent-class rule
---------------------
* A class that appears in **neither** the ground truth **nor** the prediction
  anywhere in the evaluated split has ``TP + FP + FN = 0``: its IoU is
  undefined. It is NaN in :func:`iou_from_confusion`, it is left **out** of
  the mean (mIoU is the mean over the classes with a defined IoU), it is
  ``None`` in :attr:`SegmentationScores.per_class_iou` (``null`` in
  ``results.json``) and is shown as ``n/a`` in tables.
* A class that is **predicted but absent from the ground truth** has
  ``TP = 0, FP > 0``: its IoU is 0 and it counts in the mean (a false alarm is
  a mistake).
* A class present in the ground truth but never predicted has IoU 0 as usual.

The rule is applied to the counts of the whole split, never per image or per
batch: "absent" means absent from every evaluated pixel.

``absent_class_iou="zero"`` (config key of the same name) is the authors'
rule instead (torchmetrics 0.9 ``JaccardIndex(absent_score=0)``): a class in
neither truth nor prediction scores 0 and counts in the mean. It changes
only those classes, and with them which validation epoch looks best.

Void as a class
---------------
With ``void_as_class=True`` (the authors' VOC and Cityscapes runs) the model
has one more output than there are classes, a trained void class at index
``num_classes``. The evaluator then counts a ``(C + 1) x (C + 1)`` matrix
in which void ground truth (``ignore_index``) is still dropped, so only the
void class's own row is ignored (as torchmetrics 0.9 does with
``ignore_index`` = the void class). A labelled pixel predicted as void is
a false negative of its class: it lowers that class's IoU. Void is never
scored and never shown: per-class IoU, mIoU and ``confusion_matrix`` cover
the C real classes, and ``predicted_void`` counts, per class, its pixels
predicted as void (row sum + ``predicted_void`` = the class's pixels).

What torchmetrics 1.9 does (checked in this venv, pinned by a test):
``MulticlassJaccardIndex(average="none")`` returns ``zero_division`` (default
0) for a class absent from both prediction and target, so per-class IoU
there would report a spurious 0; ``average="macro"`` gives such classes zero
weight, i.e. excludes them from the mean as we do (``zero_division=nan``
would instead make the macro mean NaN). We therefore take only the confusion
matrix from torchmetrics and compute IoU ourselves.

The evaluator is device-agnostic: its state lives on the device of the
tensors passed to :meth:`SegmentationEvaluator.update` (it follows them if
they move), and IoU is computed on the CPU in float64 from the integer counts
(float64 is unavailable on MPS; the matrix is tiny).
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from .config import ABSENT_CLASS_IOU_RULES
from .errors import SelmaskError

__all__ = [
    "SegmentationEvaluator",
    "SegmentationScores",
    "iou_from_confusion",
    "mean_iou",
    "mean_iou_of_rows",
]


def iou_from_confusion(confusion, absent: str = "nan") -> torch.Tensor:
    """Per-class IoU from a ``[C, C]`` confusion matrix (rows = truth, cols = prediction).

    Returns a float64 CPU tensor of length C. A class with
    ``TP + FP + FN == 0`` (in neither truth nor prediction) gets NaN, or 0
    with ``absent="zero"``; a class that is only predicted gets 0. See the
    module docstring. A stack ``[..., C, C]`` gives ``[..., C]`` (the
    bootstrap of :mod:`selmask_lib.statistics` scores thousands of matrices at once).
    """
    if absent not in ABSENT_CLASS_IOU_RULES:
        raise SelmaskError(f"absent_class_iou must be one of {', '.join(ABSENT_CLASS_IOU_RULES)}, got {absent!r}")
    cm = torch.as_tensor(confusion).detach().to("cpu", torch.float64)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise SelmaskError(f"confusion matrix must be square [C, C], got shape {tuple(cm.shape)}")
    if bool((cm < 0).any()):
        raise SelmaskError("confusion matrix has negative counts")
    tp = torch.diagonal(cm, dim1=-2, dim2=-1)
    denom = cm.sum(dim=-2) + cm.sum(dim=-1) - tp  # TP + FP + FN
    undefined = torch.full_like(tp, float("nan") if absent == "nan" else 0.0)
    return torch.where(denom > 0, tp / denom.clamp_min(1), undefined)


def mean_iou(per_class_iou) -> float:
    """Mean over the classes with a defined (non-NaN) IoU; NaN if there are none."""
    return float(mean_iou_of_rows(torch.as_tensor(per_class_iou, dtype=torch.float64)))


def mean_iou_of_rows(per_class_iou: torch.Tensor) -> torch.Tensor:
    """:func:`mean_iou` of each row of a ``[..., C]`` stack of per-class IoUs (NaN rows give NaN)."""
    return torch.nanmean(per_class_iou, dim=-1)


@dataclass
class SegmentationScores:
    """Scores of one evaluated split. IoUs and accuracy are fractions in [0, 1].

    ``per_class_iou`` maps class name -> IoU, ``None`` when the class is absent
    from both truth and prediction (excluded from ``miou``).
    ``confusion_matrix[t][p]`` counts pixels of true class t predicted as p;
    ``predicted_void[t]`` those predicted as the trained void class (None
    when the model has no void class).
    """

    miou: float
    per_class_iou: dict[str, float | None]
    confusion_matrix: list[list[int]]
    pixel_accuracy: float
    num_pixels: int = 0
    class_names: list[str] = field(default_factory=list)
    predicted_void: list[int] | None = None
    #: ``[N, K, K]`` int64 counts of each evaluated image (K: the classes, plus void with void_as_class), in the order seen (per-image mode only);
    #: results.json stores them sparsely (selmask_lib.results.per_image_entries), not through to_dict.
    per_image_confusions: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready dict (None for undefined IoUs), without the per-image counts."""
        data = asdict(dataclasses.replace(self, per_image_confusions=None))
        del data["per_image_confusions"]
        return data


class SegmentationEvaluator:
    """Accumulate a confusion matrix over batches; compute mIoU and per-class IoU.

    ``update(preds, target)`` takes either logits/probabilities ``[B, C, H, W]``
    (float; argmax over C) or predicted class ids ``[B, H, W]`` (integer), and
    target class ids ``[B, H, W]`` where ``ignore_index`` marks unlabelled
    pixels. Unbatched ``[C, H, W]`` / ``[H, W]`` inputs are accepted too.
    ``per_image=True`` also keeps each image's own confusion matrix (the
    bootstrap over test images of :mod:`selmask_lib.statistics` needs them).
    ``absent_class_iou`` and ``void_as_class`` are the rules of the module
    docstring; with ``void_as_class`` predictions have ``num_classes + 1``
    channels (ids up to ``num_classes``, the void class).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = 255,
        validate: bool = True,
        device: torch.device | str | None = None,
        absent_class_iou: str = "nan",
        void_as_class: bool = False,
        per_image: bool = False,
    ):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise SelmaskError(f"num_classes must be a positive integer, got {num_classes!r}")
        if class_names is None:
            class_names = [str(i) for i in range(num_classes)]
        class_names = [str(n) for n in class_names]
        if len(class_names) != num_classes:
            raise SelmaskError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}"
            )
        if len(set(class_names)) != len(class_names):
            raise SelmaskError(f"class_names must be unique, got {class_names}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise SelmaskError(
                f"ignore_index={ignore_index} is a valid class id (num_classes={num_classes}); "
                "the ignore label must lie outside 0..num_classes-1"
            )
        if absent_class_iou not in ABSENT_CLASS_IOU_RULES:
            raise SelmaskError(
                f"absent_class_iou must be one of {', '.join(ABSENT_CLASS_IOU_RULES)}, got {absent_class_iou!r}"
            )
        if void_as_class and ignore_index is None:
            raise SelmaskError("void_as_class needs an ignore_index: the void label of the targets")
        self.num_classes = num_classes
        self.class_names = class_names
        self.ignore_index = ignore_index
        self.validate = validate
        self.absent_class_iou = absent_class_iou
        self.void_as_class = void_as_class
        self.num_outputs = num_classes + 1 if void_as_class else num_classes  # the void class is the last id
        # validate_args=False: torchmetrics only counts unique values, which misses
        # out-of-range ids; we do our own check below with a clear message.
        self._confmat = MulticlassConfusionMatrix(
            self.num_outputs, ignore_index=ignore_index, normalize=None, validate_args=False
        )
        self._per_image: list[torch.Tensor] | None = [] if per_image else None
        if device is not None:
            self.to(device)

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self._confmat.device

    def to(self, device) -> "SegmentationEvaluator":
        """Move the accumulated state (kept) to ``device``."""
        self._confmat = self._confmat.to(torch.device(device))
        return self

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._confmat.reset()
        if self._per_image is not None:
            self._per_image.clear()

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """The current ``[C, C]`` int64 counts (rows = truth, cols = prediction; real classes only)."""
        return self._confmat.confmat.detach()[: self.num_classes, : self.num_classes].clone()

    def combine_counts(self, reduce_sum) -> None:
        """Replace the counts by ``reduce_sum(counts)``, e.g. their sum over the processes of a torchrun job.

        The evaluator reads torchmetrics' accumulated state directly and never
        calls ``MulticlassConfusionMatrix.compute()`` (the step where
        torchmetrics would sync), so shards are combined through this instead
        (see ``distributed.gather_confusion``).
        """
        counts = self._confmat.confmat
        self._confmat.confmat = reduce_sum(counts).to(counts.device)

    # ----------------------------------------------------------------- update
    def _labels(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1:
                raise SelmaskError(
                    f"float predictions must be logits [B, C, H, W] with target [B, H, W]; "
                    f"got predictions {tuple(preds.shape)} and target {tuple(target.shape)}"
                )
            cdim = 1 if target.ndim == 3 else 0
            if preds.shape[cdim] != self.num_outputs:
                raise SelmaskError(
                    f"logits have {preds.shape[cdim]} channels but the evaluator expects {self.num_outputs} "
                    f"(num_classes={self.num_classes}, void_as_class={self.void_as_class}; "
                    f"shape {tuple(preds.shape)})"
                )
            preds = preds.argmax(dim=cdim)
        elif preds.dtype == torch.bool:
            raise SelmaskError("predictions must be class ids or logits, not a bool tensor")
        if preds.shape != target.shape:
            raise SelmaskError(
                f"prediction shape {tuple(preds.shape)} does not match target shape "
                f"{tuple(target.shape)} (resize logits to the label size before evaluating)"
            )
        return preds.long()

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch. ``preds``: logits ``[B, C, H, W]`` or ids ``[B, H, W]``."""
        preds = torch.as_tensor(preds)
        target = torch.as_tensor(target)
        if target.is_floating_point() or target.dtype == torch.bool:
            raise SelmaskError(f"target must hold integer class ids, got dtype {target.dtype}")
        if target.ndim not in (2, 3):
            raise SelmaskError(f"target must be [B, H, W] or [H, W], got shape {tuple(target.shape)}")
        preds = self._labels(preds.detach(), target)
        target = target.detach().to(preds.device).long()
        if self.validate:
            self._check_ids(preds, target)
        if self._confmat.device != preds.device:
            self._confmat = self._confmat.to(preds.device)
        self._confmat.update(preds.reshape(-1), target.reshape(-1))
        if self._per_image is not None:
            self._per_image.append(self._counts_per_image(preds, target).cpu())

    def _counts_per_image(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[B, K, K]`` counts of each image of the batch (K: the size of the summed matrix)."""
        if target.ndim == 2:
            preds, target = preds[None], target[None]
        k = self._confmat.num_classes
        image = torch.arange(target.shape[0], device=target.device).view(-1, 1, 1).expand_as(target)
        cell = (image * k + target) * k + preds
        labelled = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        counts = torch.bincount(cell[labelled], minlength=target.shape[0] * k * k)
        return counts.view(target.shape[0], k, k)

    def _check_ids(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes
        bad_t = (target < 0) | (target >= c)
        if self.ignore_index is not None:
            bad_t &= target != self.ignore_index
        bad_p = (preds < 0) | (preds >= self.num_outputs)
        # one host sync for both checks
        flags = torch.stack([bad_t.any(), bad_p.any()]).tolist()
        if flags[0]:
            vals = sorted(torch.unique(target[bad_t]).tolist())[:10]
            raise SelmaskError(
                f"target contains class ids {vals} outside 0..{c - 1} "
                f"(ignore_index={self.ignore_index})"
            )
        if flags[1]:
            vals = sorted(torch.unique(preds[bad_p]).tolist())[:10]
            raise SelmaskError(f"predictions contain class ids {vals} outside 0..{self.num_outputs - 1}")

    # ---------------------------------------------------------------- compute
    def compute(self) -> SegmentationScores:
        """Scores over everything passed to :meth:`update` since the last reset."""
        full = self._confmat.confmat.detach().to("cpu", torch.int64)  # void's row is empty: its truth was dropped
        total = int(full.sum())
        if total == 0:
            raise SelmaskError(
                "no labelled pixels were evaluated (update() never called, or every "
                f"target pixel equals ignore_index={self.ignore_index})"
            )
        c = self.num_classes
        iou = iou_from_confusion(full, self.absent_class_iou)[:c]  # pixels predicted void are misses; void unscored
        per_class = {
            name: (None if math.isnan(v) else float(v))
            for name, v in zip(self.class_names, iou.tolist())
        }
        return SegmentationScores(
            miou=mean_iou(iou),
            per_class_iou=per_class,
            confusion_matrix=full[:c, :c].tolist(),
            pixel_accuracy=float(torch.diagonal(full).sum()) / total,
            num_pixels=total,
            class_names=list(self.class_names),
            predicted_void=full[:c, c].tolist() if self.void_as_class else None,
            per_image_confusions=None if self._per_image is None else self._stacked_per_image(full.shape[-1]),
        )

    def _stacked_per_image(self, k: int) -> torch.Tensor:
        return torch.cat(self._per_image) if self._per_image else torch.zeros(0, k, k, dtype=torch.int64)

    def __repr__(self) -> str:
        return (
            f"SegmentationEvaluator(num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, absent_class_iou={self.absent_class_iou!r}, "
            f"void_as_class={self.void_as_class}, device={self.device})"
        )
