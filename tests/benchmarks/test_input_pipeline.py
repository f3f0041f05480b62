from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from dinov2_heads.data import ImageFolderDataset, Preprocess
from tests.benchmarks.conftest import load_script

ip = load_script("input_pipeline")


@pytest.fixture(scope="module")
def smoke() -> dict[str, Any]:
    result: dict[str, Any] = ip.main(["--smoke", "--json"])
    return result


def test_smoke_run_measures_both_decodings_and_the_extraction(smoke: dict[str, Any]) -> None:
    assert json.loads(json.dumps(smoke)) == smoke  # what --json prints
    environment = smoke["environment"]
    assert environment["device"] == "cpu"
    assert {"date", "torch", "pillow", "cpus_available"} <= environment.keys()
    decoding = {(row["size"], row["draft"]): row for row in smoke["decoding"]}
    assert set(decoding) == {(s, d) for s in ("120x90", "800x600") for d in (False, True)}
    for row in decoding.values():
        assert row["photos"] == 2
        assert row["images_per_s"] > 0
        assert row["decode_images_per_s"] > 0
        assert len(row["rates"]) == len(row["decode_rates"]) == 2
        assert row["images_per_s"] == pytest.approx(statistics.median(row["rates"]))
    # 800x600 for a 341x256 resize: decoded at half size, a few grey levels away.
    assert decoding[("800x600", True)]["decoded"] == "400x300"
    assert decoding[("800x600", False)]["decoded"] == "800x600"
    assert 0 < decoding[("800x600", True)]["max_levels"] <= 16
    assert 0 < decoding[("800x600", True)]["feature_rel_diff"] < 0.1
    on, off = decoding[("800x600", True)], decoding[("800x600", False)]
    ratios = [mine / theirs for mine, theirs in zip(on["rates"], off["rates"], strict=True)]
    assert on["speedup"] == pytest.approx(statistics.median(ratios))
    # 120x90 is smaller than the resize: decoded as it is, the same pixels.
    small = decoding[("120x90", True)]
    assert (small["decoded"], small["max_levels"], small["feature_rel_diff"]) == ("120x90", 0, 0)

    rows = smoke["extraction"]
    assert [(row["arch"], row["size"], row["draft"], row["handoff"]) for row in rows] == [
        ("dinov2_vits14", size, True, handoff)
        for size in ("120x90", "800x600")
        for handoff in ("float32", "uint8")
    ]
    for row in rows:
        assert row["error"] == ""
        assert row["images"] == 6  # the 4 files, and 2 of them again
        assert row["batch"] == 2
        # Two images of 224x224: a quarter of the bytes as uint8.
        assert row["batch_bytes"] == 2 * 3 * 224 * 224 * (4 if row["handoff"] == "float32" else 1)
        (backbone,) = row["backbone_rates"]  # one run, with its own backbone-only figure
        (extraction,) = row["extract_rates"]
        assert row["backbone_images_per_s"] == backbone
        assert row["extract_images_per_s"] == extraction
        assert row["ratio"] == pytest.approx(extraction / backbone)
        assert len(row["steady_ratios"]) == 1
        assert 0 <= row["loader_share"] <= 1
        assert row["verdict"] in ("loader-bound", "backbone-bound")


def test_the_handoffs_are_compared_in_the_same_runs(smoke: dict[str, Any]) -> None:
    extraction = {(row["size"], row["handoff"]): row for row in smoke["extraction"]}
    compared = smoke["handoff"]
    assert [row["size"] for row in compared] == ["120x90", "800x600"]
    for row in compared:
        floats, pixels = extraction[(row["size"], "float32")], extraction[(row["size"], "uint8")]
        # Each run measured both against the same backbone-only figure.
        assert floats["backbone_rates"] == pixels["backbone_rates"]
        assert row["float32_images_per_s"] == floats["extract_images_per_s"]
        assert row["uint8_images_per_s"] == pixels["extract_images_per_s"]
        assert row["speedups"] == [pixels["extract_rates"][0] / floats["extract_rates"][0]]
        assert row["speedup"] == pytest.approx(statistics.median(row["speedups"]))
        assert row["float32_batch_bytes"] == 4 * row["uint8_batch_bytes"]
        # The loader alone, once per hand-off in the one run.
        (floats_read,) = row["float32_loader_rates"]
        (pixels_read,) = row["uint8_loader_rates"]
        assert row["float32_loader_images_per_s"] == floats_read > 0
        assert row["uint8_loader_images_per_s"] == pixels_read > 0
        assert row["loader_speedup"] == pytest.approx(pixels_read / floats_read)
        assert row["float32_prepare_ms"] > 0
        assert row["uint8_prepare_ms"] > 0
        # The copy to a GPU is measured on CUDA only, and reported as not measured here.
        assert row["float32_copy_ms"] is None
        assert row["uint8_copy_gb_per_s"] is None
    with pytest.raises(ValueError, match="measured on CUDA, not on cpu"):
        ip.copy_ms(2, (28, 28), "uint8", torch.device("cpu"), iters=1)


def test_one_handoff_gives_no_comparison() -> None:
    result = ip.main(
        ["--smoke", "--json", "--skip-decode", "--sizes", "120x90", "--handoff", "uint8"]
    )
    assert [row["handoff"] for row in result["extraction"]] == ["uint8"]
    assert result["extraction"][0]["error"] == ""
    assert result["handoff"] == []


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    ip.main(["--smoke", "--skip-extraction", "--sizes", "800x600"])
    out = capsys.readouterr().out
    assert "Pillow" in out
    assert "| 800x600 |" in out
    assert "| on | 400x300 |" in out
    assert "Extraction" not in out


def test_photos_are_repeatable_and_copied(tmp_path: Path) -> None:
    a = ip.synthetic_photo(64, 48, seed=3)
    b = ip.synthetic_photo(64, 48, seed=3)
    assert a.size == (64, 48)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != ip.synthetic_photo(64, 48, seed=4).tobytes()
    paths = ip.write_photos(tmp_path, (64, 48), count=5, distinct=2)
    assert [p.name for p in paths] == [f"{i:06d}.jpg" for i in range(5)]
    assert paths[2].read_bytes() == paths[0].read_bytes()
    assert paths[1].read_bytes() != paths[0].read_bytes()


def test_photo_sizes_are_width_by_height() -> None:
    assert ip.parse_photo_size("4000x3000") == (4000, 3000)
    for bad in ["4000", "0x10", "ax3", "1x2x3"]:
        with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
            ip.parse_photo_size(bad)


def test_cuda_is_refused_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="no CUDA device"):
        ip.main(["--device", "cuda", "--smoke"])


def test_repeated_samples_cycle_through_the_files(tmp_path: Path) -> None:
    ip.write_photos(tmp_path / "folder", (64, 48), count=3, distinct=3)
    dataset = ImageFolderDataset(tmp_path / "folder", Preprocess(resize=(28, 28)))
    samples = ip.repeated(dataset, 7)
    assert len(samples) == 7
    assert torch.equal(samples[4][0], dataset[1][0])
    assert torch.equal(samples[6][0], dataset[0][0])


def test_handoff_table(smoke: dict[str, Any]) -> None:
    rows = [
        ip.HandoffRow(**{k: float("nan") if v is None else v for k, v in row.items()})
        for row in smoke["handoff"]
    ]
    table = ip.format_handoff_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert "| uint8 / float32 |" in table[0]
    # 2 x 3 x 224 x 224 bytes: 294 KB as uint8, 4 times as float32; no copy measured on CPU.
    assert table[2].startswith("| dinov2_vits14 | 120x90 | on | ")
    assert "| 1,176 / 294 |" in table[2]
    assert table[2].endswith("| - / - | - / - |")
