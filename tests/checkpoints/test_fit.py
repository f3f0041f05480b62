"""The one comparison of a state dict with a module's, and the error of a misfit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinov2_heads.checkpoints import (
    ArchitectureMismatchError,
    ShapeMismatch,
    check_fit,
    compare_state_dicts,
)


def test_compare_sorts_every_name_into_one_kind() -> None:
    expected = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).state_dict()
    given = {
        "1.weight": torch.ones(3),
        "0.weight": torch.zeros(2, 4),
        "extra.bias": torch.zeros(1),
        "0.bias": torch.zeros(3),
    }
    fit = compare_state_dicts(expected, given)
    assert fit.matched == ("1.weight", "0.bias")  # in the state dict's order
    assert fit.mismatched == (ShapeMismatch("0.weight", (2, 4), (3, 4)),)
    assert fit.unexpected == ("extra.bias",)
    assert fit.missing == ("1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked")
    assert not fit.complete
    assert fit.describe() == [
        "shapes, the weights vs the model (1): 0.weight (2, 4) vs (3, 4)",
        "missing from the weights (4): 1.bias, 1.running_mean, 1.running_var, "
        "1.num_batches_tracked",
        "not in the model (1): extra.bias",
    ]
    assert compare_state_dicts(expected, expected).complete


def test_check_fit_raises_the_misfit_error_with_every_kind_named() -> None:
    expected = {"a": torch.zeros(2), "b": torch.zeros(3)}
    assert check_fit(expected, dict(expected), what="unused").complete
    many = {f"x{i}": torch.zeros(1) for i in range(9)}
    with pytest.raises(ArchitectureMismatchError) as caught:
        check_fit(
            expected,
            {"a": torch.zeros(5), **many},
            what="copy.bin does not fit copy.safetensors",
            fix="pass one of them",
            given_name="copy.bin",
            expected_name="copy.safetensors",
        )
    assert str(caught.value).splitlines() == [
        "copy.bin does not fit copy.safetensors:",
        "  shapes, copy.bin vs copy.safetensors (1): a (5,) vs (2,)",
        "  missing from copy.bin (1): b",
        "  not in copy.safetensors (9): x0, x1, x2, x3, x4, x5, ...",
        "  pass one of them",
    ]


def test_values_without_a_shape_compare_as_scalars() -> None:
    fit = compare_state_dicts(
        {"names": ["a", "b"], "t": torch.zeros(())}, {"names": ("a",), "t": 1}
    )
    assert fit.complete
