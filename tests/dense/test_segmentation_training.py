"""Per-pixel loss and streaming metrics against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinov2_heads.dense.segmentation_loss import SegmentationLoss, segmentation_loss
from dinov2_heads.dense.segmentation_metrics import SegmentationMetrics


def test_loss_resizes_logits_to_the_masks_and_ignores_255() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, requires_grad=True)
    masks = torch.randint(0, 4, (2, 12, 20))
    masks[0, :4] = 255
    loss = segmentation_loss(logits, masks)
    up = F.interpolate(logits, size=(12, 20), mode="bilinear", align_corners=False)
    valid = masks != 255
    per_pixel = -up.log_softmax(dim=1).gather(1, masks.clamp(max=3)[:, None])[:, 0]
    torch.testing.assert_close(loss, per_pixel[valid].mean())
    loss.backward()
    assert logits.grad is not None
    assert logits.grad.abs().sum() > 0


def test_class_weights_are_cross_entropy_weights() -> None:
    torch.manual_seed(1)
    logits, masks = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    weights = [1.0, 3.0, 0.5]
    expected = F.cross_entropy(logits, masks, weight=torch.tensor(weights))
    torch.testing.assert_close(segmentation_loss(logits, masks, class_weights=weights), expected)
    torch.testing.assert_close(SegmentationLoss(weights)(logits, masks), expected)
    with pytest.raises(ValueError, match="one factor per class"):
        segmentation_loss(logits, masks, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        SegmentationLoss([1.0, -1.0, 1.0])


def test_loss_errors_and_empty_batches() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks = torch.full((2, 4, 4), 255)
    assert segmentation_loss(logits, masks).item() == 0.0
    masks[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"labels \[3\] outside 0\.\.2 \(K = 3\); use 255"):
        segmentation_loss(logits, masks)
    with pytest.raises(ValueError, match=r"masks \(B, H, W\)"):
        segmentation_loss(logits, torch.zeros(3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits \(B, K, h, w\)"):
        segmentation_loss(torch.randn(2, 3), masks)
    with pytest.raises(TypeError, match="integer class indices"):
        segmentation_loss(logits, masks.float())


def reference_scores(pred: torch.Tensor, label: torch.Tensor, k: int) -> tuple[list[float], float]:
    """mmsegmentation's intersect_and_union, summed over the set."""
    valid = label != 255
    pred, label = pred[valid], label[valid]
    intersect = pred[pred == label]
    area_intersect = torch.histc(intersect.float(), bins=k, min=0, max=k - 1)
    area_pred = torch.histc(pred.float(), bins=k, min=0, max=k - 1)
    area_label = torch.histc(label.float(), bins=k, min=0, max=k - 1)
    iou = (area_intersect / (area_pred + area_label - area_intersect)).tolist()
    return iou, float(area_intersect.sum() / area_label.sum())


def test_streaming_metrics_equal_the_whole_set() -> None:
    torch.manual_seed(2)
    k = 5
    preds = [torch.randint(0, k - 1, (2, 7, 9)) for _ in range(3)]  # class 4 never predicted
    labels = [torch.randint(0, k - 1, (2, 7, 9)) for _ in range(3)]
    labels[1][0, :3] = 255
    metrics = SegmentationMetrics(k, class_names=list("abcde"))
    for pred, label in zip(preds, labels, strict=True):
        scores = torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float()
        metrics.update(scores, label)
    result = metrics.compute()
    iou, accuracy = reference_scores(torch.cat(preds), torch.cat(labels), k)
    for got, expected in zip(result.iou[:4], iou[:4], strict=True):
        assert math.isclose(got, expected, rel_tol=1e-6)
    assert math.isnan(result.iou[4])  # in neither labels nor predictions
    assert math.isclose(result.miou, sum(iou[:4]) / 4, rel_tol=1e-6)
    assert math.isclose(result.pixel_accuracy, accuracy, rel_tol=1e-6)
    assert result.pixels == 3 * 2 * 7 * 9 - 3 * 9
    report = str(result)
    assert "mIoU" in report
    assert report.splitlines()[5].startswith("e ")
    metrics.reset()
    assert metrics.compute().pixels == 0


def test_metric_errors() -> None:
    metrics = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.update(
            torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 5, 5, dtype=torch.long)
        )
    with pytest.raises(ValueError, match=r"labels \[7\] outside 0\.\.2"):
        metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="scores of 4 classes"):
        metrics.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(0)


def _metrics_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        preds, labels = _halves()
        metrics = SegmentationMetrics(3)
        metrics.update(preds[rank], labels[rank])
        torch.save(metrics.compute().iou, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _halves() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    preds = [torch.randint(0, 3, (2, 6, 6), generator=gen) for _ in range(2)]
    labels = [torch.randint(0, 3, (2, 6, 6), generator=gen) for _ in range(2)]
    return preds, labels


def test_two_processes_report_the_whole_set(tmp_path: object) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    preds, labels = _halves()
    single = SegmentationMetrics(3)
    for pred, label in zip(preds, labels, strict=True):
        single.update(pred, label)
    expected = single.compute().iou
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_metrics_worker, args=(port, str(tmp_path)), nprocs=2, start_method=method)
    for rank in range(2):
        got = torch.load(f"{tmp_path}/rank{rank}.pt", weights_only=True)
        assert got == pytest.approx(expected)
    half = SegmentationMetrics(3)
    half.update(preds[0], labels[0])
    assert half.compute().iou != pytest.approx(expected)
