"""``predict``: class indices, probabilities and class names from a head."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dinov2_heads.backbone.vision_transformer import check_finite_images
from dinov2_heads.features.features import Features


@dataclass(frozen=True, eq=False)
class Prediction:
    """What one head predicts for a batch.

    Attributes:
        indices: (B, k) the top-k class indices, most probable first.
        scores: (B, k) their probabilities.
        probabilities: (B, K) every class's probability: softmax for single-label heads,
            sigmoid for multi-label heads.
        names: B lists of k class names for ``indices``, or ``None`` without class names.
        positives: (B, K) bool, multi-label heads only: probability >= threshold.
    """

    indices: Tensor
    scores: Tensor
    probabilities: Tensor
    names: list[list[str]] | None
    positives: Tensor | None = None

    @property
    def index(self) -> Tensor:
        """(B,) the most probable class of each sample."""
        return self.indices[:, 0]

    @property
    def label(self) -> list[str] | None:
        """B names of the most probable class, or ``None`` without class names."""
        return None if self.names is None else [row[0] for row in self.names]

    def positive_names(self, class_names: Sequence[str]) -> list[list[str]]:
        """Multi-label heads: the names of every class at or above the threshold, per sample."""
        if self.positives is None:
            raise ValueError("positive_names is for multi-label predictions; use .names")
        return [
            [class_names[i] for i in row.nonzero().flatten().tolist()] for row in self.positives
        ]


def predict_logits(
    logits: Tensor,
    *,
    class_names: Sequence[str] | None = None,
    top_k: int = 1,
    multi_label: bool = False,
    threshold: float = 0.5,
    name: str = "head",
    check_finite: bool = True,
) -> Prediction:
    """A :class:`Prediction` from logits (B, K).

    Args:
        logits: (B, K).
        class_names: K names in class index order, for ``Prediction.names``.
        top_k: How many classes to return per sample, most probable first.
        multi_label: Sigmoid probabilities and ``positives`` instead of a softmax.
        threshold: Multi-label decision threshold, a probability in [0, 1].
        name: The head's name, for error messages.
        check_finite: Refuse logits that hold NaN or infinity (their probabilities would be
            NaN, yet a class would still be named); ``False`` returns them as they are.

    Raises:
        ValueError: Logits of another shape, ``top_k`` out of range, a class-name count that
            is not K, a threshold outside [0, 1], or non-finite logits.
    """
    check_threshold(threshold)
    if logits.ndim != 2:
        raise ValueError(f"head {name!r}: expected logits (B, K), got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
        raise ValueError(
            f"head {name!r}: top_k must be between 1 and K = {num_classes}, got {top_k}"
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"head {name!r}: got {len(class_names)} class names for {num_classes} classes"
        )
    logits = logits.detach().float()
    if check_finite and not bool(torch.isfinite(logits).all()):
        rows = (~torch.isfinite(logits).all(dim=1)).nonzero().flatten().tolist()
        shown = ", ".join(str(i) for i in rows[:8]) + (", ..." if len(rows) > 8 else "")
        raise ValueError(
            f"head {name!r} gave NaN or infinite logits for samples {shown} of the batch, so "
            "their probabilities and classes mean nothing; the inputs or the head's weights "
            "hold NaN or infinity (pass check_finite=False to get them as they are)"
        )
    probabilities = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
    scores, indices = probabilities.topk(top_k, dim=-1)
    names = (
        None if class_names is None else [[class_names[i] for i in row] for row in indices.tolist()]
    )
    positives = probabilities >= threshold if multi_label else None
    return Prediction(indices, scores, probabilities, names, positives)


def predict(
    model: nn.Module,
    inputs: Features | Tensor,
    *,
    top_k: int = 1,
    multi_label: bool | Collection[str] = False,
    threshold: float = 0.5,
    class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    check_finite: bool = True,
) -> Prediction | dict[str, Prediction]:
    """Run a head (or a model ending in heads) in eval mode and read off its predictions.

    The model is switched to eval mode for the call (dropout off, BatchNorm running statistics)
    and restored afterwards; gradients are not recorded.

    Args:
        model: A head, a :class:`~dinov2_heads.heads.MultiHead`, or any module returning
            logits (B, K) or ``{name: logits}``, e.g. ``nn.Sequential(frozen_backbone, head)``.
        inputs: What ``model`` takes: :class:`Features`, or images for a model that starts
            with a backbone.
        top_k: Classes per sample, most probable first.
        multi_label: ``True`` for every head, or the names of the multi-label heads.
        threshold: Multi-label decision threshold, a probability in [0, 1].
        class_names: Names to use instead of those the heads carry (a sequence for one head,
            ``{head: names}`` for several).
        check_finite: Refuse images (a tensor input) and logits that hold NaN or infinity, at
            the cost of one reduction over each; ``False`` returns NaN probabilities as they
            come.

    Returns:
        A :class:`Prediction`, or ``{name: Prediction}`` when the model returns a mapping.

    Raises:
        ValueError: A threshold outside [0, 1], non-finite inputs or logits, or logits that
            do not fit the class names or ``top_k``.
    """
    check_threshold(threshold)
    if check_finite and isinstance(inputs, Tensor):
        check_finite_images(inputs, what="inputs")
    if isinstance(multi_label, str):
        multi_label = (multi_label,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(inputs)
    finally:
        model.train(was_training)
    if isinstance(outputs, Tensor):
        names = class_names if class_names is not None else getattr(model, "class_names", None)
        if isinstance(names, Mapping):
            raise TypeError("class_names for a single head must be a sequence, not a mapping")
        if not isinstance(multi_label, bool):
            # Head names mean nothing for one logits tensor; guessing would pick softmax or
            # sigmoid silently.
            raise TypeError(
                f"multi_label names {sorted(multi_label)} are for a model with named heads; "
                "this model returns one logits tensor, so pass multi_label=True or False"
            )
        return predict_logits(
            outputs,
            class_names=names,
            top_k=top_k,
            multi_label=multi_label,
            threshold=threshold,
            check_finite=check_finite,
        )
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"predict expects the model to return logits (B, K) or {{name: logits}}, "
            f"got {type(outputs).__name__}"
        )
    if class_names is not None and not isinstance(class_names, Mapping):
        raise TypeError("class_names for several heads must be a mapping {head: names}")
    if not isinstance(multi_label, bool):
        unknown = sorted(set(multi_label) - set(outputs))
        if unknown:
            raise ValueError(f"multi_label names {unknown} match no head of {sorted(outputs)}")
    carried = getattr(model, "class_names", None)
    results = {}
    for head, logits in outputs.items():
        names = (class_names or {}).get(head)
        if names is None and isinstance(carried, Mapping):
            names = carried.get(head)
        is_multi = multi_label is True or (
            not isinstance(multi_label, bool) and head in multi_label
        )
        results[head] = predict_logits(
            logits,
            class_names=names,
            top_k=top_k,
            multi_label=is_multi,
            threshold=threshold,
            name=head,
            check_finite=check_finite,
        )
    return results


def check_threshold(threshold: object) -> None:
    """Raise unless ``threshold`` is a probability in [0, 1] (sigmoid outputs never leave it)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if not (math.isfinite(float(threshold)) and 0.0 <= float(threshold) <= 1.0):
        raise ValueError(
            f"threshold must be a probability in [0, 1], got {threshold!r}: a sample is "
            "positive for a class when its sigmoid probability is at least the threshold, so "
            "a threshold above 1 marks nothing and one below 0 marks everything"
        )
