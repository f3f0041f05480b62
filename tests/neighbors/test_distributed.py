"""Two processes (gloo, CPU) against one: the sharded k-NN and the spread C sweep agree."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinov2_heads.neighbors import KnnClassifier, logistic_regression
from tests.test_distributed import free_port

WORLD = 2
KS = (1, 5, 30)


def inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    train = torch.randn(101, 12, generator=g)  # not divisible by the world size
    labels = torch.randint(0, 4, (101,), generator=g)
    queries = torch.randn(2 * 9, 12, generator=g)
    return train, labels, queries


def results(rank: int) -> dict[str, object]:
    train, labels, queries = inputs()
    knn = KnnClassifier(train, labels, k=KS, chunk_size=16)
    mine = queries[rank * 9 : (rank + 1) * 9] if dist.is_initialized() else queries
    logistic = logistic_regression(train.double(), labels, c_values=(1e-2, 1.0, 10.0), max_iter=50)
    return {
        "proba": knn.predict_proba(mine),
        "indices": knn.neighbors(mine).indices,
        "weight": logistic.head.weight.detach(),
        "sweep": logistic.sweep,
    }


def worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.save(results(rank), Path(root) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    one = results(0)
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
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    indices = torch.cat([part["indices"] for part in parts])
    assert torch.equal(indices, one["indices"])
    for k in KS:
        proba = torch.cat([part["proba"][k] for part in parts])
        torch.testing.assert_close(proba, one["proba"][k], rtol=0, atol=1e-6)
    for part in parts:
        assert part["sweep"] == one["sweep"]
        torch.testing.assert_close(part["weight"], one["weight"])
