"""Property tests: corrupted checkpoint bytes only ever raise the library's own errors."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import Dinov2HeadsError, describe_checkpoint, read_checkpoint_file

EXAMPLES = settings(
    max_examples=50,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
SECONDS_PER_EXAMPLE = 20


def _valid_files() -> dict[str, bytes]:
    model = create_backbone(
        "dinov2_vits14_reg", depth=1, embed_dim=64, num_heads=1, img_size=28, device="cpu"
    )
    state = model.state_dict()
    files = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("zip", "legacy", "safetensors"):
            path = Path(folder) / kind
            if kind == "safetensors":
                from safetensors.torch import save_file

                save_file(dict(state), str(path))
            else:
                torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")
            files[kind] = path.read_bytes()
    return files


VALID = _valid_files()


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (POSIX); elsewhere run without the guard."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"reading a corrupted file took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pth"
        path.write_bytes(data)
        with time_limit(SECONDS_PER_EXAMPLE):
            with suppress(Dinov2HeadsError):
                describe_checkpoint(path)
            try:
                content = read_checkpoint_file(path)
            except Dinov2HeadsError:
                return
            assert isinstance(content, dict)


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    action = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert"]))
    position = draw(st.integers(0, len(data) - 1))
    if action == "truncate":
        return bytes(data[:position])
    if action == "flip":
        for offset in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=16)):
            data[offset] ^= draw(st.integers(1, 255))
        return bytes(data)
    chunk = draw(st.binary(min_size=1, max_size=64))
    if action == "overwrite":
        data[position : position + len(chunk)] = chunk
    else:
        data[position:position] = chunk
    return bytes(data)


@EXAMPLES
@given(corrupted())
def test_corrupted_checkpoints_raise_only_library_errors(data: bytes) -> None:
    check_bytes(data)


@EXAMPLES
@given(st.binary(max_size=4096))
def test_random_bytes_raise_only_library_errors(data: bytes) -> None:
    check_bytes(data)


@EXAMPLES
@given(st.sampled_from(sorted(VALID)), st.binary(min_size=1, max_size=32))
def test_valid_prefix_with_garbage(kind: str, garbage: bytes) -> None:
    check_bytes(VALID[kind][:64] + garbage)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_the_uncorrupted_files_describe_cleanly(kind: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pth"
        path.write_bytes(VALID[kind])
        summary = describe_checkpoint(path)
    assert summary.config["num_register_tokens"] == 4
    assert summary.config["img_size"] == 28
