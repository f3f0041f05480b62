from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_heads.data import DEPTH_SCALES, UnreadableDepthError, read_depth, write_depth_png


def test_nyu_and_kitti_pngs_read_in_metres(tmp_path: Path) -> None:
    raw = np.array([[0, 1000, 2500], [65535, 7, 300]], dtype=np.uint16)
    Image.fromarray(raw).save(tmp_path / "d.png")
    nyu = read_depth(tmp_path / "d.png", scale="nyu")
    kitti = read_depth(tmp_path / "d.png", scale="kitti")
    assert nyu.shape == (1, 2, 3)
    assert nyu.dtype == torch.float32
    assert torch.allclose(nyu[0], torch.from_numpy(raw.astype(np.float32)) / 1000)
    assert torch.allclose(kitti[0], torch.from_numpy(raw.astype(np.float32)) / 256)
    assert torch.equal(read_depth(tmp_path / "d.png", scale=1000.0), nyu)
    assert float(nyu[0, 0, 0]) == 0.0  # no measurement stays 0
    assert dict(DEPTH_SCALES) == {"nyu": 1000.0, "kitti": 256.0}


def test_npy_holds_metres_and_non_finite_values_become_invalid(tmp_path: Path) -> None:
    array = np.array([[1.5, np.nan], [np.inf, 0.25]], dtype=np.float64)
    np.save(tmp_path / "d.npy", array)
    np.save(tmp_path / "d1.npy", array[None].astype(np.float32))
    depth = read_depth(tmp_path / "d.npy")
    assert depth.shape == (1, 2, 2)
    assert depth.tolist() == [[[1.5, 0.0], [0.0, 0.25]]]
    assert torch.equal(read_depth(tmp_path / "d1.npy"), depth)


def test_write_then_read_round_trips_within_the_quantisation(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(1, 9, 11, generator=gen) * 60
    depth[0, 0, :3] = 0.0
    depth[0, 1, 1] = float("nan")
    path = write_depth_png(tmp_path / "d.png", depth, scale="kitti")
    assert Image.open(path).mode == "I;16"
    back = read_depth(path, scale="kitti")
    expected = torch.nan_to_num(depth, nan=0.0)
    assert (back - expected).abs().max() <= 0.5 / 256 + 1e-6
    assert float(back[0, 1, 1]) == 0.0
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_bad_files_and_values_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((2, 2), np.uint16)).save(tmp_path / "int.png")
    with pytest.raises(ValueError, match="scale='nyu'"):
        read_depth(tmp_path / "int.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="'RGB' image; expected a 16-bit greyscale PNG"):
        read_depth(tmp_path / "rgb.png", scale="nyu")
    np.save(tmp_path / "neg.npy", np.array([[1.0, -0.5]]))
    with pytest.raises(ValueError, match="negative depths"):
        read_depth(tmp_path / "neg.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"expected \(H, W\) or \(1, H, W\)"):
        read_depth(tmp_path / "cube.npy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_depth(tmp_path / "missing.png", scale="nyu")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read depth map"):
        read_depth(tmp_path / "junk.png", scale="nyu")
    with pytest.raises(ValueError, match="unknown depth scale 'nuy'"):
        read_depth(tmp_path / "int.png", scale="nuy")
    with pytest.raises(ValueError, match="positive number"):
        read_depth(tmp_path / "int.png", scale=0)
    with pytest.raises(ValueError, match="do not fit 16 bits"):
        write_depth_png(tmp_path / "far.png", torch.full((2, 2), 70.0), scale="nyu")
    with pytest.raises(ValueError, match="negative depths"):
        write_depth_png(tmp_path / "neg.png", torch.full((2, 2), -1.0))


def test_a_damaged_depth_file_is_an_error_that_names_it(tmp_path: Path) -> None:
    np.save(tmp_path / "whole.npy", np.ones((4, 4), np.float32))
    data = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(data[:-10])
    (tmp_path / "text.npy").write_bytes(b"hello world")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    for name, reason in (
        ("truncated.npy", "it is not a whole NumPy array file (Failed to read all data"),
        ("text.npy", "it is not a whole NumPy array file (no array header)"),
        ("junk.png", "UnidentifiedImageError: cannot identify image file"),
    ):
        with pytest.raises(UnreadableDepthError) as caught:
            read_depth(tmp_path / name, scale="nyu" if name.endswith(".png") else None)
        error = caught.value
        assert isinstance(error, ValueError)  # as every other bad depth file
        assert error.path == tmp_path / name
        assert error.reason.startswith(reason)
        assert str(error).startswith(f"cannot read depth map {tmp_path / name}: {reason}")
        assert "pickle" not in str(error)  # numpy's advice to unpickle is never the fix
        assert pickle.loads(pickle.dumps(error)).args == error.args  # crosses worker processes
