from __future__ import annotations

import json

import pytest
import torch

from dinov2_heads import create_backbone
from dinov2_heads.layers import LayerScale
from tests.benchmarks.conftest import load_script

eager_speedups = load_script("eager_speedups")


def spread_model(ffn_layer: str = "mlp") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_backbone(
        "dinov2_vits14", depth=2, embed_dim=64, num_heads=2, img_size=56, ffn_layer=ffn_layer
    )
    eager_speedups._spread_weights(model)
    return model.eval()


@pytest.mark.parametrize("ffn_layer", ["mlp", "swiglufused"])
def test_folding_layer_scale_keeps_the_outputs(ffn_layer: str) -> None:
    model = spread_model(ffn_layer)
    images = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        before = model.forward_features(images)["x_norm_patchtokens"]
        assert eager_speedups.fold_layer_scale(model) == 4
        after = model.forward_features(images)["x_norm_patchtokens"]
    assert not any(isinstance(m, LayerScale) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_gelu_epilogue_on_cpu_is_the_exact_gelu() -> None:
    # On CPU torch._addmm_activation applies the exact (erf) GELU; on CUDA, cuBLASLt's epilogue
    # is the tanh approximation, whose effect the benchmark's error columns show.
    model = spread_model()
    images = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        for block in model.blocks:
            # Pre-activations of order 1, where the two GELUs differ by up to about 1e-3.
            block.mlp.fc1.weight.normal_(std=0.3)
        exact = model.forward_features(images)["x_norm_patchtokens"]
        assert eager_speedups.use_gelu_epilogue(model) == 2
        got = model.forward_features(images)["x_norm_patchtokens"]
        for block in model.blocks:
            del block.mlp.forward  # back to Mlp.forward, now with the tanh GELU
            block.mlp.act = torch.nn.GELU(approximate="tanh")
        tanh = model.forward_features(images)["x_norm_patchtokens"]
    torch.testing.assert_close(got, exact, atol=1e-5, rtol=0)
    assert not torch.allclose(got, tanh, atol=1e-4, rtol=0)


def test_smoke_run_times_every_candidate(capsys: pytest.CaptureFixture[str]) -> None:
    result = eager_speedups.main(["--smoke", "--json"])
    printed = json.loads(capsys.readouterr().out)["results"]
    assert [row["candidate"] for row in printed] == eager_speedups.CANDIDATES
    assert printed[0]["compile_s"] is None  # NaN is written as null
    rows = {row["candidate"]: row for row in result["results"]}
    assert list(rows) == eager_speedups.CANDIDATES
    assert rows["bf16"]["speedup"] == 1.0
    # On CPU the accelerated model computes what the plain one does.
    assert rows["bf16-plain"]["patch_rel"] == rows["bf16"]["patch_rel"]
    assert rows["cuda-graph"]["note"] == "needs CUDA"
    assert rows["fold-layerscale"]["note"] == "2 LayerScales folded"
    for name, row in rows.items():
        if name == "cuda-graph":
            continue
        assert row["images_per_s"] > 0, row
        # bf16 against float32: close, not equal.
        assert 0.0 < row["patch_rel"] < 0.05, row
        assert (row["compile_s"] is None) != name.startswith("compiled"), row
