from __future__ import annotations

import json
import time

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
    small = eager_speedups.SMALL_BATCH_CANDIDATES
    assert [(row["batch"], row["candidate"]) for row in printed] == [
        *((2, c) for c in eager_speedups.CANDIDATES),
        *((1, c) for c in small),
    ]
    assert printed[0]["compile_s"] is None  # NaN is written as null
    rows = {row["candidate"]: row for row in result["results"] if row["batch"] == 2}
    assert list(rows) == eager_speedups.CANDIDATES
    assert rows["bf16"]["speedup"] == 1.0
    # On CPU the accelerated model computes what the plain one does.
    assert rows["bf16-plain"]["patch_rel"] == rows["bf16"]["patch_rel"]
    assert rows["cuda-graph"]["note"] == "needs CUDA"
    assert rows["fold-layerscale"]["note"] == "2 LayerScales folded"
    for name, row in rows.items():
        if name == "cuda-graph":
            continue
        # bf16 against float32: close, not equal (FP8 further off).
        assert 0.0 < row["patch_rel"] < (0.1 if name in eager_speedups.FP8 else 0.05), row
        if name in eager_speedups.FP8:
            continue
        assert row["images_per_s"] > 0, row
        assert (row["compile_s"] is None) != (name in eager_speedups.COMPILED), row
    # Without FP8 matrix units the FP8 rows say they were skipped; the smoke run still swaps
    # the layers and computes their error through the float32 stand-in, untimed.
    for name, scales in (("fp8", "per-tensor"), ("fp8-rowwise", "per-token and per-channel")):
        row = rows[name]
        assert row["note"] == (
            "skipped: needs compute capability 8.9+; smoke run: 4 linear layers in FP8 e4m3, "
            f"{scales} scales, float32 stand-in, untimed"
        )
        assert row["images_per_s"] is None
        assert row["speedup"] is None
        # FP8 keeps 3 mantissa bits to bf16's 8: further from float32 than bf16.
        assert row["patch_rel"] > rows["bf16"]["patch_rel"]
    # The compiled rows count the Triton kernel launches of a pass: none on CPU.
    for name in eager_speedups.COMPILED:
        assert rows[name]["note"].endswith("0 Triton norm kernel launches per pass"), name
    # The small batch: the default path against PyTorch's kernels and a CUDA graph.
    small_rows = {row["candidate"]: row for row in result["results"] if row["batch"] == 1}
    assert small_rows["bf16"]["images_per_s"] > 0
    assert small_rows["cuda-graph"]["note"] == "needs CUDA"


def test_smoke_run_can_leave_out_the_small_batches() -> None:
    result = eager_speedups.main(
        ["--smoke", "--skip-small-batches", "--candidates", "bf16", "fold-layerscale"]
    )
    assert [(r["batch"], r["candidate"]) for r in result["results"]] == [
        (2, "bf16"),
        (2, "fold-layerscale"),
    ]


# ---------------------------------------------------------------------------- FP8


@pytest.mark.parametrize("rowwise", [False, True])
def test_fp8_quantisation_fills_the_e4m3_range(rowwise: bool) -> None:
    t = torch.randn(6, 32) * torch.logspace(-2, 2, 6)[:, None]  # rows of very different sizes
    quantized, scale = eager_speedups.quantize_fp8(t, rowwise)
    assert quantized.dtype == torch.float8_e4m3fn
    assert scale.dtype == torch.float32
    assert scale.shape == ((6, 1) if rowwise else ())
    # The largest magnitude (of each row, or of all) lands on e4m3's largest value, 448.
    peaks = quantized.float().abs().amax(dim=-1 if rowwise else None)
    assert torch.all(peaks == 448.0)
    # About 3 mantissa bits: every value within 1/16 of itself, after scaling back. Per-tensor
    # scales push the small rows towards e4m3's subnormals, where the relative error grows.
    back = quantized.float() * scale
    if rowwise:
        torch.testing.assert_close(back, t, rtol=1 / 16, atol=1e-6 * t.abs().amax())
    else:
        big = t.abs() > 1.0
        torch.testing.assert_close(back[big], t[big], rtol=1 / 16, atol=0.0)


def test_fp8_quantisation_clamps_to_the_range() -> None:
    # A scale computed elsewhere (a weight's scale, say) must not turn large values into NaN.
    quantized, scale = eager_speedups.quantize_fp8(torch.tensor([[1.0, -2.0, 3.0]]), False)
    clamped = (torch.tensor([[9.0, -9.0]]) / scale).clamp(-448.0, 448.0)
    assert torch.isfinite(clamped.to(torch.float8_e4m3fn).float()).all()
    assert quantized.float().abs().max() == 448.0


@pytest.mark.parametrize("rowwise", [False, True])
def test_the_float32_stand_in_matches_scaled_mm_where_it_runs(rowwise: bool) -> None:
    a, scale_a = eager_speedups.quantize_fp8(torch.randn(8, 32), rowwise)
    w, scale_w = eager_speedups.quantize_fp8(torch.randn(16, 32), rowwise)
    scale_b = scale_w.reshape(1, -1) if rowwise else scale_w
    bias = torch.randn(16).bfloat16()
    got = eager_speedups.emulated_scaled_mm(a, w.t(), scale_a, scale_b, bias)
    assert got.dtype == torch.bfloat16
    want = (a.float() * scale_a) @ (w.float() * scale_w).t() + bias.float()
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)
    try:  # torch's own kernel, on CPU where this torch has one
        real = torch._scaled_mm(
            a, w.t(), scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=torch.bfloat16
        )
    except (RuntimeError, NotImplementedError):
        return
    torch.testing.assert_close(got.float(), real.float(), rtol=1e-2, atol=2e-2)


def test_use_fp8_swaps_the_four_linear_layers_of_each_block() -> None:
    model = spread_model().bfloat16()
    images = torch.randn(2, 3, 28, 42).bfloat16()
    with torch.no_grad():
        want = model.forward_features(images)["x_norm_patchtokens"].float()
        count = eager_speedups.use_fp8(
            model,
            rowwise=True,
            quantize=eager_speedups.quantize_fp8,
            matmul=eager_speedups.emulated_scaled_mm,
        )
        got = model.forward_features(images)["x_norm_patchtokens"].float()
    assert count == 2 * 4
    for block in model.blocks:
        for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            assert isinstance(layer, eager_speedups.Fp8Linear)
            assert layer.weight.dtype == torch.float8_e4m3fn
            assert layer.bias_in_product
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    relative = float((got - want).norm() / want.norm())
    assert 0.0 < relative < 0.1  # FP8 rounding: close to bf16, not equal


def test_fp8_linear_adds_the_bias_after_a_product_that_refuses_it() -> None:
    linear = torch.nn.Linear(32, 16)
    calls: list[bool] = []

    def no_bias_matmul(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append(len(args) > 4)
        if len(args) > 4:
            raise RuntimeError("bias is not supported with this scaling")
        return eager_speedups.emulated_scaled_mm(*args, **kwargs)  # type: ignore[arg-type]

    layer = eager_speedups.Fp8Linear(
        linear, rowwise=False, quantize=eager_speedups.quantize_fp8, matmul=no_bias_matmul
    )
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        got = layer(x)
        again = layer(x)
        want = linear(x)
    assert calls == [True, False, False]  # tried once with the bias, then never again
    assert not layer.bias_in_product
    assert got.shape == (3, 5, 16)
    assert torch.equal(got, again)
    torch.testing.assert_close(got, want, rtol=0.1, atol=0.1)


def test_candidates_that_cannot_start_in_time_say_so() -> None:
    # 60 s left: the eager candidates start, a compiled one (needing 75 s in hand) does not.
    rows = eager_speedups.run_case(
        "dinov2_vits14",
        1,
        candidates=["bf16", "compiled-static", "fold-layerscale"],
        device=torch.device("cpu"),
        size=(28, 28),
        overrides={"depth": 1, "img_size": 56},
        warmup=0,
        iters=1,
        compile_backend="eager",
        log=lambda text: None,
        deadline=time.monotonic() + 60.0,
        compile_reserve_s=75.0,
    )
    notes = {row.candidate: row.note for row in rows}
    assert notes["compiled-static"] == "skipped: out of time budget"
    assert rows[0].images_per_s > 0
    assert rows[2].images_per_s > 0
    assert notes["fold-layerscale"] == "2 LayerScales folded"
