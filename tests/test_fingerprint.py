"""weights_fingerprint: stable, sensitive to every byte, blind to wrappers and devices."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from dinov2_heads.checkpoints import create_backbone
from dinov2_heads.fingerprint import tensor_bytes, weights_fingerprint


def _tiny() -> nn.Module:
    return create_backbone("dinov2_vits14", depth=1, embed_dim=32, num_heads=2, img_size=28)


def test_module_and_state_dict_agree_and_are_hex() -> None:
    model = _tiny()
    digest = weights_fingerprint(model)
    assert digest == weights_fingerprint(model.state_dict())
    assert len(digest) == 64
    int(digest, 16)


def test_same_weights_same_fingerprint_across_instances_and_key_order() -> None:
    torch.manual_seed(0)
    a = _tiny()
    b = _tiny()
    b.load_state_dict(a.state_dict())
    reversed_state = dict(reversed(list(a.state_dict().items())))
    assert weights_fingerprint(a) == weights_fingerprint(b) == weights_fingerprint(reversed_state)


def test_one_changed_value_changes_the_fingerprint() -> None:
    model = _tiny()
    before = weights_fingerprint(model)
    with torch.no_grad():
        # The last element of the largest tensor: a strided sample would likely miss it.
        largest = max(model.parameters(), key=lambda p: p.numel())
        largest.view(-1)[-1] += 1e-3
    assert weights_fingerprint(model) != before


def test_dtype_shape_and_name_count() -> None:
    state = {"w": torch.arange(6, dtype=torch.float32)}
    base = weights_fingerprint(state)
    assert weights_fingerprint({"w": state["w"].to(torch.float64)}) != base
    assert weights_fingerprint({"w": state["w"].reshape(2, 3)}) != base
    assert weights_fingerprint({"v": state["w"]}) != base


def test_wrapper_prefixes_are_ignored() -> None:
    state = {"blocks.0.weight": torch.ones(3), "norm.bias": torch.zeros(2)}
    ddp = {f"module.{k}": v for k, v in state.items()}
    compiled = {f"_orig_mod.{k}": v for k, v in state.items()}
    inner = {"blocks._orig_mod.0.weight": state["blocks.0.weight"], "norm.bias": state["norm.bias"]}
    expected = weights_fingerprint(state)
    assert weights_fingerprint(ddp) == expected
    assert weights_fingerprint(compiled) == expected
    assert weights_fingerprint(inner) == expected


def test_non_contiguous_tensors_hash_their_values() -> None:
    matrix = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert weights_fingerprint({"m": matrix.t()}) == weights_fingerprint(
        {"m": matrix.t().contiguous()}
    )


def test_non_tensor_entries_are_skipped() -> None:
    state = {"weight": torch.ones(2)}
    assert weights_fingerprint({**state, "_extra_state": ["cat", "dog"]}) == weights_fingerprint(
        state
    )


def test_tensor_bytes_match_the_raw_buffer() -> None:
    values = torch.tensor([1.0, -2.0], dtype=torch.float32)
    raw = bytes(tensor_bytes(values))
    assert raw == b"\x00\x00\x80\x3f\x00\x00\x00\xc0"
    assert hashlib.sha256(tensor_bytes(torch.empty(0))).hexdigest() == hashlib.sha256().hexdigest()


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module or a state dict"):
        weights_fingerprint([torch.ones(1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="meta device"):
        weights_fingerprint({"w": torch.empty(2, device="meta")})


def test_names_that_differ_only_by_a_wrapper_prefix_are_both_hashed() -> None:
    # A module with a child called "module" and a weight of its own: both "module.weight" and
    # "weight" would become "weight", and one of the two tensors would be left out.
    class Holder(nn.Module):
        def __init__(self, inner: float, outer: float) -> None:
            super().__init__()
            self.module = nn.Linear(1, 1, bias=False)
            self.weight = nn.Parameter(torch.full((1, 1), outer))
            nn.init.constant_(self.module.weight, inner)

    assert weights_fingerprint(Holder(1.0, 2.0)) != weights_fingerprint(Holder(3.0, 2.0))
    assert weights_fingerprint(Holder(1.0, 2.0)) != weights_fingerprint(Holder(1.0, 3.0))


def test_conjugate_and_negative_views_hash_their_values() -> None:
    values = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    assert weights_fingerprint({"w": values.conj()}) == weights_fingerprint(
        {"w": values.conj().resolve_conj()}
    )
    assert weights_fingerprint({"w": values.conj()}) != weights_fingerprint({"w": values})
    negated = torch._neg_view(torch.tensor([1.0, -2.0]))
    assert bytes(tensor_bytes(negated)) == bytes(tensor_bytes(torch.tensor([-1.0, 2.0])))
