"""load_partial: copies what matches, reports the rest, refuses silent no-ops."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from dinov2_heads.checkpoints import (
    CheckpointError,
    LoadReport,
    PartialLoadError,
    ShapeMismatch,
    load_partial,
)


class Neck(nn.Module):
    """The blog's neck layout: conv + BatchNorm blocks and a linear layer."""

    def __init__(self, patches: int = 4, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Sequential()
        self.conv1.conv = nn.Conv1d(patches, patches, 1, bias=False)
        self.conv1.bn = nn.BatchNorm1d(patches)
        self.linear = nn.Linear(2 * dim, classes)


class BlogModel(nn.Module):
    """The blog's three-head model: one backbone under two names, three heads."""

    def __init__(self, classes: tuple[int, int, int] = (3, 5, 7)) -> None:
        super().__init__()
        self.base = nn.Linear(6, 6)
        self.feature_model = nn.Module()
        self.feature_model.feature_model = self.base
        self.country_cls = Neck(classes=classes[0])
        self.cn_cls = Neck(classes=classes[1])
        self.ct_cls = Neck(classes=classes[2])


class NewModel(nn.Module):
    def __init__(self, classes: tuple[int, int, int] = (3, 5, 7)) -> None:
        super().__init__()
        self.backbone = nn.Linear(6, 6)
        self.heads = nn.ModuleDict(
            {
                "country": Neck(classes=classes[0]),
                "cn": Neck(classes=classes[1]),
                "ct": Neck(classes=classes[2]),
            }
        )


def trained_blog_model() -> BlogModel:
    model = BlogModel()
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
            else:
                tensor.fill_(17)
    return model


BLOG_RENAME = {
    "base.": "backbone.",
    "feature_model.feature_model.": None,
    "country_cls.": "heads.country.",
    "cn_cls.": "heads.cn.",
    "ct_cls.": "heads.ct.",
}


def test_migrates_the_blog_three_head_model(tmp_path: Path) -> None:
    old = trained_blog_model()
    path = tmp_path / "blog.pth"
    torch.save(old.state_dict(), path)
    new = NewModel()
    report = load_partial(new, path, rename=BLOG_RENAME, strict=True)
    assert report.complete
    assert len(report.loaded) == len(new.state_dict())
    assert report.dropped == (
        "feature_model.feature_model.weight",
        "feature_model.feature_model.bias",
    )
    assert torch.equal(new.backbone.weight, old.base.weight)
    for mine, theirs in (("country", old.country_cls), ("ct", old.ct_cls)):
        head = new.heads[mine]
        assert torch.equal(head.linear.weight, theirs.linear.weight)
        # BatchNorm statistics are buffers and count like parameters.
        assert torch.equal(head.conv1.bn.running_var, theirs.conv1.bn.running_var)
        assert int(head.conv1.bn.num_batches_tracked) == 17


def test_skips_and_reports_mismatched_missing_and_unexpected() -> None:
    old = trained_blog_model()
    new = NewModel(classes=(3, 9, 7))
    before = new.heads["cn"].linear.weight.clone()
    rename = {"base.": "backbone.", "country_cls.": "heads.country.", "cn_cls.": "heads.cn."}
    report = load_partial(new, old, rename=rename)
    assert set(report.mismatched) == {
        ShapeMismatch("heads.cn.linear.weight", (5, 12), (9, 12)),
        ShapeMismatch("heads.cn.linear.bias", (5,), (9,)),
    }
    assert torch.equal(new.heads["cn"].linear.weight, before)
    assert all(name.startswith("heads.ct.") for name in report.missing)
    assert "ct_cls.linear.weight" in report.unexpected
    assert "feature_model.feature_model.weight" in report.unexpected
    assert not report.complete
    assert report.skipped == len(report.missing) + len(report.unexpected) + 2
    assert torch.equal(new.heads["country"].linear.bias, old.country_cls.linear.bias)


def test_report_prints_a_table_and_is_plain_data() -> None:
    report = load_partial(NewModel(classes=(4, 5, 7)), trained_blog_model(), rename=BLOG_RENAME)
    text = str(report)
    assert text.splitlines()[0] == report.summary()
    assert "mismatched  heads.country.linear.weight" in text
    assert "(3, 12) vs (4, 12)" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["mismatched"][0] == {
        "name": "heads.country.linear.weight",
        "checkpoint_shape": [3, 12],
        "module_shape": [4, 12],
    }
    assert len(data["loaded"]) == len(report.loaded)


def test_logs_summary_at_info_and_skipped_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dinov2_heads.checkpoints.partial"):
        load_partial(NewModel(), trained_blog_model(), rename={"base.": "backbone."})
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("load_partial: loaded 2, missing") for m in infos)
    assert any("unexpected" in m and "feature_model.feature_model.weight" in m for m in warnings)
    assert any("missing" in m and "heads.country.linear.weight" in m for m in warnings)


def test_nothing_loaded_is_an_error_that_suggests_the_prefix() -> None:
    new = NewModel()
    before = {k: v.clone() for k, v in new.state_dict().items()}
    with pytest.raises(PartialLoadError, match=r"nothing was loaded") as caught:
        load_partial(new, trained_blog_model().country_cls)
    assert "try rename={'': 'heads.c" in str(caught.value)
    for key, value in new.state_dict().items():
        assert torch.equal(value, before[key])


def test_nothing_loaded_when_only_shapes_differ_names_the_shapes() -> None:
    with pytest.raises(PartialLoadError, match=r"another model size"):
        load_partial(nn.Linear(4, 4), nn.Linear(3, 3))


def test_strict_refuses_before_copying_anything() -> None:
    new = NewModel()
    before = new.backbone.weight.clone()
    with pytest.raises(PartialLoadError, match=r"strict load refused") as caught:
        load_partial(new, trained_blog_model(), rename={"base.": "backbone."}, strict=True)
    assert "unexpected  cn_cls.linear.weight" in str(caught.value)
    assert torch.equal(new.backbone.weight, before)


def test_rename_function_and_dropping() -> None:
    old = trained_blog_model()

    def rename(name: str) -> str | None:
        if name.startswith("feature_model."):
            return None
        return name.replace("base.", "backbone.", 1) if name.startswith("base.") else name

    report = load_partial(NewModel(), old, rename=rename)
    assert report.loaded == ("backbone.weight", "backbone.bias")
    assert len(report.dropped) == 2


def test_longest_prefix_wins() -> None:
    source = {"a.b.weight": torch.ones(2), "a.weight": torch.zeros(2)}
    target = nn.Module()
    target.x = nn.Module()
    target.x.weight = nn.Parameter(torch.full((2,), 5.0))
    target.y = nn.Module()
    target.y.weight = nn.Parameter(torch.full((2,), 5.0))
    report = load_partial(target, source, rename={"a.": "x.", "a.b.": "y."}, strict=True)
    assert report.complete
    assert torch.equal(target.y.weight, torch.ones(2))
    assert torch.equal(target.x.weight, torch.zeros(2))


def test_rename_collision_is_an_error() -> None:
    with pytest.raises(CheckpointError, match=r"maps both 'base.weight' and"):
        load_partial(
            NewModel(),
            trained_blog_model(),
            rename={"base.": "backbone.", "feature_model.feature_model.": "backbone."},
        )


@pytest.mark.parametrize(
    ("rename", "error"),
    [({"base.": 3}, TypeError), ({1: "x"}, TypeError), ("base.", TypeError)],
)
def test_bad_rename_types(rename: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"rename"):
        load_partial(NewModel(), trained_blog_model(), rename=rename)  # type: ignore[arg-type]


def test_bad_source_type() -> None:
    with pytest.raises(TypeError, match=r"checkpoint path, a state dict or an nn.Module"):
        load_partial(NewModel(), 42)  # type: ignore[arg-type]


def test_unwraps_containers_and_wrapper_prefixes() -> None:
    source = nn.Linear(3, 2)
    wrapped = {
        "model": {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()},
        "epoch": 7,
    }
    target = nn.Linear(3, 2)
    report = load_partial(target, wrapped, strict=True)
    assert report.unwrapped == (
        "took 'model' out of its container (also held: epoch)",
        "stripped the prefix 'module.' from every name",
        "stripped the prefix '_orig_mod.' from every name",
    )
    assert torch.equal(target.weight, source.weight)


def test_half_precision_checkpoint_is_upcast() -> None:
    source = nn.Linear(3, 2).half()
    target = nn.Linear(3, 2)
    report = load_partial(target, source.state_dict())
    assert target.weight.dtype == torch.float32
    assert torch.equal(target.weight, source.weight.float())
    assert set(report.cast) == {"weight", "bias"}


def test_nonfinite_tensors_are_loaded_named_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    state = {"weight": torch.tensor([[1.0, float("nan")]]), "bias": torch.tensor([float("inf")])}
    target = nn.Linear(2, 1)
    with caplog.at_level(logging.WARNING):
        report = load_partial(target, state)
    assert report.nonfinite == ("weight", "bias")
    assert "NaN or inf: weight, bias" in caplog.text


def test_non_tensor_value_is_an_error() -> None:
    with pytest.raises(CheckpointError, match=r"'bias' \(str\)"):
        load_partial(nn.Linear(2, 1), {"weight": torch.zeros(1, 2), "bias": "zero"})


def test_report_is_a_frozen_value() -> None:
    report = LoadReport(loaded=("a",), missing=(), unexpected=(), mismatched=())
    assert report.complete
    with pytest.raises(AttributeError):
        report.loaded = ()  # type: ignore[misc]


def test_class_names_travel_through_load_partial() -> None:
    from dinov2_heads import LinearHead, MultiHead

    named = MultiHead({"brand": LinearHead(8, 3, class_names=["a", "b", "c"])})
    unnamed = MultiHead({"brand": LinearHead(8, 3)})
    report = load_partial(unnamed, named.state_dict(), strict=True)
    assert "brand._extra_state" in report.loaded
    assert unnamed["brand"].class_names == ("a", "b", "c")
    assert torch.equal(unnamed["brand"].weight, named["brand"].weight)

    # A file without names keeps the module's names and is complete.
    plain = {k: v for k, v in named.state_dict().items() if not k.endswith("_extra_state")}
    report = load_partial(unnamed, plain, strict=True)
    assert report.complete
    assert unnamed["brand"].class_names == ("a", "b", "c")

    # Different names are refused and nothing is copied.
    other = MultiHead({"brand": LinearHead(8, 3, class_names=["x", "y", "z"])})
    before = unnamed["brand"].weight.detach().clone()
    with pytest.raises(ValueError, match="class names differ"):
        load_partial(unnamed, other.state_dict())
    assert torch.equal(unnamed["brand"].weight, before)


def test_extra_state_without_an_owner_is_unexpected() -> None:
    module = torch.nn.Linear(2, 2)
    state = {**module.state_dict(), "_extra_state": torch.zeros(3, dtype=torch.uint8)}
    report = load_partial(module, state)
    assert report.unexpected == ("_extra_state",)


@pytest.mark.parametrize("wrap", ["compile", "data_parallel", "both"])
def test_loads_through_compile_and_data_parallel_wrappers(wrap: str) -> None:
    # The wrappers add "_orig_mod." / "module." to the target's names; before, nothing matched
    # and the user had to pass rename={"": "_orig_mod."}.
    torch.manual_seed(0)
    source, target = nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 4))
    wrapped: nn.Module = target
    if wrap in ("compile", "both"):
        wrapped = torch.compile(wrapped, backend="eager")  # type: ignore[assignment]
    if wrap in ("data_parallel", "both"):
        wrapped = nn.DataParallel(wrapped)
    report = load_partial(wrapped, source.state_dict(), strict=True)
    assert sorted(report.loaded) == ["0.bias", "0.weight"]
    assert torch.equal(target[0].weight, source[0].weight)
