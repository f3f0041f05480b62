"""The dense commands under faults: nothing lost, nothing silent.

``segment`` and ``depth`` treat an unreadable image among many as ``predict`` does: by
default they stop with one line naming the file, keeping the pictures written before, and with
``--on-error skip`` they leave it out with a warning per file and a count at the end. An
output folder that is a file is one clear line. Ctrl-C leaves no file half written. ``extract
--masks`` / ``--depths --on-error skip`` leaves out pairs whose mask or depth map cannot be
read, as its error advises, and counts them apart from unreadable images. Files already in
``--out`` are refused, before anything runs, unless ``--overwrite``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov2_heads import atomic
from dinov2_heads.cache import FeatureStore
from dinov2_heads.cli import main
from dinov2_heads.demo import SyntheticDepthPairs, SyntheticVehicles

from .conftest import SIZE, DenseFiles, Files

COMMANDS = ("segment", "depth")


@pytest.fixture
def images(files: Files, tmp_path: Path) -> Path:
    """Three good images with a broken and a truncated one between them (in sorted order)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for number, path in enumerate(files.images):
        shutil.copy(path, folder / f"{number}.png")
    (folder / "1a_broken.png").write_bytes(b"\x89PNG but not really")
    good = files.images[0].read_bytes()
    (folder / "1b_truncated.png").write_bytes(good[: len(good) // 2])
    return folder


def run(
    command: str, inputs: Path, out: Path, files: Files, dense_files: DenseFiles, *extra: str
) -> int:
    head = dense_files.segmentation if command == "segment" else dense_files.depth
    return main(
        [
            command,
            str(inputs),
            "--heads",
            str(head),
            "--checkpoint",
            str(files.checkpoint),
            "--out",
            str(out),
            *extra,
        ]
    )


def pictures(out: Path) -> list[str]:
    return sorted(path.name for path in out.iterdir())


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreadable_image_stops_the_run_naming_it_and_keeps_what_was_written(
    command: str,
    images: Path,
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    assert run(command, images, out, files, dense_files) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        f"dinov2-heads {command}: error: cannot read image {images / '1a_broken.png'}: "
    )
    assert err[0].endswith("or pass --on-error skip to leave unreadable images out with a warning")
    # The pictures of the images before it are there, whole.
    written = pictures(out)
    expected = (
        ["0.png", "0_overlay.png", "1.png", "1_overlay.png"]
        if command == "segment"
        else ["0.png", "1.png"]
    )
    assert written == expected
    for name in written:
        with Image.open(out / name) as picture:
            picture.load()


@pytest.mark.parametrize("command", COMMANDS)
def test_skipped_images_are_warned_about_one_by_one_and_counted(
    command: str,
    images: Path,
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="dinov2_heads.commands"):
        assert run(command, images, out, files, dense_files, "--on-error", "skip") == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("skipped 2 unreadable image(s), listed in the log")
    assert "broken" not in printed  # the files are in the log, as predict has them
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(":")[0] for w in warnings] == [
        f"skipped {images / '1a_broken.png'}",
        f"skipped {images / '1b_truncated.png'}",
    ]
    assert "image file is truncated" in warnings[1]
    names = {"0", "1", "2"}
    stems = {name.removesuffix(".png").removesuffix("_overlay") for name in pictures(out)}
    assert stems == names


@pytest.mark.parametrize("command", [*COMMANDS, "train"])
@pytest.mark.parametrize("inside", [False, True])
def test_an_output_folder_that_is_a_file_is_one_clear_line(
    command: str,
    inside: bool,
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file of the user's", encoding="utf-8")
    out = taken / "out" if inside else taken
    if command == "train":
        store = tmp_path / "store"
        extract = ["extract", "--checkpoint", str(files.checkpoint), "--num-workers", "0"]
        assert main([*extract, "--out", str(store), str(files.folder)]) == 0
        capsys.readouterr()
        code = main(["train", str(store), "--out", str(out)])
    else:
        code = run(command, files.images[0], out, files, dense_files)
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    where = f" (it lies inside {taken})" if inside else ""
    assert err[0] == (
        f"dinov2-heads {command}: error: --out {out} cannot be a folder{where}: {taken} is a "
        "file; pass a folder (it is created if missing), or move the file away"
    )
    assert taken.read_text(encoding="utf-8") == "a file of the user's"


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_leaves_no_file_half_written(
    command: str,
    images: Path,
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Ctrl-C arrives while the third file is being made durable: its bytes are all in the
    # temporary file, which is neither renamed into place nor left behind.
    calls = {"fsync": 0}
    fsync = atomic.os.fsync

    def interrupted(descriptor: int) -> None:
        calls["fsync"] += 1
        if calls["fsync"] == 5:  # a file and its folder per write: the third file
            raise KeyboardInterrupt
        fsync(descriptor)

    monkeypatch.setattr(atomic.os, "fsync", interrupted)
    out = tmp_path / "out"
    extra = ["--save-npy"] if command == "depth" else []
    assert run(command, images, out, files, dense_files, "--on-error", "skip", *extra) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted; ")
    assert "no file is left half written" in err
    written = pictures(out)
    assert written == (["0.png", "0_overlay.png"] if command == "segment" else ["0.npy", "0.png"])
    for name in written:  # whole files only, and no temporary file beside them
        if name.endswith(".npy"):
            assert np.load(out / name).shape == SIZE
        else:
            with Image.open(out / name) as picture:
                picture.load()


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_extract_skips_pairs_whose_label_cannot_be_read_as_its_error_advises(
    task: str, files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vehicles = SyntheticVehicles(6, seed=0, size=SIZE)
    if task == "segmentation":
        root = vehicles.write_parts(tmp_path / "pairs")
        labels, option = root / "masks", ["--masks", str(root / "masks")]
    else:
        root = SyntheticDepthPairs(vehicles, fog=6.0).write_folders(tmp_path / "pairs")
        labels = root / "depth"
        option = ["--depths", str(labels), "--depth-scale", "kitti"]
    what = "mask" if task == "segmentation" else "depth map"
    broken = labels / "000003.png"
    broken.write_bytes(broken.read_bytes()[:40])
    extract = ["extract", "--checkpoint", str(files.checkpoint), "--num-workers", "0"]
    argv = [*extract, *option, str(root / "images")]
    assert main([*argv, "--out", str(tmp_path / "stopped")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    # The label is named as what it is, and the advice is the command line's option.
    assert err.startswith(f"dinov2-heads extract: error: cannot read {what} {broken}: ")
    assert err.endswith(
        f"or pass --on-error skip to leave out pairs whose image or {what} cannot be read"
    )
    # An unreadable image too: the summary counts each cause.
    image = root / "images" / "000001.png"
    image.write_bytes(image.read_bytes()[:40])
    store = tmp_path / "store"
    assert main([*argv, "--out", str(store), "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert (
        f"  skipped 2 pair(s) (1 unreadable image(s), 1 unreadable {what}(s)), listed in the log"
        in printed
    )
    assert not any("unreadable image(s), listed" in line for line in printed)
    assert len(FeatureStore.open(store)) == 4
    described = json.loads((store / "dataset.json").read_text(encoding="utf-8"))
    assert [entry["path"] for entry in described["skipped"]] == [
        str(image),
        str(root / "images" / "000003.png"),
    ]
    assert "label" not in described["skipped"][0]
    assert described["skipped"][1]["label"] == str(broken)
    assert str(broken) in described["skipped"][1]["reason"]


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_extract_summary_names_a_label_left_out_as_a_label(
    task: str, files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vehicles = SyntheticVehicles(4, seed=1, size=SIZE)
    if task == "segmentation":
        root = vehicles.write_parts(tmp_path / "pairs")
        labels, option = root / "masks", ["--masks", str(root / "masks")]
    else:
        root = SyntheticDepthPairs(vehicles, fog=6.0).write_folders(tmp_path / "pairs")
        labels = root / "depth"
        option = ["--depths", str(labels), "--depth-scale", "kitti"]
    (labels / "000002.png").write_bytes(b"not a picture")
    extract = ["extract", "--checkpoint", str(files.checkpoint), "--num-workers", "0"]
    argv = [*extract, *option, str(root / "images"), "--on-error", "skip"]
    assert main([*argv, "--out", str(tmp_path / "store")]) == 0
    what = "mask(s)" if task == "segmentation" else "depth map(s)"
    assert capsys.readouterr().out.splitlines()[-2] == (
        f"  skipped 1 pair(s) (1 unreadable {what}), listed in the log"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_pictures_already_in_out_are_refused_without_overwrite_and_nothing_is_written(
    command: str,
    files: Files,
    dense_files: DenseFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for number, path in enumerate(files.images):
        shutil.copy(path, folder / f"{number}.png")
    out = tmp_path / "out"
    assert run(command, folder, out, files, dense_files) == 0
    capsys.readouterr()
    # The first image's files gone, the second's kept: the refusal names the second's picture
    # and comes before anything is written, so the first's are not made again.
    second = "1.png"
    for name in pictures(out):
        if name.startswith("0"):
            (out / name).unlink()
    before = {name: (out / name).read_bytes() for name in pictures(out)}
    assert run(command, folder, out, files, dense_files) == 1
    err = capsys.readouterr().err.strip().splitlines()
    taken = len(before)
    assert err == [
        f"dinov2-heads {command}: error: {out / second} already exists ({taken} of the files "
        f"this run writes are in {out}); pass --overwrite to replace them, or choose another "
        "--out folder"
    ]
    assert {name: (out / name).read_bytes() for name in pictures(out)} == before
    # --overwrite replaces them and writes the rest.
    assert run(command, folder, out, files, dense_files, "--overwrite") == 0
    per_image = ["{}.png", "{}_overlay.png"] if command == "segment" else ["{}.png"]
    assert pictures(out) == sorted(p.format(n) for n in range(3) for p in per_image)


def test_depth_refuses_an_npy_file_it_would_replace(
    files: Files, dense_files: DenseFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{files.images[0].stem}.npy").write_bytes(b"a user's array")
    # Without --save-npy the .npy file is not in the way.
    assert run("depth", files.images[0], out, files, dense_files) == 0
    (out / f"{files.images[0].stem}.png").unlink()
    capsys.readouterr()
    assert run("depth", files.images[0], out, files, dense_files, "--save-npy") == 1
    assert f"{out / files.images[0].stem}.npy already exists" in capsys.readouterr().err
    assert pictures(out) == [f"{files.images[0].stem}.npy"]
    assert (out / f"{files.images[0].stem}.npy").read_bytes() == b"a user's array"
