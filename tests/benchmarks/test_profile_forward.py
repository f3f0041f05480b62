from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script

profile_forward = load_script("profile_forward")


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("nvjet_sm90_tst_192x192_64x4_1x2_h_bz_coopB_gelubias_TNN", "matmul"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "attention"),
        ("void at::native::vectorized_layer_norm_kernel<c10::BFloat16>", "layer_norm"),
        ("_norm_kernel", "layer_norm"),
        ("void at::native::vectorized_elementwise_kernel<8, GeluCUDAKernelImpl>", "gelu"),
        ("void at::native::vectorized_elementwise_kernel<8, CUDAFunctor_add>", "elementwise"),
        ("Memset (Device)", "other"),
    ],
)
def test_kernel_names_fall_into_families(name: str, family: str) -> None:
    assert profile_forward.family(name) == family


def test_smoke_run_reports_time_per_family(capsys: pytest.CaptureFixture[str]) -> None:
    cases = profile_forward.main(["--smoke", "--candidates", "bf16", "fold+gelu", "--json"])
    assert json.loads(capsys.readouterr().out) == cases
    assert [case["candidate"] for case in cases] == ["bf16", "fold+gelu"]
    for case in cases:
        assert case["total_ms"] > 0
        assert sum(case["families_ms"].values()) == pytest.approx(case["total_ms"])
        assert case["families_ms"]["matmul"] > 0  # the linear layers are there
        assert case["top_kernels"]
    assert "LayerScales folded" in cases[1]["note"]
    table = profile_forward.format_case(cases[0])
    assert "| matmul |" in table
