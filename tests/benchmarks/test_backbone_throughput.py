from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.accel import FastVisionTransformer
from dinov2_heads.backbone import get_config
from dinov2_heads.layers import swiglu_hidden_features
from tests.benchmarks.conftest import load_script, write_stand_in_checkout

bt = load_script("backbone_throughput")

TINY = ["--depth", "1", "--sizes", "28x42", "--batch-sizes", "2", "--warmup", "0", "--iters", "2"]


def test_flops_of_vit_l_match_the_published_figure() -> None:
    # 2,680 images/s at about 434 TFLOP/s on an H100 means about 162 GFLOP per image.
    flops = bt.vit_forward_flops(get_config("dinov2_vitl14"), 224, 224)
    assert flops == pytest.approx(162.0e9, rel=1e-3)
    assert 2680 * flops / 1e12 == pytest.approx(434, rel=0.01)


def test_flops_formula_term_by_term() -> None:
    config = get_config("dinov2_vitg14_reg").replace(depth=1)
    t, n, d = 1 + 4 + 9 * 18, 9 * 18, 1536
    f = swiglu_hidden_features(4 * d)
    expected = 2 * n * 3 * 14 * 14 * d + (8 * t * d * d + 4 * t * t * d + 6 * t * d * f)
    assert bt.vit_forward_flops(config, 126, 252) == expected
    small = get_config("dinov2_vits14").replace(depth=2)
    t, n, d = 1 + 256, 256, 384
    per_block = 8 * t * d * d + 4 * t * t * d + 16 * t * d * d
    assert bt.vit_forward_flops(small, 224, 224) == 2 * n * 588 * d + 2 * per_block


def test_tiny_cpu_run_prints_rows_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    bt.main([*TINY, "--modes", "fp32", "bf16", "--json"])
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [(r["implementation"], r["mode"]) for r in rows] == [
        ("dinov2-heads", "fp32"),
        ("dinov2-heads", "bf16"),
    ]
    for row in rows:
        assert row["error"] == ""
        assert row["iters"] == 2
        assert row["images_per_s"] > 0
        assert row["images_per_s"] == pytest.approx(2 / (row["median_ms"] / 1e3))
        expected_tflops = row["gflop_per_image"] * 1e9 * row["images_per_s"] / 1e12
        assert row["tflops"] == pytest.approx(expected_tflops)
        assert row["memory"] == "RSS growth"
        assert row["peak_mib"] >= 0
    assert result["environment"]["device"] == "cpu"


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    bt.main([*TINY, "--iters", "1"])
    out = capsys.readouterr().out
    assert "| dinov2-heads | dinov2_vits14 | 28x42 | 2 | fp32 |" in out
    assert "median of 1 after 0 warm-up" in out


def test_size_parsing() -> None:
    assert bt.parse_size("224") == (224, 224)
    assert bt.parse_size("126x252") == (126, 252)
    for bad in ["", "0", "12x", "axb", "1x2x3"]:
        with pytest.raises(argparse.ArgumentTypeError, match="expected a size"):
            bt.parse_size(bad)
    with pytest.raises(SystemExit, match="not a multiple of the patch size"):
        bt.main(["--sizes", "125"])


@pytest.fixture
def forget_dinov2() -> Iterator[None]:
    yield
    for name in [m for m in sys.modules if m == "dinov2" or m.startswith("dinov2.")]:
        del sys.modules[name]


def test_compare_official_without_a_checkout_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bt.main([*TINY, "--iters", "1", "--compare-official", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert {r["implementation"] for r in result["rows"]} == {"dinov2-heads"}
    assert "official DINOv2 not timed: no dinov2/models/vision_transformer.py" in captured.err
    assert result["notes"][0].startswith("official DINOv2 not timed")


def test_compare_official_times_both_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forget_dinov2: None
) -> None:
    checkout = write_stand_in_checkout(tmp_path)
    bt.main([*TINY, "--iters", "1", "--compare-official", str(checkout), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [r["implementation"] for r in result["rows"]] == ["dinov2-heads", "official"]
    assert all(r["error"] == "" for r in result["rows"])
    assert result["notes"][0].startswith("official DINOv2 from")
    # The same weights are loaded into both, so the stand-in agrees exactly.
    assert result["notes"][1].endswith("fp32 max |ours - official| = 0.00e+00")


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
def test_our_model_runs_accelerated_except_in_the_plain_and_compiled_modes() -> None:
    cpu = torch.device("cpu")
    for mode, accelerated in [
        ("fp32", True),
        ("bf16", True),
        ("bf16-plain", False),
        ("autocast-fp16-plain", False),
        ("compiled-bf16", False),
    ]:
        model = create_backbone("dinov2_vits14", depth=1)
        bt.prepare(model, bt.MODES[mode], cpu, ours=True)
        assert (type(model) is FastVisionTransformer) == accelerated, mode
    # Another implementation is timed as it is.
    model = create_backbone("dinov2_vits14", depth=1)
    bt.prepare(model, bt.MODES["bf16"], cpu)
    assert type(model) is not FastVisionTransformer
