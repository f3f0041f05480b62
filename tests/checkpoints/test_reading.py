"""Reading checkpoint files: every storage format, and a clear error for each bad file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from dinov2_heads.checkpoints import (
    CheckpointError,
    CheckpointFileError,
    CheckpointIsADirectoryError,
    CheckpointNotFoundError,
    Dinov2HeadsError,
    UnsafeCheckpointError,
    read_checkpoint_file,
)
from dinov2_heads.checkpoints.reading import sniff_file_kind


def small_state() -> dict[str, torch.Tensor]:
    return {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.tensor([1.0, -1.0])}


def assert_same(got: dict[str, object], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        assert isinstance(got[key], torch.Tensor)
        assert torch.equal(got[key], tensor)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt", ".weights"])
def test_zip_format_any_suffix(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    torch.save(small_state(), path)
    assert sniff_file_kind(path) == "torch-zip"
    assert_same(read_checkpoint_file(path), small_state())


def test_legacy_format(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(small_state(), path, _use_new_zipfile_serialization=False)
    assert sniff_file_kind(path) == "torch-legacy"
    assert_same(read_checkpoint_file(path), small_state())


def test_safetensors(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(small_state(), str(path))
    assert sniff_file_kind(path) == "safetensors"
    assert_same(read_checkpoint_file(path), small_state())


def _mapped(path: Path) -> bool:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux) to see the mappings")
    return str(path.resolve()) in maps.read_text()


@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_tensors_own_their_memory_unless_mmap_is_asked(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("model.safetensors" if kind == "safetensors" else "model.pth")
    save(kind, {"big": torch.ones(1000)}, path)
    owned = read_checkpoint_file(path)["big"]
    # Nothing of the file stays mapped: the tensor is memory of its own.
    assert not _mapped(path)
    mapped = read_checkpoint_file(path, mmap=True)["big"]
    # With mmap=True the file appears among the process's memory mappings while the tensor lives.
    assert _mapped(path)
    assert torch.equal(owned, torch.ones(1000))
    assert torch.equal(mapped, torch.ones(1000))


@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_rewriting_the_file_in_place_leaves_what_was_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("model.safetensors" if kind == "safetensors" else "model.pth")
    save(kind, {"w": torch.zeros(4096)}, path)
    owned = read_checkpoint_file(path)["w"]
    mapped = read_checkpoint_file(path, mmap=True)["w"]
    # The same size, written in place (same inode), as torch.save to the same path does.
    with path.open("r+b") as stream:
        data = bytearray(stream.read())
        data[-8000:-4000] = bytes(range(200)) * 20
        stream.seek(0)
        stream.write(data)
    assert torch.equal(owned, torch.zeros(4096))
    # The documented hazard of mmap=True: the mapped tensor shows the new bytes.
    assert not torch.equal(mapped, torch.zeros(4096))


def save(kind: str, state: dict[str, torch.Tensor], path: Path) -> None:
    if kind == "safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file(state, str(path))
    else:
        torch.save(state, path)


def test_path_like_and_user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(small_state(), tmp_path / "w.pth")
    assert_same(read_checkpoint_file("~/w.pth"), small_state())


def test_missing_file_lists_checkpoints_nearby(tmp_path: Path) -> None:
    torch.save(small_state(), tmp_path / "dinov2_vits14_pretrain.pth")
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoints in .*dinov2_vits14_pretrain"):
        read_checkpoint_file(tmp_path / "dinov2_vits14.pth")
    with pytest.raises(FileNotFoundError):
        read_checkpoint_file(tmp_path / "nothing" / "here.pth")


def test_directory(tmp_path: Path) -> None:
    torch.save(small_state(), tmp_path / "a.pth")
    with pytest.raises(CheckpointIsADirectoryError, match=r"is a directory.*contains a.pth"):
        read_checkpoint_file(tmp_path)
    with pytest.raises(IsADirectoryError):
        read_checkpoint_file(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        read_checkpoint_file(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_zip_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"truncated or corrupted"):
        read_checkpoint_file(path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "cut.safetensors"
    safetensors_torch.save_file({"w": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"safetensors file; it is truncated or corrupted"):
        read_checkpoint_file(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(7, 250)) * 10)
    with pytest.raises(CheckpointError, match=r"not a PyTorch or safetensors checkpoint"):
        read_checkpoint_file(path)


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "git lfs pull"),
        (b"<!DOCTYPE html><html>Not found</html>", "download probably failed"),
    ],
)
def test_text_files_get_a_hint(tmp_path: Path, content: bytes, hint: str) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=hint):
        read_checkpoint_file(path)


class _Payload:
    """Unpickling this would create a marker file, proving that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("legacy", [False, True])
def test_code_payload_is_refused_and_not_run(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    payload = {"weight": torch.zeros(2), "extra": _Payload(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(
        UnsafeCheckpointError, match=r"arbitrary unpickling to load \(it refers to 'posix.mkdir'\)"
    ) as caught:
        read_checkpoint_file(path)
    assert "nothing in it was executed" in str(caught.value)
    assert not marker.exists()


def test_plain_pickle_with_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(Dinov2HeadsError):
        read_checkpoint_file(path)
    assert not marker.exists()


def test_whole_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch.nn.modules.linear.Linear"):
        read_checkpoint_file(path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match=r"TorchScript archive.*torch.jit.load"):
        read_checkpoint_file(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=r"holds a Tensor, not a state dict"):
        read_checkpoint_file(path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.pth"
    torch.save(small_state(), path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read any file (root)")
        with pytest.raises(CheckpointFileError, match=r"cannot read"):
            read_checkpoint_file(path)
    finally:
        path.chmod(0o644)


def test_error_classes_are_value_and_os_errors() -> None:
    assert issubclass(CheckpointError, ValueError)
    assert issubclass(CheckpointFileError, OSError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    for error in (CheckpointError, CheckpointFileError, UnsafeCheckpointError):
        assert issubclass(error, Dinov2HeadsError)


def test_path_must_be_a_path() -> None:
    with pytest.raises(TypeError, match=r"expected a file path"):
        read_checkpoint_file(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ special files, names, sizes


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_named_pipe_is_refused_instead_of_blocking(tmp_path: Path) -> None:
    from tests.checkpoints.test_corrupted_files import time_limit

    pipe = tmp_path / "model.pth"
    os.mkfifo(pipe)
    # Opening a FIFO for reading waits for a writer, forever; the guard turns that into a failure.
    with time_limit(10), pytest.raises(CheckpointFileError, match=r"is a named pipe \(FIFO\)"):
        read_checkpoint_file(pipe)
    from dinov2_heads.checkpoints import load_backbone

    with time_limit(10), pytest.raises(CheckpointFileError, match=r"not a regular file"):
        load_backbone(pipe)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_device_is_refused() -> None:
    with pytest.raises(CheckpointFileError, match=r"/dev/zero is a character device"):
        read_checkpoint_file("/dev/zero")


@pytest.mark.parametrize("legacy", [False, True])
def test_pytorch_file_named_safetensors_is_read_for_what_it_is(
    tmp_path: Path, legacy: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model.safetensors"
    torch.save(small_state(), path, _use_new_zipfile_serialization=not legacy)
    with caplog.at_level("WARNING", logger="dinov2_heads.checkpoints.reading"):
        assert_same(read_checkpoint_file(path), small_state())
        assert_same(read_checkpoint_file(path, mmap=True), small_state())
    assert "is a PyTorch file (torch.save" in caplog.text
    assert "not a safetensors file as its name says" in caplog.text


def test_safetensors_file_named_pth_is_read_for_what_it_is(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.pth"
    safetensors_torch.save_file(small_state(), str(path))
    assert_same(read_checkpoint_file(path), small_state())


def test_safetensors_every_dtype_and_shape(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = {
        "f32": torch.randn(3, 5),
        "f16": torch.randn(7).half(),
        "bf16": torch.randn(2, 2, 3).bfloat16(),
        "f64": torch.randn(1).double(),
        "i64": torch.arange(5),
        "i8": torch.arange(-3, 4, dtype=torch.int8),
        "u8": torch.arange(9, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "all.safetensors"
    safetensors_torch.save_file(state, str(path))
    for mmap in (False, True):
        got = read_checkpoint_file(path, mmap=mmap)
        assert got.keys() == state.keys()
        for key, tensor in state.items():
            assert got[key].dtype == tensor.dtype, key
            assert torch.equal(got[key], tensor), key


def _edit_safetensors_header(path: Path, edit: object) -> None:
    import json

    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    edit(header)  # type: ignore[operator]
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["weight"].update(shape=[3, 2, 1]), None),  # same size: a reshape, allowed
        (lambda h: h["weight"].update(shape=[2, 2]), r"'weight' has the shape \(2, 2\)"),
        (lambda h: h["weight"].update(shape=[2, 4]), r"but the file stores 24 bytes"),
        (lambda h: h["weight"].update(dtype="F16"), r"F16 \(12 bytes\)"),
        (lambda h: h["weight"].update(dtype="Q4"), r"unknown dtype 'Q4'"),
        (lambda h: h["weight"].update(data_offsets=[0, 24]), r"overlaps"),
        (lambda h: h["weight"].update(shape="big"), r"expected a list of sizes"),
    ],
)
def test_safetensors_shapes_must_match_the_bytes(
    tmp_path: Path, edit: object, message: str | None
) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(small_state(), str(path))
    _edit_safetensors_header(path, edit)
    if message is None:
        assert read_checkpoint_file(path)["weight"].shape == (3, 2, 1)
        return
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint_file(path, mmap=mmap)


def test_safetensors_with_bytes_after_the_last_tensor(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(small_state(), str(path))
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"16 bytes follow the last tensor"):
        read_checkpoint_file(path)


def _rewrite_zip(source: Path, target: Path, edit: object) -> None:
    """A valid archive (fresh checksums) whose pickled structure was edited by ``edit``."""
    import zipfile

    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename.endswith("/data.pkl"):
                data = edit(data)  # type: ignore[operator]
            out.writestr(info.filename, data)


def test_storage_size_edited_to_exceed_its_bytes_is_refused(tmp_path: Path) -> None:
    """A mapped read would take the bytes of the next member; a read without a map refuses."""
    path = tmp_path / "model.pth"
    torch.save({"a": torch.arange(1000.0), "b": torch.ones(10, 10)}, path)
    edited = tmp_path / "edited.pth"

    # The storage of "a" is pickled as ('storage', FloatStorage, '0', 'cpu', 1000).
    def edit(pickled: bytes) -> bytes:
        return pickled.replace(b"cpuq\x06M\xe8\x03", b"cpuq\x06M\xd0\x07")  # 1000 -> 2000

    _rewrite_zip(path, edited, edit)
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match=r"edited or damaged|truncated or corrupted"):
            read_checkpoint_file(edited, mmap=mmap)


def _flip(path: Path, member: str, offset: int) -> None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(next(n for n in archive.namelist() if n.endswith(member)))
    data = bytearray(path.read_bytes())
    name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    data[start + offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("member", "what"), [("/data/0", "a tensor's bytes"), ("/data.pkl", "the structure")]
)
def test_verify_finds_flipped_bytes(tmp_path: Path, member: str, what: str) -> None:
    from dinov2_heads.checkpoints import verify_checkpoint_file

    path = tmp_path / "model.pth"
    torch.save({"weight": torch.arange(1000.0)}, path)
    assert verify_checkpoint_file(path) > 0
    assert_same(read_checkpoint_file(path, verify=True), {"weight": torch.arange(1000.0)})
    # A bit flipped in the bytes of a member: read silently without verify (a number changed).
    _flip(path, member, 40 if member == "/data/0" else 2)
    if member == "/data/0":
        assert not torch.equal(read_checkpoint_file(path)["weight"], torch.arange(1000.0))
    with pytest.raises(CheckpointError, match=rf"failed verification: .*{member} \({what}\)"):
        read_checkpoint_file(path, verify=True)
    with pytest.raises(CheckpointError, match=r"failed verification"):
        verify_checkpoint_file(path)


def test_verify_says_when_a_format_has_no_checksums(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dinov2_heads.checkpoints import verify_checkpoint_file

    path = tmp_path / "old.pth"
    torch.save(small_state(), path, _use_new_zipfile_serialization=False)
    with caplog.at_level("WARNING"):
        assert verify_checkpoint_file(path) == 0
    assert "records no checksums" in caplog.text


def test_verify_checks_a_head_file(tmp_path: Path) -> None:
    """Head files that save_heads writes to .pt carry torch.save's checksums too."""
    from dinov2_heads.checkpoints import verify_checkpoint_file
    from dinov2_heads.export import save_heads
    from dinov2_heads.heads import LinearHead

    path = save_heads(tmp_path / "heads.pt", LinearHead(8, 3, class_names=["a", "b", "c"]))
    assert verify_checkpoint_file(path) > 0
    _flip(path, "/data/0", 3)
    with pytest.raises(CheckpointError, match=r"heads.pt failed verification"):
        verify_checkpoint_file(path)
