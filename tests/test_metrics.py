"""Tests for selmask_lib.metrics: IoU rule, absent classes, accumulation, errors."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from selmask_lib.errors import SelmaskError
from selmask_lib.metrics import (
    SegmentationEvaluator,
    iou_from_confusion,
    mean_iou,
)

IGN = 255

# A 3-class example worked out by hand. Two pixels are void (255); the
# prediction there (0 and 1) must not count anywhere.
TARGET = torch.tensor([[[0, 0, 0, 1],
                        [0, 1, 1, 2],
                        [IGN, IGN, 2, 2]]])
PRED = torch.tensor([[[0, 0, 1, 1],
                      [0, 1, 2, 2],
                      [0, 1, 2, 0]]])
# (truth, prediction) pairs over the 10 labelled pixels:
#   truth 0: pred 0,0,1,0 -> [3, 1, 0]
#   truth 1: pred 1,1,2   -> [0, 2, 1]
#   truth 2: pred 2,2,0   -> [1, 0, 2]
HAND_CM = [[3, 1, 0],
           [0, 2, 1],
           [1, 0, 2]]
# IoU_c = TP / (row + col - TP)
#   class 0: 3 / (4 + 4 - 3) = 3/5
#   class 1: 2 / (3 + 3 - 2) = 2/4
#   class 2: 2 / (3 + 3 - 2) = 2/4
HAND_IOU = [0.6, 0.5, 0.5]
HAND_MIOU = (0.6 + 0.5 + 0.5) / 3
HAND_ACC = 7 / 10
NAMES = ["background", "crop", "weed"]


def test_hand_computed_example_from_ids():
    ev = SegmentationEvaluator(3, NAMES)
    ev.update(PRED, TARGET)
    s = ev.compute()
    assert s.confusion_matrix == HAND_CM
    assert list(s.per_class_iou) == NAMES
    assert [s.per_class_iou[n] for n in NAMES] == pytest.approx(HAND_IOU)
    assert s.miou == pytest.approx(HAND_MIOU)
    assert s.pixel_accuracy == pytest.approx(HAND_ACC)
    assert s.num_pixels == 10
    assert None not in s.per_class_iou.values()  # no class is absent


def test_hand_computed_example_from_logits_and_unbatched():
    logits = torch.nn.functional.one_hot(PRED, 3).permute(0, 3, 1, 2).float() * 5.0
    logits += 0.1 * torch.randn_like(logits)
    ev = SegmentationEvaluator(3, NAMES)
    ev.update(logits, TARGET)
    assert ev.compute().confusion_matrix == HAND_CM
    ev.reset()
    ev.update(logits[0], TARGET[0])  # [C, H, W] with [H, W]
    assert ev.compute().confusion_matrix == HAND_CM


def test_iou_from_confusion_matches_hand_values():
    iou = iou_from_confusion(torch.tensor(HAND_CM))
    assert iou.tolist() == pytest.approx(HAND_IOU)
    assert mean_iou(iou) == pytest.approx(HAND_MIOU)


def test_class_absent_everywhere_is_none_and_excluded_from_mean():
    # 4 classes; class 3 ("extra") is in neither truth nor prediction.
    ev = SegmentationEvaluator(4, NAMES + ["extra"])
    ev.update(PRED, TARGET)
    s = ev.compute()
    assert s.per_class_iou["extra"] is None
    assert [n for n, v in s.per_class_iou.items() if v is None] == ["extra"]
    assert s.miou == pytest.approx(HAND_MIOU)  # mean over the 3 defined classes only
    assert math.isnan(iou_from_confusion(torch.tensor(s.confusion_matrix))[3])


def test_predicted_but_absent_from_truth_counts_as_zero():
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 2, 1, 1]]])  # class 2 predicted once, never true
    ev = SegmentationEvaluator(3, NAMES)
    ev.update(pred, target)
    s = ev.compute()
    # class 0: 1/(2+1-1)=0.5; class 1: 2/2=1; class 2: 0/(0+1-0)=0
    assert s.per_class_iou == pytest.approx({"background": 0.5, "crop": 1.0, "weed": 0.0})
    assert s.per_class_iou["weed"] == 0.0
    assert s.miou == pytest.approx(1.5 / 3)


def test_absence_is_judged_over_the_whole_split_not_per_batch():
    ev = SegmentationEvaluator(3, NAMES)
    ev.update(torch.tensor([[[0, 0]]]), torch.tensor([[[0, 0]]]))  # only class 0 here
    ev.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 2]]]))  # classes 1, 2 here
    s = ev.compute()
    assert s.per_class_iou == pytest.approx({"background": 1.0, "crop": 0.5, "weed": 0.0})


def test_torchmetrics_absent_class_behaviour_and_agreement():
    """Pin what torchmetrics 1.9 does, which is why we compute IoU ourselves."""
    ev = SegmentationEvaluator(4, NAMES + ["extra"])
    ev.update(PRED, TARGET)
    s = ev.compute()
    per_class = MulticlassJaccardIndex(4, average="none", ignore_index=IGN)(PRED, TARGET)
    assert per_class[3].item() == 0.0  # zero_division=0: absent class reported as 0
    macro = MulticlassJaccardIndex(4, average="macro", ignore_index=IGN)(PRED, TARGET)
    assert macro.item() == pytest.approx(s.miou)  # macro drops absent classes, like us


def test_accumulation_equals_one_big_update():
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        t = torch.randint(0, 5, (2, 8, 8), generator=g)
        t[torch.rand(t.shape, generator=g) < 0.1] = IGN
        logits = torch.randn(2, 5, 8, 8, generator=g)
        batches.append((logits, t))
    ev = SegmentationEvaluator(5)
    for logits, t in batches:
        ev.update(logits, t)
    many = ev.compute()
    one = SegmentationEvaluator(5)
    one.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    big = one.compute()
    assert many.confusion_matrix == big.confusion_matrix
    assert many.miou == pytest.approx(big.miou)
    assert many.per_class_iou == pytest.approx(big.per_class_iou)
    assert sum(map(sum, many.confusion_matrix)) == int((torch.cat([b[1] for b in batches]) != IGN).sum())
    ev.reset()
    with pytest.raises(SelmaskError, match="no labelled pixels"):
        ev.compute()


def test_state_follows_device_and_to_dict():
    ev = SegmentationEvaluator(3, NAMES, device="cpu")
    assert ev.device.type == "cpu"
    ev.update(PRED, TARGET)
    d = ev.compute().to_dict()
    assert d["confusion_matrix"] == HAND_CM and d["class_names"] == NAMES
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        ev.update(PRED.cuda(), TARGET.cuda())
        assert ev.device.type == "cuda"
        assert ev.compute().num_pixels == 20


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (PRED, torch.where(TARGET == 2, 7, TARGET), r"target contains class ids \[7\]"),
        (torch.where(PRED == 2, 3, PRED), TARGET, r"predictions contain class ids \[3\]"),
        (PRED[..., :3], TARGET, "does not match target shape"),
        (torch.randn(1, 4, 3, 4), TARGET, "4 channels"),
        (PRED, TARGET.float(), "integer class ids"),
    ],
)
def test_bad_inputs_raise_selmask_error(pred, target, match):
    ev = SegmentationEvaluator(3, NAMES)
    with pytest.raises(SelmaskError, match=match):
        ev.update(pred, target)


def test_bad_constructor_arguments():
    with pytest.raises(SelmaskError, match="class_names"):
        SegmentationEvaluator(3, ["a", "b"])
    with pytest.raises(SelmaskError, match="ignore_index"):
        SegmentationEvaluator(3, ignore_index=0)
    with pytest.raises(SelmaskError, match="square"):
        iou_from_confusion(torch.zeros(2, 3))


def test_combine_counts_scores_the_union_of_shards():
    # what distributed.gather_confusion does across processes: each shard's counts replaced by their sum
    truth, prediction = torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 2, 2, 1]])
    whole = SegmentationEvaluator(3, NAMES)
    whole.update(prediction, truth)
    shards = [SegmentationEvaluator(3, NAMES) for _ in range(2)]
    shards[0].update(prediction[:, :2], truth[:, :2])
    shards[1].update(prediction[:, 2:], truth[:, 2:])
    total = shards[0].confusion_matrix + shards[1].confusion_matrix
    shards[0].combine_counts(lambda counts: total)
    assert torch.equal(shards[0].confusion_matrix, whole.confusion_matrix)
    assert shards[0].compute().miou == pytest.approx(whole.compute().miou)
