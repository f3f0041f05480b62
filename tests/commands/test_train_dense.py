"""``extract --masks / --depths``, then ``train``: segmentation and depth heads, command line.

Each run goes through ``main([...])`` on synthetic vehicles (part masks) and street scenes
(depth maps) written here, with the one-block 64-wide backbone of the conftest. The trained
heads are checked against what the library computes from the same store, and the command line
against the Python cached-training path with the same seed.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dinov2_heads.cache import FeatureStore
from dinov2_heads.cli import main
from dinov2_heads.data import load_mask
from dinov2_heads.demo import PARTS, SyntheticDepthPairs, SyntheticVehicles
from dinov2_heads.dense import SegmentationLoss
from dinov2_heads.export import load_heads
from dinov2_heads.heads import DepthLoss, LinearDepthHead, LinearSegmentationHead
from dinov2_heads.training import resize_dense_output, train_one_epoch

from .conftest import SIZE, Files

NUM_IMAGES = 12


@pytest.fixture(scope="module")
def data(files: Files, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Part masks and depth maps of 12 synthetic 28x56 images, and a store of each."""
    root = tmp_path_factory.mktemp("dense")
    vehicles = SyntheticVehicles(NUM_IMAGES, seed=0, size=SIZE)
    parts = vehicles.write_parts(root / "parts")
    scenes = SyntheticDepthPairs(vehicles, fog=6.0).write_folders(root / "scenes", scale="kitti")
    common = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--num-workers", "0"]
    # float32 tokens: the stored features equal what segment and depth compute from the images.
    exact = ["--dtype", "float32"]
    masks, depths = root / "parts-store", root / "depth-store"
    names = ["--class-names", ",".join(PARTS)]
    assert main([*common, *exact, "--out", str(masks), "--masks", str(parts / "masks"), *names,
                 str(parts / "images")]) == 0  # fmt: skip
    assert main([*common, *exact, "--out", str(depths), "--depths", str(scenes / "depth"),
                 "--depth-scale", "kitti", str(scenes / "images")]) == 0  # fmt: skip
    return {"parts": parts, "scenes": scenes, "masks": masks, "depths": depths, "root": root}


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def python_path(store: Path, head: nn.Module, loss_fn: nn.Module, settings: dict[str, Any]) -> None:
    """The cached training of docs/segmentation.md with train's optimiser and schedule."""
    cached = FeatureStore.open(store)
    loader = cached.dataset(heads=head).loader(
        settings["batch_size"], shuffle=True, drop_last=True, seed=0
    )
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings["lr"], weight_decay=1e-4)
    epochs = settings["epochs"]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    for _ in range(epochs):
        train_one_epoch(head, loader, optimizer, loss_fn, scheduler=scheduler)


SEGMENTATION = {"epochs": 8, "batch_size": 4, "lr": 0.05}


@pytest.fixture(scope="module")
def parts_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train on the parts store, without --heads (the head extract recorded), scored on the
    training store itself (--val), so the scores are on training data."""
    out = tmp_path_factory.mktemp("parts-run") / "trained"
    store = str(data["masks"])
    settings = [f"--{key.replace('_', '-')}={value}" for key, value in SEGMENTATION.items()]
    assert main(["--quiet", "train", store, "--val", store, "--out", str(out), *settings]) == 0
    return out


def test_segmentation_beats_the_constant_baseline_and_records_its_scores(
    data: dict[str, Path], parts_run: Path
) -> None:
    results = json.loads((parts_run / "results.json").read_text())
    assert results["mode"] == "dense"
    assert results["labels"] == {"segmentation": "label"}
    assert len(results["train_loss"]) == SEGMENTATION["epochs"]
    assert results["train_loss"][-1] < results["train_loss"][0]
    head = results["heads"]["segmentation"]
    assert head["type"] == "LinearSegmentationHead"
    assert head["num_classes"] == len(PARTS)
    metrics = head["metrics"]
    assert set(metrics["iou"]) == set(PARTS)
    assert metrics["pixels"] == NUM_IMAGES * SIZE[0] * SIZE[1]  # no pixel without a label
    # The baseline calls every pixel the commonest training class (background).
    baseline = head["baseline"]
    assert baseline["prediction"] == "all background"
    assert metrics["miou"] > baseline["miou"]
    assert metrics["pixel_accuracy"] > baseline["pixel_accuracy"]
    assert results["val_metrics"]["segmentation"] == metrics

    # The reported mIoU is what the saved head gives on the stored features and masks.
    from dinov2_heads.dense import SegmentationMetrics

    saved = load_heads(parts_run / "heads.pt")
    trained = saved.heads
    assert isinstance(trained, LinearSegmentationHead)  # one dense head is saved alone
    assert trained.class_names == PARTS
    assert saved.extra["val_metrics"]["segmentation"]["miou"] == pytest.approx(metrics["miou"])
    store = FeatureStore.open(data["masks"])
    masks = store.labels(slice(None))
    assert isinstance(masks, torch.Tensor)
    scores = SegmentationMetrics(len(PARTS))
    with torch.no_grad():
        logits = resize_dense_output(trained, trained(store.features(slice(None))), SIZE)
    scores.update(logits, masks)
    assert scores.compute().miou == pytest.approx(metrics["miou"])


def test_segmentation_weights_equal_the_python_cached_training(
    data: dict[str, Path], parts_run: Path
) -> None:
    torch.manual_seed(0)  # train's --seed 0
    head = LinearSegmentationHead(64, len(PARTS), class_names=PARTS)
    python_path(data["masks"], head, SegmentationLoss(), SEGMENTATION)
    trained = load_heads(parts_run / "heads.pt").heads
    assert trained is not None
    for name, value in head.state_dict().items():
        assert torch.equal(trained.state_dict()[name], value), name


def test_segment_runs_the_trained_heads_file(
    files: Files, data: dict[str, Path], parts_run: Path, tmp_path: Path
) -> None:
    image = data["parts"] / "images" / "000003.png"
    argv = ["--quiet", "segment", str(image), "--heads", str(parts_run / "heads.pt")]
    argv += ["--checkpoint", str(files.checkpoint), "--size", "28", "56", "--out", str(tmp_path)]
    assert main(argv) == 0
    labels = load_mask(tmp_path / "000003.png")
    # The store's float32 features of the same image give the same labels.
    head = load_heads(parts_run / "heads.pt").heads
    assert head is not None
    features = FeatureStore.open(data["masks"]).features(3)
    with torch.no_grad():
        expected = resize_dense_output(head, head(features), SIZE).argmax(dim=1)[0]
    assert torch.equal(labels, expected)


DEPTH = {"epochs": 6, "batch_size": 4, "lr": 0.02}
DEPTH_HEAD = {"type": "LinearDepthHead", "config": {"max_depth": 20.0}}


@pytest.fixture(scope="module")
def depth_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("depth-run")
    spec = write_spec(
        root / "depth.json",
        {"heads": {"depth": {**DEPTH_HEAD, "loss": {"warm_up_steps": 0}}}, **DEPTH},
    )
    store, out = str(data["depths"]), root / "trained"
    assert main(["--quiet", "train", store, "--heads", str(spec), "--val", store,
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def test_depth_loss_decreases_and_its_metrics_are_recorded(
    data: dict[str, Path], depth_run: Path
) -> None:
    results = json.loads((depth_run / "results.json").read_text())
    assert results["mode"] == "dense"
    losses = results["train_loss"]
    assert len(losses) == DEPTH["epochs"]
    assert losses[-1] < losses[0]
    head = results["heads"]["depth"]
    assert head["depth_range"] == [0.001, 20.0]
    for name in ("abs_rel", "rmse", "delta1"):
        assert np.isfinite(head["metrics"][name])
        assert np.isfinite(head["baseline"][name])
    assert head["baseline"]["prediction"].startswith("all ")
    # The reported AbsRel is that of the saved head on the stored features and depth maps.
    from dinov2_heads.training import DepthMetrics

    trained = load_heads(depth_run / "heads.pt").heads
    assert isinstance(trained, LinearDepthHead)
    store = FeatureStore.open(data["depths"])
    depths = store.labels(slice(None))
    assert isinstance(depths, torch.Tensor)
    metrics = DepthMetrics(max_depth=20.0)
    with torch.no_grad():
        metrics.update(
            resize_dense_output(trained, trained(store.features(slice(None))), SIZE), depths
        )
    assert metrics.compute()["abs_rel"] == pytest.approx(head["metrics"]["abs_rel"])


def test_depth_weights_equal_the_python_cached_training(
    data: dict[str, Path], depth_run: Path
) -> None:
    torch.manual_seed(0)
    head = LinearDepthHead(64, max_depth=20.0)
    python_path(data["depths"], head, DepthLoss(max_depth=20.0, warm_up_steps=0), DEPTH)
    trained = load_heads(depth_run / "heads.pt").heads
    assert trained is not None
    for name, value in head.state_dict().items():
        assert torch.equal(trained.state_dict()[name], value), name


def test_depth_runs_the_trained_heads_file(
    files: Files, data: dict[str, Path], depth_run: Path, tmp_path: Path
) -> None:
    image = data["scenes"] / "images" / "000005.png"
    argv = ["--quiet", "depth", str(image), "--heads", str(depth_run / "heads.pt"), "--save-npy"]
    argv += ["--checkpoint", str(files.checkpoint), "--out", str(tmp_path)]
    assert main(argv) == 0
    metres = np.load(tmp_path / "000005.npy")
    head = load_heads(depth_run / "heads.pt").heads
    assert head is not None
    features = FeatureStore.open(data["depths"]).features(5)
    with torch.no_grad():
        expected = resize_dense_output(head, head(features), SIZE)[0, 0]
    np.testing.assert_allclose(metres, expected.numpy(), atol=1e-4)


def test_a_spec_of_two_segmentation_heads_names_both(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(
        tmp_path / "two.json",
        {
            "heads": {
                "plain": {"type": "LinearSegmentationHead", "config": {"dropout": 0.0}},
                "weighted": {
                    "type": "LinearSegmentationHead",
                    "loss": {"class_weights": [0.2, 1.0, 1.0, 1.0, 1.0]},
                },
            },
            "epochs": 1,
            "batch_size": 4,
        },
    )
    out = tmp_path / "two"
    assert main(["train", str(data["masks"]), "--heads", str(spec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training plain: LinearSegmentationHead, weighted: LinearSegmentationHead" in printed
    table = printed.split("validation on 2 samples:")[1].strip().splitlines()
    assert table[0].split() == ["head", "type", "mIoU", "pixel", "acc", "mean", "acc"]
    assert [line.split()[0] for line in table[1:5]] == ["plain", "baseline", "weighted", "baseline"]
    assert "--head-name plain" in printed
    assert "--head-name weighted" in printed
    heads = load_heads(out / "heads.pt").heads
    assert isinstance(heads, nn.ModuleDict)
    assert sorted(heads) == ["plain", "weighted"]


def test_layers_4_stores_the_blocks_of_the_ms_head(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dinov2_heads import create_backbone

    torch.manual_seed(0)
    deep = create_backbone("dinov2_vits14", depth=4, embed_dim=64, num_heads=1, img_size=56)
    checkpoint = tmp_path / "deep.pth"
    torch.save(deep.state_dict(), checkpoint)
    common = ["--quiet", "extract", "--checkpoint", str(checkpoint), "--num-workers", "0"]
    masks = ["--masks", str(data["parts"] / "masks"), str(data["parts"] / "images")]
    one, four = tmp_path / "one", tmp_path / "four"
    assert main([*common, "--out", str(one), *masks]) == 0
    assert main([*common, "--out", str(four), "--layers", "4", *masks]) == 0
    assert FeatureStore.open(four).blocks == ((0, True), (1, True), (2, True), (3, True))
    recorded = json.loads((four / "dataset.json").read_text())["dense_head"]
    assert recorded == {"type": "LinearSegmentationHead", "config": {"layers": 4}}
    capsys.readouterr()
    # Trained without --heads: the recorded head; on the one-block store the ms head is refused.
    assert main(["--quiet", "train", str(four), "--epochs", "1", "--out", str(tmp_path / "t")]) == 0
    trained = load_heads(tmp_path / "t" / "heads.pt").heads
    assert isinstance(trained, LinearSegmentationHead)
    assert trained.layers == 4
    assert trained.class_names is None
    assert trained.num_classes == len(PARTS)  # counted in the masks
    spec = write_spec(
        tmp_path / "ms.json",
        {"heads": {"ms": {"type": "LinearSegmentationHead", "config": {"layers": 4}}}},
    )
    assert main(["train", str(one), "--heads", str(spec), "--out", str(tmp_path / "x")]) == 1
    error = capsys.readouterr().err
    assert "reads the blocks [(0, True), (1, True), (2, True), (3, True)]" in error
    assert "extract again with --dense-head LinearSegmentationHead --layers 4" in error


def test_size_resizes_images_and_masks_together(
    files: Files, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "store"
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--num-workers", "0"]
    argv += ["--out", str(out), "--size", "56", "112", "--masks", str(data["parts"] / "masks")]
    assert main([*argv, str(data["parts"] / "images")]) == 0
    store = FeatureStore.open(out)
    assert store.input_size == (56, 112)
    assert store.manifest.preprocessing["resize"] == [56, 112]
    masks = store.labels(slice(None))
    assert isinstance(masks, torch.Tensor)
    assert masks.shape == (NUM_IMAGES, 56, 112)
    # Nearest neighbour: every class of the 28x56 masks, each 2x2 pixel block one value.
    original = load_mask(data["parts"] / "masks" / "000000.png")
    assert torch.equal(masks[0], original.repeat_interleave(2, 0).repeat_interleave(2, 1))


# ---------------------------------------------------------------------------- mistakes


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    return error


def test_images_without_masks_are_named_with_the_fix(
    files: Files, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    masks = tmp_path / "masks"
    shutil.copytree(data["parts"] / "masks", masks)
    (masks / "000004.png").unlink()
    (masks / "000007.png").unlink()
    argv = ["extract", "--checkpoint", str(files.checkpoint), "--out", str(tmp_path / "s")]
    error = run_error([*argv, "--masks", str(masks), str(data["parts"] / "images")], capsys)
    assert "2 of 12 images have no mask in" in error
    assert "000004.png" in error
    assert "add the missing masks, or move those images out of" in error
    assert not (tmp_path / "s").exists()


def test_a_class_head_on_a_mask_store_is_refused(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path / "s.json", {"heads": {"parts": {"type": "LinearHead"}}})
    argv = ["train", str(data["masks"]), "--heads", str(spec), "--out", str(tmp_path / "o")]
    error = run_error(argv, capsys)
    assert "head 'parts' is a LinearHead, which gives one class per image" in error
    assert "holds segmentation masks; train a dense head on it" in error
    assert not (tmp_path / "o" / "heads.pt").exists()


def test_a_segmentation_head_on_a_depth_store_is_refused(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path / "s.json", {"heads": {"d": {"type": "LinearSegmentationHead"}}})
    argv = ["train", str(data["depths"]), "--heads", str(spec), "--out", str(tmp_path / "o")]
    error = run_error(argv, capsys)
    assert "learns segmentation masks, but the label 'label'" in error
    assert "holds depth maps; use a LinearDepthHead or DPTDepthHead" in error


def test_a_dense_head_on_a_class_store_says_how_to_extract_masks(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "classes"
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--size", "28", "56"]
    assert main([*argv, "--out", str(store), str(files.folder)]) == 0
    spec = write_spec(tmp_path / "s.json", {"heads": {"label": {"type": "LinearDepthHead"}}})
    argv = ["train", str(store), "--heads", str(spec), "--out", str(tmp_path / "o")]
    error = run_error(argv, capsys)
    assert "holds a class per image" in error
    assert "extract it with --masks FOLDER or --depths FOLDER" in error


def test_mask_values_beyond_the_classes_are_refused(
    files: Files, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Three names for masks of five parts: labels 3 and 4 have no class; extract says so.
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--num-workers", "0"]
    argv += ["--out", str(tmp_path / "three"), "--masks", str(data["parts"] / "masks")]
    argv += ["--class-names", "background,body,windows", str(data["parts"] / "images")]
    error = run_error(argv, capsys)
    assert "hold classes [3, 4] but the label has 3 class names" in error
    assert "fix the masks or the class names" in error
    # A spec's class count on a store without class names: train says so, with the fix.
    spec = write_spec(
        tmp_path / "s.json",
        {"heads": {"p": {"type": "LinearSegmentationHead", "config": {"num_classes": 4}}}},
    )
    argv = ["train", str(data["masks"]), "--heads", str(spec), "--out", str(tmp_path / "o")]
    error = run_error(argv, capsys)
    assert "hold the labels 4, outside 0..3 of head 'p' (K = 4)" in error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--class-names", "a,b"], "--class-names is for segmentation or depth data"),
        (["--masks", "m", "--depths", "d"], "--masks and --depths name two kinds of labels"),
        (
            ["--masks", "m", "--dense-head", "DPTDepthHead"],
            "--dense-head DPTDepthHead learns depth, but --masks gives segmentation labels",
        ),
        (["--depths", "d", "--class-names", "a"], "--class-names names the classes of masks"),
        (["--mask-column", "mask"], "--mask-column reads a manifest"),
    ],
    ids=["names-alone", "two-sources", "head-task", "depth-names", "column-folder"],
)
def test_dense_option_mistakes(
    files: Files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    argv = ["extract", "--checkpoint", str(files.checkpoint), "--out", str(tmp_path / "s")]
    assert message in run_error([*argv, *options, str(files.folder)], capsys)


def test_manifests_name_the_masks_and_depth_maps(
    files: Files, data: dict[str, Path], tmp_path: Path
) -> None:
    """--mask-column and --depth-column read the pairs a manifest lists, in its order."""
    parts, scenes = data["parts"], data["scenes"]
    rows = [f"images/{index:06d}.png" for index in (5, 1, 7)]
    (parts / "parts.csv").write_text(
        "path,mask\n" + "".join(f"{row},{row.replace('images', 'masks')}\n" for row in rows)
    )
    (scenes / "scenes.csv").write_text(
        "path,depth\n" + "".join(f"{row},{row.replace('images', 'depth')}\n" for row in rows)
    )
    common = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--num-workers", "0"]
    masks, depths = tmp_path / "masks", tmp_path / "depths"
    assert main([*common, "--out", str(masks), "--mask-column", "mask",
                 str(parts / "parts.csv")]) == 0  # fmt: skip
    # float32 depth maps, as in the store from the folders.
    assert main([*common, "--out", str(depths), "--depth-column", "depth", "--depth-scale",
                 "256", "--dtype", "float32", str(scenes / "scenes.csv")]) == 0  # fmt: skip
    from_folders = FeatureStore.open(data["masks"]).labels([5, 1, 7])
    listed = FeatureStore.open(masks).labels(slice(None))
    assert isinstance(from_folders, torch.Tensor)
    assert isinstance(listed, torch.Tensor)
    assert torch.equal(listed, from_folders)
    recorded = json.loads((depths / "dataset.json").read_text())
    assert recorded["kind"] == "depth"
    assert recorded["paths"] == [str(scenes / row) for row in rows]
    expected = FeatureStore.open(data["depths"]).labels([5, 1, 7])
    assert isinstance(expected, torch.Tensor)
    stored = FeatureStore.open(depths).labels(slice(None))
    assert isinstance(stored, torch.Tensor)
    assert torch.equal(stored, expected)  # "kitti" is 256 values per metre


def test_images_of_another_size_say_which_size_to_pass(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = SyntheticVehicles(2, seed=0, size=(30, 50)).write_parts(tmp_path / "odd")
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--num-workers", "0"]
    argv += ["--out", str(tmp_path / "s"), "--masks", str(odd / "masks"), str(odd / "images")]
    error = run_error(argv, capsys)
    assert "000000.png: the image is 30x50, not a multiple of 14" in error
    assert "pass --size 28 56 to resize the images and their labels" in error


def test_validation_data_of_the_other_kind_is_refused(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", str(data["masks"]), "--val", str(data["depths"]), "--out", str(tmp_path)]
    error = run_error(argv, capsys)
    assert "holds other labels than" in error
    assert "label: depth maps vs label: segmentation masks" in error


def test_try_next_segments_with_the_recorded_checkpoint(
    files: Files,
    data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the printed commands write beside the heads file, not here
    store = str(data["masks"])
    argv = ["train", store, "--val", store, "--epochs", "1", "--batch-size", "4"]
    assert main(["--quiet", *argv, "--out", str(tmp_path / "trained")]) == 0
    printed = capsys.readouterr().out.split("try next")[1]
    assert "BACKBONE" not in printed
    segment = next(line for line in printed.splitlines() if "dinov2-heads segment" in line)
    pictures = tmp_path / "trained" / "segmentation"
    assert f"--checkpoint {files.checkpoint} --size 28 56 --out {pictures} IMAGES" in segment
    image = data["parts"] / "images" / "000003.png"
    assert main(shlex.split(segment.replace("IMAGES", str(image)))[1:]) == 0
    assert load_mask(pictures / "000003.png").shape == SIZE
    assert not (tmp_path / "segmentation").exists()
    # The ONNX file goes beside the heads file, not into the folder the command runs from.
    export = next(line for line in printed.splitlines() if "dinov2-heads export" in line)
    assert export.endswith(f"--whole-image --out {tmp_path / 'trained' / 'segmentation.onnx'}")
