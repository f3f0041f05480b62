from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from dinov2_heads.training.depth_metrics import (
    DEPTH_METRICS,
    DepthMetrics,
    depth_metrics,
    format_depth_metrics,
)
from tests.test_distributed import free_port


def reference_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The toolbox's per-image ``metrics(gt, pred)``, in NumPy (valid pixels only)."""
    thresh = np.maximum(gt / pred, pred / gt)
    return {
        "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
        "sq_rel": float(np.mean(((gt - pred) ** 2) / gt)),
        "rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "log10": float(np.mean(np.abs(np.log10(gt) - np.log10(pred)))),
        "delta1": float((thresh < 1.25).mean()),
        "delta2": float((thresh < 1.25**2).mean()),
        "delta3": float((thresh < 1.25**3).mean()),
    }


def batch(seed: int = 0, images: int = 4) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(images, 1, 12, 16, generator=gen, dtype=torch.float64).float() * 12
    target[torch.rand(target.shape, generator=gen) < 0.25] = 0.0
    pred = target.clamp(min=0.3) * torch.exp(0.4 * torch.randn(target.shape, generator=gen))
    pred[0, 0, 0, 0] = 0.0  # below min_depth: clamped up
    pred[1, 0, 0, 0] = 50.0  # above max_depth: clamped down
    return pred, target


@pytest.mark.parametrize("median_scaling", [False, True])
def test_metrics_equal_the_reference_per_image_then_averaged(median_scaling: bool) -> None:
    pred, target = batch()
    got = depth_metrics(pred, target, max_depth=10.0, median_scaling=median_scaling)
    per_image = []
    for p, t in zip(pred.double().numpy(), target.double().numpy(), strict=True):
        valid = (t > 0.001) & (t <= 10.0)
        gt, est = t[valid], np.clip(p[valid], 0.001, 10.0)
        if median_scaling:
            est = est * np.median(gt) / np.median(est)
        per_image.append(reference_metrics(gt, est))
    assert list(got) == list(DEPTH_METRICS)
    for name in DEPTH_METRICS:
        expected = float(np.mean([row[name] for row in per_image]))
        assert got[name] == pytest.approx(expected, rel=1e-6, abs=1e-9), name


def test_perfect_and_scaled_predictions() -> None:
    _, target = batch()
    perfect = depth_metrics(target.clamp(min=0.001), target)
    assert perfect["abs_rel"] == pytest.approx(0.0, abs=1e-9)
    assert perfect["rmse"] == pytest.approx(0.0, abs=1e-9)
    assert perfect["delta1"] == 1.0
    scaled = depth_metrics(1.5 * target, target)
    assert scaled["abs_rel"] == pytest.approx(0.5)
    assert scaled["log10"] == pytest.approx(np.log10(1.5), rel=1e-6)
    assert scaled["delta1"] == 0.0  # 1.5 > 1.25
    assert scaled["delta2"] == 1.0  # 1.5 < 1.25^2
    # Median scaling removes a global factor.
    rescaled = depth_metrics(2 * target, target, median_scaling=True)
    assert rescaled["abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_streaming_equals_one_batch_and_merge_adds_images() -> None:
    pred, target = batch(images=6)
    whole = depth_metrics(pred, target, max_depth=10.0)
    first, second = DepthMetrics(max_depth=10.0), DepthMetrics(max_depth=10.0)
    first.update(pred[:2], target[:2])
    first.update(pred[2:3, 0], target[2:3, 0])  # (B, H, W) is accepted too
    second.update(pred[3:], target[3:])
    assert first.count == 3
    assert first.merge(second).compute() == pytest.approx(whole)
    with pytest.raises(ValueError, match="different settings"):
        first.merge(DepthMetrics(max_depth=80.0))


def test_images_without_ground_truth_are_skipped() -> None:
    pred, target = batch()
    target[1] = 0.0
    metrics = DepthMetrics()
    metrics.update(pred, target)
    assert (metrics.count, metrics.skipped) == (3, 1)
    assert metrics.compute() == pytest.approx(depth_metrics(pred[[0, 2, 3]], target[[0, 2, 3]]))
    empty = DepthMetrics()
    empty.update(pred, torch.zeros_like(target))
    with pytest.raises(ValueError, match="no image had a valid ground-truth depth"):
        empty.compute()


def test_bad_inputs_are_refused() -> None:
    pred, target = batch()
    with pytest.raises(ValueError, match="same shape"):
        depth_metrics(pred[..., :-1], target)
    negative = target.clone()
    negative[0, 0, 0, 0] = -2.0
    with pytest.raises(ValueError, match="negative values"):
        depth_metrics(pred, negative)
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        DepthMetrics(min_depth=5.0, max_depth=1.0)
    with pytest.raises(ValueError, match="0 <= min_depth"):
        DepthMetrics(min_depth=-1.0)


def test_format_lists_every_metric() -> None:
    pred, target = batch()
    line = format_depth_metrics(depth_metrics(pred, target))
    assert line.split()[::2] == list(DEPTH_METRICS)


WORLD = 2


def worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        pred, target = batch(images=5)
        metrics = DepthMetrics(max_depth=10.0)
        # Rank 0 sees three images, rank 1 two: the mean is over the five images.
        part = slice(0, 3) if rank == 0 else slice(3, 5)
        metrics.update(pred[part], target[part])
        result = metrics.compute()
        local = metrics.compute(reduce=False)
        torch.save({"result": result, "local": local}, Path(root) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_reduce_to_the_single_process_metrics(tmp_path: Path) -> None:
    pred, target = batch(images=5)
    expected = depth_metrics(pred, target, max_depth=10.0)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(
        worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two-process run did not finish in 120 s")
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert out["result"] == pytest.approx(expected)
    local = torch.load(tmp_path / "rank1.pt", weights_only=True)["local"]
    assert local == pytest.approx(depth_metrics(pred[3:], target[3:], max_depth=10.0))
