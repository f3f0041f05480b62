"""The official k-NN scoring (``dinov2/eval/knn.py``, one process), written from its definition.

The full similarity matrix, ``topk(max_k)``, the neighbours' labels, ``softmax(sim / T)`` over the
max_k neighbours, one-hot votes times weights, summed over the first k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def official_knn_proba(
    train: Tensor, labels: Tensor, queries: Tensor, ks: tuple[int, ...], t: float, classes: int
) -> dict[int, Tensor]:
    train = F.normalize(train, dim=1, p=2)
    queries = F.normalize(queries, dim=1, p=2)
    similarity = torch.mm(queries, train.T)
    top_sims, indices = similarity.topk(max(ks), largest=True, sorted=True)
    neighbour_labels = torch.gather(labels.view(1, -1).expand(len(queries), -1), 1, indices)
    weights = F.softmax(top_sims / t, 1)
    votes = torch.mul(
        F.one_hot(neighbour_labels, num_classes=classes), weights.view(len(queries), -1, 1)
    )
    return {k: torch.sum(votes[:, :k, :], 1) for k in ks}
