"""A loaded backbone owns its memory: the file can be rewritten or cut without touching it.

Each case runs in a child process: with ``mmap=True`` truncating the file kills the process that
holds the model (``SIGBUS``), which is the documented hazard of that option.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import dinov2_heads

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file semantics")

#: Load, rewrite the file in place with other weights, check, truncate it, run again.
CHILD = """
import os, sys, torch
from dinov2_heads import create_backbone
from dinov2_heads.checkpoints import load_backbone

path, mode, kind = sys.argv[1], sys.argv[2], sys.argv[3]

def state(seed):
    torch.manual_seed(seed)
    model = create_backbone("dinov2_vits14", depth=2, embed_dim=128, num_heads=2, img_size=56)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model.state_dict()

def save(sd):
    if kind == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, path)
    else:
        torch.save(sd, path)

first, second = state(0), state(1)
save(first)
model = load_backbone(path, mmap=mode == "mmap")
x = torch.randn(1, 3, 56, 56)
with torch.no_grad():
    before = model(x)
size = os.path.getsize(path)
save(second)  # the same names and shapes: the same size, written over the same inode
assert os.path.getsize(path) == size
same = all(torch.equal(t, first[k]) for k, t in model.state_dict().items())
print("unchanged after rewrite" if same else "changed after rewrite", flush=True)
os.truncate(path, 100)
with torch.no_grad():
    after = model(x)
print("same output after truncation" if torch.equal(before, after) else "other output", flush=True)
"""


def run_child(path: Path, mode: str, kind: str) -> subprocess.CompletedProcess[str]:
    src = str(Path(dinov2_heads.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, kind],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("kind", ["zip", "safetensors"])
def test_rewriting_or_truncating_the_file_leaves_the_loaded_model_alone(
    tmp_path: Path, kind: str
) -> None:
    if kind == "safetensors":
        pytest.importorskip("safetensors")
    done = run_child(tmp_path / f"model.{kind}", "owned", kind)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        "unchanged after rewrite",
        "same output after truncation",
    ]


def test_mmap_true_shares_the_files_pages_with_its_hazard(tmp_path: Path) -> None:
    """What docs/checkpoints.md warns of: the mapped model follows the file, and dies with it."""
    done = run_child(tmp_path / "model.pth", "mmap", "zip")
    assert done.stdout.startswith("changed after rewrite")
    assert done.returncode == -signal.SIGBUS
