"""The newcomer's path, as a newcomer takes it: the wheel into a fresh environment, then the CLI.

A new virtual environment gets the CPU torch wheel and nothing else; the project's wheel is
built and installed into it (its other dependencies come from the package index), and the
README's demo command runs exactly as printed, then ``train`` on the demo's feature store as the
demo suggests, then ``predict`` with the trained heads, and ``extract`` and ``pca`` on image
files. The quickstart's transcript of the demo is compared with what the demo really printed,
and the README's own install line is run too.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest

from dinov2_heads.demo import COLOURS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART = ROOT / "docs" / "quickstart.md"
#: The torch the tests run with: on this project's machines a local CPU wheel.
TORCH = "torch==2.13.0"


def command_after(marker: str, text: str) -> str:
    """The line after the fence that follows ``marker`` (how ``.ci/run`` reads the README)."""
    lines = text.splitlines()
    start = lines.index(marker)
    assert lines[start + 1].startswith("```"), f"{marker} is not followed by a fenced block"
    return lines[start + 2].strip()


def block_after(marker: str, text: str) -> str:
    """The whole fenced block that follows ``marker``."""
    after = text.split(marker, 1)[1]
    match = re.search(r"```[a-z]*\n(.*?)^```", after, re.S | re.M)
    assert match is not None, f"no fenced block after {marker}"
    return match.group(1)


def test_the_readme_names_its_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert command_after("<!-- setup-command -->", text).startswith(f"pip install {TORCH}")
    assert command_after("<!-- demo-command -->", text) == "dinov2-heads demo"
    assert command_after("<!-- test-command -->", text) == "python -m pytest -q"


class Environment:
    """A fresh virtual environment and a shell whose PATH starts in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        self.bin = root / "bin"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        }
        self.env["PATH"] = f"{self.bin}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["VIRTUAL_ENV"] = str(root)
        self.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def shell(self, command: str, cwd: Path, timeout: float = 600) -> str:
        """Run ``command`` as a user would type it; its standard output, or a failure."""
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, (
            f"`{command}` exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return done.stdout

    def packages(self) -> set[str]:
        listed = self.shell("python -m pip list --format freeze", self.root)
        return {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines()}


def normalised(transcript: str) -> tuple[str, list[float]]:
    """The transcript with the seconds and the scores taken out, and the accuracies."""
    accuracy = re.compile(r"(\d+\.\d)%(?=\s+\d+\.\d%$)", re.M)
    values = [float(value) for value in accuracy.findall(transcript)]
    text = accuracy.sub("ACC%", transcript)
    text = re.sub(r"done in \d+ s", "done in N s", text)
    # The parts and depth scores are compared as tables of numbers: float sums differ between
    # CPUs.
    for heading in ("vehicle parts, held out", "depth, held out"):
        text = re.sub(
            rf"(?ms)^{heading}.*?(?=^\s*$)",
            lambda block: re.sub(r" *\d+\.\d+%?", " X", block.group(0)),
            text,
        )
    return text.strip(), values


def check_wheel(wheel: Path) -> None:
    """The wheel holds the package, its types marker and its metadata, and nothing else."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode("utf-8")
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    folders = {name.split("/")[0] for name in names}
    assert folders == {"dinov2_heads", info.split("/")[0]}, folders  # no tests, no stray files
    assert "dinov2_heads/py.typed" in names
    assert "dinov2_heads/__main__.py" in names  # python -m dinov2_heads
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert "dinov2-heads = dinov2_heads.cli:entry_point" in entry_points
    headers = dict(
        line.split(": ", 1) for line in metadata.split("\n\n", 1)[0].splitlines() if ": " in line
    )
    assert headers["License-Expression"] == "Apache-2.0"
    assert headers["Requires-Python"] == ">=3.10"
    assert headers["Description-Content-Type"] == "text/markdown"
    assert "Provides-Extra: export" in metadata
    # The long description is the README with every link absolute: relative ones break on the
    # package index.
    description = metadata.split("\n\n", 1)[1]
    assert description.startswith("# dinov2-heads")
    links = re.findall(r"\]\(([^)\s]+)\)", description)
    assert links, "the README has links"
    assert all(link.startswith("https://") for link in links), links


@pytest.mark.slow
def test_the_wheel_with_torch_alone_runs_demo_train_and_predict(tmp_path: Path) -> None:
    python = Environment(tmp_path / "venv")
    python.shell(f"python -m pip install --quiet {TORCH}", tmp_path)
    dist = tmp_path / "dist"
    python.shell(f"python -m pip wheel --quiet --no-deps -w {dist} {shlex.quote(str(ROOT))}", ROOT)
    (wheel,) = dist.glob("dinov2_heads-*.whl")
    check_wheel(wheel)
    python.shell(f"python -m pip install --quiet {wheel}", tmp_path)
    installed = python.packages()
    needed = {"torch", "dinov2-heads", "pillow", "safetensors", "tqdm", "numpy", "einops"}
    assert needed <= installed
    # Nothing optional came along: the main jobs run without the extras.
    assert not {"matplotlib", "onnx", "onnxruntime", "pytest"} & installed

    work = tmp_path / "work"
    work.mkdir()
    readme = README.read_text(encoding="utf-8")
    printed = python.shell(command_after("<!-- demo-command -->", readme), work)

    # The quickstart shows what the demo prints: the same lines, the accuracies within a few
    # held-out images (float sums differ slightly between CPUs), and any duration.
    shown = block_after("<!-- demo-transcript -->", QUICKSTART.read_text(encoding="utf-8"))
    expected_text, expected = normalised(shown)
    got_text, got = normalised(printed)
    assert got_text == expected_text
    assert len(got) == len(expected) == 4
    assert all(abs(a - b) <= 2.5 for a, b in zip(got, expected, strict=True)), (got, expected)

    # The demo's own suggestion: train the grid on its feature store, as printed.
    train = next(line.strip() for line in printed.splitlines() if "dinov2-heads train" in line)
    trained = python.shell(train, work)
    assert "linear heads" in trained
    heads = work / "dinov2-heads-demo" / "colour-probe" / "heads.pt"
    assert f"wrote {heads.relative_to(work)}:" in trained
    assert (heads.parent / "results.json").is_file()

    # Its heads label the demo's samples with colour names, on the demo's backbone.
    predicted = python.shell(
        "dinov2-heads predict --heads dinov2-heads-demo/colour-probe/heads.pt "
        "--checkpoint dinov2-heads-demo/backbone.pth dinov2-heads-demo/samples",
        work,
    )
    rows = predicted.strip().splitlines()
    assert rows[0].split() == ["image", "colour"]
    assert len(rows) == 1 + 8
    assert all(row.split()[1] in COLOURS for row in rows[1:]), predicted

    # Extract and pca, which read image files (Pillow), on the demo's samples.
    backbone = "--checkpoint dinov2-heads-demo/backbone.pth --preset vehicle_crop"
    extracted = python.shell(
        f"dinov2-heads extract {backbone} --out sample-features dinov2-heads-demo/samples", work
    )
    assert "8 samples" in extracted
    pictured = python.shell(f"dinov2-heads pca {backbone} dinov2-heads-demo/samples", work)
    assert pictured.startswith("wrote pca.png: 8 image(s) at 126x252")

    # The README's install line, exactly as printed, in the project folder.
    python.shell(command_after("<!-- setup-command -->", readme), ROOT)
    assert python.shell("dinov2-heads --version", work).startswith("dinov2-heads ")


def test_the_version_and_the_dependencies_are_the_packages() -> None:
    tomllib = pytest.importorskip("tomllib")

    import dinov2_heads

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert dinov2_heads.__version__ == project["version"]
    dependencies = {re.split(r"[<>=; ]", item)[0].lower() for item in project["dependencies"]}
    assert dependencies == {
        "torch",
        "einops",
        "numpy",
        "typing-extensions",
        "pillow",
        "safetensors",
        "tqdm",
    }
