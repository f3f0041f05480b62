"""``dinov2-heads search``: neighbours printed with paths, the contact sheet, errors in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinov2_heads.cli import main

from .conftest import Files


@pytest.fixture(scope="module")
def store(files: Files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "store"
    argv = ["--quiet", "extract", "--checkpoint", str(files.checkpoint), "--out", str(out)]
    assert main([*argv, "--size", "28", "56", str(files.folder)]) == 0
    return out


def stored_paths(store: Path) -> list[str]:
    return list(json.loads((store / "dataset.json").read_text(encoding="utf-8"))["paths"])


def test_finds_the_query_itself_first_and_writes_the_sheet(
    files: Files, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = stored_paths(store)
    queries = [paths[5], paths[2]]
    out = tmp_path / "sheets" / "sheet.png"
    argv = ["search", str(store), *queries, "--checkpoint", str(files.checkpoint)]
    capsys.readouterr()
    assert main([*argv, "-k", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"query {queries[0]}"
    assert printed[1].split() == ["rank", "similarity", "id", "path"]
    rank, similarity, sample_id, path = printed[2].split()
    # The store holds the query image itself: similarity 1 (float16 storage), its id and path.
    assert (rank, sample_id, path) == ("1", "5", paths[5])
    assert float(similarity) == pytest.approx(1.0, abs=1e-3)
    assert [float(line.split()[1]) for line in printed[2:5]] == sorted(
        (float(line.split()[1]) for line in printed[2:5]), reverse=True
    )
    assert printed[5] == f"query {queries[1]}"
    assert printed[7].split()[2:] == ["2", paths[2]]
    assert printed[-1] == f"wrote {out}: 2 query image(s), 3 neighbours each"

    from PIL import Image

    with Image.open(out) as picture:
        assert picture.width == 4 + 4 * (56 + 4)  # the query and 3 neighbours of 28x56
        assert "3 most similar stored images" in picture.info["Description"]
        assert "class features" in picture.info["Description"]


def test_a_store_without_paths_still_searches(
    files: Files, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for item in store.iterdir():
        if item.name != "dataset.json":
            (bare / item.name).write_bytes(item.read_bytes())
    out = tmp_path / "s.png"
    argv = ["search", str(bare), str(files.images[0]), "--checkpoint", str(files.checkpoint)]
    capsys.readouterr()
    assert main([*argv, "-k", "2", "--out", str(out), "--pooling", "patch_mean"]) == 0
    printed = capsys.readouterr().out
    assert "the store has no image paths" in printed
    lines = printed.splitlines()
    assert lines[2].split()[-1] == "-"  # no path column
    assert out.is_file()


def test_errors_are_one_line(
    files: Files, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query = str(files.images[0])
    base = ["search", str(store), query, "--out", str(tmp_path / "x.png")]
    capsys.readouterr()
    assert main([*base, "--checkpoint", str(files.other_checkpoint)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dinov2-heads search: error: the feature store at")
    assert "other backbone weights" in err

    assert main([*base, "--checkpoint", str(files.checkpoint), "-k", "50"]) == 1
    assert "k = 50 is larger than the searched set (8 samples)" in capsys.readouterr().err

    assert main([*base, "--checkpoint", str(files.checkpoint), "--size", "56", "56"]) == 1
    err = capsys.readouterr().err
    assert "--preset / --size must prepare the queries as the stored images were" in err
    assert "leave both out" in err

    missing = ["search", str(tmp_path / "nowhere"), query, "--checkpoint", str(files.checkpoint)]
    assert main(missing) == 1
    assert "no feature store at" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_faiss_backend_or_its_install_hint(
    files: Files, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", str(store), str(files.images[0]), "--checkpoint", str(files.checkpoint)]
    argv += ["--backend", "faiss", "--out", str(tmp_path / "f.png")]
    try:
        import faiss  # noqa: F401
    except ImportError:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "pip install faiss-cpu" in err
        assert "--backend faiss needs faiss" in err  # the option, not the Python argument
        assert "--backend torch (the default) needs nothing more" in err
    else:
        assert main(argv) == 0
        assert (tmp_path / "f.png").is_file()


def test_help_lists_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "contact sheet" in capsys.readouterr().out


def test_the_demos_feature_cache_is_searched_with_its_samples(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo's stores record their preset by name ("vehicle_crop"); a newcomer searches them
    # with the demo's own samples, with or without naming the preset.
    demo = tmp_path / "demo"
    sizes = ["--num-train", "16", "--num-heldout", "4", "--epochs", "1", "--no-parts"]
    argv = ["demo", "--out", str(demo), *sizes, "--no-depth", "--quiet"]
    assert main([*argv, "--checkpoint", str(files.checkpoint)]) == 0
    query = sorted((demo / "samples").glob("*.png"))[0]
    search = ["search", str(demo / "features" / "heldout"), str(query), "-k", "2"]
    search += ["--checkpoint", str(files.checkpoint), "--out", str(tmp_path / "s.png")]
    for preset in ([], ["--preset", "vehicle_crop"]):
        capsys.readouterr()
        assert main([*search, *preset]) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        rank, similarity, sample_id, path = printed.splitlines()[2].split()
        assert (rank, sample_id) == ("1", "0")  # the held-out set's first image is the sample
        assert float(similarity) == pytest.approx(1.0, abs=1e-3)
        # The demo's stores list their images: the sheet shows them, not grey tiles.
        assert Path(path).read_bytes() == query.read_bytes()
        assert "grey tiles" not in printed
    assert main([*search, "--preset", "official_eval"]) == 1
    assert "must prepare the queries as the stored images were" in capsys.readouterr().err
