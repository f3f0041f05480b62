"""Two processes (gloo, CPU) against one: the sharded store and DDP training match."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinov2_heads import distributed
from dinov2_heads.cache import FeatureDataset, FeatureStore, extract_features
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.training import LinearProbeGrid, evaluate_grid, fit_grid
from tests.cache.conftest import Images, tiny_frozen

SAMPLES, PER_RANK, WORLD = 11, 2, 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def grid() -> LinearProbeGrid:
    torch.manual_seed(0)
    return LinearProbeGrid(32, 3, learning_rates=(1e-3, 1e-1), n_blocks=(1, 2))


def run(frozen_seed: int, root: Path, *, world: int) -> dict[str, object]:
    """What both the one-process and the two-process runs do; returns rank 0's results."""
    frozen = tiny_frozen(seed=frozen_seed)
    store = extract_features(
        frozen, Images(SAMPLES), path=root, keep="patch_tokens", batch_size=PER_RANK, progress=False
    )
    memory = extract_features(frozen, Images(SAMPLES), batch_size=PER_RANK, progress=False)
    # A store for dense heads: chosen blocks and masks, sharded alike.
    dense = FrozenBackbone(frozen.backbone, blocks=[(0, False), (1, True)])
    extract_features(
        dense,
        Images(SAMPLES, labels="mask"),
        path=root.parent / f"{root.name}_dense",
        batch_size=PER_RANK,
        progress=False,
    )
    model = grid()
    history = fit_grid(
        model, FeatureDataset(store), epochs=2, batch_size=PER_RANK * 2, seed=3, progress=False
    )
    results = evaluate_grid(model, FeatureDataset(store), batch_size=3)
    # A quarter of the labels missing: the processes see different numbers of labelled samples
    # per batch, and the step must still be the one-process step over the global batch.
    labels = torch.tensor([-100 if i % 4 == 1 else i % 3 for i in range(SAMPLES)])
    partial = FeatureStore.from_features(memory.features(slice(None)), labels)
    partly_labelled = grid()
    fit_grid(
        partly_labelled, FeatureDataset(partial), epochs=2, batch_size=4, seed=5, progress=False
    )
    return {
        "world": distributed.world_size(),
        "rank": distributed.rank(),
        "memory": {name: memory.array(name) for name in memory.layout.arrays},
        "grid": model.state_dict(),
        "partly_labelled": partly_labelled.state_dict(),
        "steps": history.steps,
        "accuracy": [row.accuracy for row in results.rows],
    }


def worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        out = run(0, Path(root) / "sharded", world=WORLD)
        if rank == 0:
            torch.save(out, Path(root) / "rank0.pt")
        else:
            assert out["world"] == WORLD
            assert out["rank"] == 1
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path: Path) -> None:
    # The one-process run goes first, so that forked workers inherit every import (a spawned
    # worker would spend most of the test importing torch again).
    one = run(0, tmp_path / "single", world=1)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(
        worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two-process run did not finish in 240 s")
    sharded = FeatureStore.open(tmp_path / "sharded")
    two = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert one["world"] == 1

    single = FeatureStore.open(tmp_path / "single")
    assert sharded.layout == single.layout
    assert torch.equal(sharded.sample_ids(), torch.arange(SAMPLES))
    for name in single.layout.arrays:
        assert torch.equal(sharded.array(name), single.array(name)), name
        if name in two["memory"]:
            assert torch.equal(two["memory"][name], one["memory"][name]), name

    dense, single_dense = (
        FeatureStore.open(tmp_path / f"{n}_dense") for n in ("sharded", "single")
    )
    assert dense.layout == single_dense.layout
    assert dense.layout.blocks == ((0, False), (1, True))
    assert dense.layout.arrays["labels"].dtype == "uint8"
    for name in single_dense.layout.arrays:
        assert torch.equal(dense.array(name), single_dense.array(name)), name

    assert two["steps"] == one["steps"] == 2 * (SAMPLES // (PER_RANK * 2))
    for key, value in one["grid"].items():
        torch.testing.assert_close(two["grid"][key], value, rtol=0, atol=1e-6)
    assert two["accuracy"] == one["accuracy"]
    for key, value in one["partly_labelled"].items():
        torch.testing.assert_close(two["partly_labelled"][key], value, rtol=0, atol=1e-6)
    moved = (one["grid"]["groups.0.weight"] - grid().state_dict()["groups.0.weight"]).abs().max()
    assert moved > 1e-3


def test_shard_range_covers_every_index_once() -> None:
    for count in (0, 1, 7, 10):
        for shards in (1, 2, 3):
            parts = [distributed.shard_range(count, s, shards) for s in range(shards)]
            assert [i for part in parts for i in part] == list(range(count))
            assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    with pytest.raises(ValueError, match="shard"):
        distributed.shard_range(5, 2, 2)


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "0")
    assert (distributed.rank(), distributed.world_size(), distributed.is_distributed()) == (
        0,
        1,
        False,
    )
    assert distributed.init_distributed() == (0, 1)
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(module) is module
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.local_rank() == 3
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK must be an integer"):
        distributed.rank()


def no_rendezvous(*args: object, **kwargs: object) -> None:
    raise AssertionError("init_process_group must not be reached: it would wait for peers")


def test_a_stale_rank_without_a_world_is_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # One process is the only rank, whatever RANK says: init_distributed joins nothing and
    # returns (0, 1), and rank-0 work (saving the best head) must not be skipped.
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")
    assert distributed.init_distributed() == (0, 1)
    assert distributed.rank() == 0
    assert distributed.is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert (distributed.rank(), distributed.world_size()) == (0, 1)


def test_inconsistent_environment_is_refused_before_joining(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dist, "init_process_group", no_rendezvous)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE must be >= 1, got 0"):
        distributed.world_size()
    with pytest.raises(ValueError, match="WORLD_SIZE must be >= 1, got 0"):
        distributed.init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for bad in ("2", "-1"):
        monkeypatch.setenv("RANK", bad)
        with pytest.raises(ValueError, match=rf"RANK={bad} .*WORLD_SIZE=2"):
            distributed.init_distributed()
        with pytest.raises(ValueError, match=rf"RANK={bad}"):
            distributed.rank()


def test_nccl_needs_a_gpu_per_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "init_process_group", no_rendezvous)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"nccl.*needs CUDA.*backend='gloo'"):
        distributed.init_distributed("nccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1 .* 1 CUDA device"):
        distributed.init_distributed("nccl")
