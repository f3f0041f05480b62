"""Reading and writing depth maps: 16-bit PNG with a scale, or NumPy arrays in metres.

NYU Depth v2 stores depth as 16-bit PNG in millimetres (scale 1000), KITTI in 1/256 m (scale
256); both use 0 for "no measurement". ``.npy`` files hold metres as they are. Whatever the
format, a pixel without a valid depth reads as 0 (NaN and infinities included), so every
loss and metric treats it alike.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch import Tensor

from dinov2_heads.atomic import atomic_path
from dinov2_heads.data.loading import require_pillow

#: Pixel value per metre of the usual 16-bit depth PNGs.
DEPTH_SCALES: MappingProxyType[str, float] = MappingProxyType({"nyu": 1000.0, "kitti": 256.0})
#: File endings read as NumPy arrays in metres; everything else is read with Pillow.
NUMPY_SUFFIXES = (".npy",)
_UINT16_MAX = 65535

PathLike = str | os.PathLike[str]


class UnreadableDepthError(ValueError):
    """A depth map file could not be read (damaged, truncated, or not an image or array).

    Attributes:
        path: The file that failed.
        reason: What went wrong, as Pillow or NumPy said it.
    """

    def __init__(self, path: PathLike, reason: str, fix: str = "fix or remove the file") -> None:
        self.path = Path(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"cannot read depth map {self.path}: {reason}; {fix}")

    def __reduce__(self) -> tuple[type[UnreadableDepthError], tuple[Path, str, str]]:
        # Keeps the error picklable, so it crosses DataLoader worker processes intact.
        return (type(self), (self.path, self.reason, self.fix))


def depth_scale(scale: float | str | None) -> float | None:
    """The pixels per metre of ``scale``: a positive number, ``"nyu"``, ``"kitti"`` or ``None``."""
    if scale is None:
        return None
    if isinstance(scale, str):
        try:
            return DEPTH_SCALES[scale.lower()]
        except KeyError:
            raise ValueError(
                f"unknown depth scale {scale!r}; use {sorted(DEPTH_SCALES)} or a number of "
                "pixel values per metre (1000 for millimetres)"
            ) from None
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValueError(f"the depth scale must be a positive number, got {scale!r}")
    if scale <= 0:
        raise ValueError(f"the depth scale must be a positive number, got {scale}")
    return float(scale)


def read_depth(path: PathLike, *, scale: float | str | None = None) -> Tensor:
    """A depth map as (1, H, W) float32 metres, 0 where there is no valid measurement.

    Args:
        path: A 16-bit greyscale PNG (or another integer or float image Pillow reads as one
            band, such as a 32-bit float TIFF), or a ``.npy`` array of shape (H, W) or
            (1, H, W).
        scale: Pixel values per metre: ``"nyu"`` (1000, millimetres), ``"kitti"`` (256) or a
            number. Required for integer images; ``None`` for ``.npy`` and float images, which
            hold metres.

    Raises:
        FileNotFoundError: The file does not exist.
        UnreadableDepthError: A file that cannot be read (a damaged or truncated image or
            ``.npy``), naming it; a ``ValueError``.
        ValueError: An 8-bit or colour image, an integer image without ``scale``, an array
            of another shape, or negative depths.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"depth map {file} does not exist or is not a file")
    factor = depth_scale(scale)
    if file.suffix.lower() in NUMPY_SUFFIXES:
        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            # numpy's own words name no file, and for a file that is no array at all they
            # suggest unpickling it: never the fix for a depth map.
            why = "no array header" if "pickled" in str(error) else str(error)
            raise UnreadableDepthError(
                file,
                f"it is not a whole NumPy array file ({why})",
                "write depth maps with numpy.save(path, metres), or fix or remove the file",
            ) from error
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
            array.dtype, np.complexfloating
        ):
            raise ValueError(f"depth map {file} holds {array.dtype} values, expected metres")
        array = array.astype(np.float32)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise ValueError(
                f"depth map {file} has shape {array.shape}; expected (H, W) or (1, H, W) metres"
            )
    else:
        array = _read_depth_image(file, integer_needs_scale=factor is None)
    depth = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if factor is not None:
        depth = depth / factor
    depth = torch.where(torch.isfinite(depth), depth, torch.zeros((), dtype=depth.dtype))
    if bool((depth < 0).any()):
        raise ValueError(
            f"depth map {file} holds negative depths (smallest {float(depth.min()):.4g} m); "
            "depths are metres >= 0 with 0 for no measurement; check the file and its scale"
        )
    return depth[None]


def _read_depth_image(file: Path, *, integer_needs_scale: bool) -> np.ndarray:
    pil = require_pillow()
    try:
        with pil.Image.open(file) as image:
            image.load()
            mode = image.mode
            array = np.array(image)
    except (OSError, pil.UnidentifiedImageError) as error:
        raise UnreadableDepthError(file, f"{type(error).__name__}: {error}") from error
    if mode == "F":
        return array.astype(np.float32)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        if integer_needs_scale:
            raise ValueError(
                f"depth map {file} holds integer values; pass scale='nyu' (millimetres), "
                "scale='kitti' (1/256 m) or the number of values per metre"
            )
        return array.astype(np.float32)
    raise ValueError(
        f"depth map {file} is a {mode!r} image; expected a 16-bit greyscale PNG (NYU, KITTI), "
        "a float image or a .npy array of metres (8-bit and colour images cannot hold depth)"
    )


def write_depth_png(path: PathLike, depth: Tensor, *, scale: float | str = "nyu") -> Path:
    """Write depth in metres as a 16-bit PNG of ``round(depth * scale)``; 0 stays "no depth".

    NaN and infinite depths are written as 0. The file is replaced atomically.

    Args:
        path: The ``.png`` file to write.
        depth: (H, W) or (1, H, W) metres.
        scale: Pixel values per metre (``"nyu"``: 1000, ``"kitti"``: 256, or a number).

    Raises:
        ValueError: Negative depths, or depths above ``65535 / scale`` that 16 bits cannot
            hold at this scale.
    """
    factor = depth_scale(scale)
    assert factor is not None
    values = depth.detach().float().cpu()
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ValueError(f"expected a depth map (H, W) or (1, H, W), got {tuple(depth.shape)}")
    values = torch.where(torch.isfinite(values), values, torch.zeros(()))
    if bool((values < 0).any()):
        raise ValueError("cannot write negative depths; depths are metres >= 0")
    pixels = torch.round(values * factor)
    if bool((pixels > _UINT16_MAX).any()):
        raise ValueError(
            f"depths up to {float(values.max()):.4g} m do not fit 16 bits at scale {factor:g} "
            f"(at most {_UINT16_MAX / factor:.4g} m); use a smaller scale such as 'kitti'"
        )
    pil = require_pillow()
    array = pixels.numpy().astype(np.uint16)
    image = pil.Image.fromarray(array)
    target = Path(path)
    with atomic_path(target) as temporary:
        image.save(temporary, format="PNG")
    return target
