from __future__ import annotations

import json

import pytest

from tests.benchmarks.conftest import load_script

gpu_check = load_script("gpu_check")


def test_smoke_run_checks_accuracy_and_times_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    result = gpu_check.main(["--smoke", "--json"])
    assert json.loads(capsys.readouterr().out)["notes"] == result["notes"]
    modes = ["fp32", "autocast-fp16-plain", "autocast-fp16", "bf16-plain", "bf16", "fp16"]
    accuracy = result["accuracy"]
    assert [(row["variant"], row["mode"]) for row in accuracy] == [
        (variant, mode) for variant in ("dinov2_vits14", "dinov2_vitl14") for mode in modes
    ]
    for row in accuracy:
        assert row["class_finite"]
        assert row["patch_finite"]
        # Ours runs accelerated except in the -plain modes (1 block: the model, its patch
        # embedding, the block, its two norms, its MLP and the final norm); nothing fell back.
        assert row["fast_modules"] == (0 if row["mode"].endswith("-plain") else 7), row
        assert row["kernel_failures"] == []
        if row["mode"] == "fp32":
            assert row["class_rel"] == 0.0
            assert row["patch_rel"] == 0.0
        else:
            # Reduced precision is close to float32 but not equal to it.
            assert 0.0 < row["patch_rel"] < 0.05
            assert 0.0 < row["class_rel"] < 0.05
    throughput = result["throughput"]
    assert len(throughput) == 12
    assert all(row["error"] == "" and row["images_per_s"] > 0 for row in throughput)
    assert result["targets"] == []  # a smoke run is not compared with the H100 figures
    # The candidate speed-ups run on the same cases (CPU: no CUDA graph, no compilation), then
    # the small batch.
    candidates = [(r["variant"], r["batch"], r["candidate"]) for r in result["candidates"]]
    large = ["bf16", "fp8", "fp8-rowwise", "cudnn-attention", "fold-layerscale", "all"]
    assert candidates == [
        *(
            (variant, 2, candidate)
            for variant in ("dinov2_vits14", "dinov2_vitl14")
            for candidate in large
        ),
        ("dinov2_vits14", 1, "bf16"),
        ("dinov2_vits14", 1, "bf16-plain"),
    ]
    # Without FP8 matrix units the FP8 rows are skipped (their error checked, untimed).
    fp8 = [row for row in result["candidates"] if row["candidate"].startswith("fp8")]
    assert all(row["note"].startswith("skipped: needs compute capability 8.9+") for row in fp8)
    assert all(row["images_per_s"] is None and row["patch_rel"] > 0 for row in fp8)
    assert all(row["images_per_s"] > 0 for row in result["candidates"] if row not in fp8)
    assert any("smoke run" in note for note in result["notes"])


def test_targets_use_the_official_figure_of_the_same_run() -> None:
    bt = gpu_check.bt
    rows = []
    for implementation, mode, speed in [
        ("official", "autocast-fp16", 10_000.0),
        ("dinov2-heads", "bf16", 14_500.0),
        ("dinov2-heads", "compiled-bf16", 20_500.0),
    ]:
        row = bt.Row(implementation, "dinov2_vits14", mode, 224, 224, 256)
        row.images_per_s = speed
        rows.append(row)

    def goals() -> dict[str, dict[str, object]]:
        return {row["target_meaning"]: row for row in gpu_check.targets(rows)}

    first = goals()
    assert set(first) == {
        "1.4x official autocast (this run)",
        "official compiled (H100 reference)",
        "1.4x official autocast (H100 reference as is)",
    }
    assert first["1.4x official autocast (this run)"]["target"] == pytest.approx(14_000)
    assert first["1.4x official autocast (this run)"]["met"]
    assert first["official compiled (H100 reference)"]["target"] == 20_100
    assert first["official compiled (H100 reference)"]["met"]
    assert first["1.4x official autocast (H100 reference as is)"]["target"] == pytest.approx(
        1.4 * 11_700
    )
    assert not first["1.4x official autocast (H100 reference as is)"]["met"]
    # On an H200 the default path is also held against its figure before dinov2_heads.accel.
    on_h200 = {row["target_meaning"]: row for row in gpu_check.targets(rows, gpu="NVIDIA H200")}
    previous = on_h200["0.95x the default path before dinov2_heads.accel (23,014 on an H200)"]
    assert previous["target"] == pytest.approx(0.95 * 23_014)
    assert not previous["met"]
    assert set(on_h200) - set(first) == {previous["target_meaning"]}
    # No official figure in this run: timm's figure here scales the H100 reference.
    rows[0].implementation = "timm"
    scaled = goals()["1.4x official autocast (H100 reference x timm here / timm H100)"]
    assert scaled["target"] == pytest.approx(1.4 * 11_700 * 10_000 / 12_200)
    assert scaled["met"]
    # Neither: the H100 reference alone; and our plain-kernel autocast adds its own target.
    rows[0].implementation = "other"
    plain = bt.Row("dinov2-heads", "dinov2_vits14", "autocast-fp16-plain", 224, 224, 256)
    plain.images_per_s = 11_000.0
    rows.append(plain)
    last = goals()
    assert last["1.4x official autocast (H100 reference)"]["target"] == pytest.approx(1.4 * 11_700)
    assert last["1.4x autocast-fp16-plain, this run"]["target"] == pytest.approx(15_400)
    assert not last["1.4x autocast-fp16-plain, this run"]["met"]
