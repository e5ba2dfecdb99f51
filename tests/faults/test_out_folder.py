"""The output-folder rule: --out never deletes an input or a folder the command did not write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vpdd.utils.io import OutputFolderError, atomic_directory, check_output_dir, clean_stale_temporaries

from .conftest import run_cli


def _params(repo_root: Path) -> str:
    return str(repo_root / "params.yaml")


def test_ingest_out_equal_to_src_is_refused_and_keeps_the_videos(video_dir, repo_root):
    code, err = run_cli("data", "ingest-videos", video_dir, "--out", video_dir, "--params", _params(repo_root))
    assert code == 2 and "would delete the input" in err and "Traceback" not in err
    assert (video_dir / "good.mp4").is_file()


def test_ingest_out_containing_src_is_refused(video_dir, repo_root):
    parent = video_dir.parent
    code, err = run_cli("data", "ingest-videos", video_dir, "--out", parent, "--params", _params(repo_root))
    assert code == 2 and "contains the input" in err
    assert (video_dir / "good.mp4").is_file()


def test_ingest_out_inside_src_is_refused(video_dir, repo_root):
    code, err = run_cli("data", "ingest-videos", video_dir, "--out", video_dir / "clips",
                        "--params", _params(repo_root))
    assert code == 2 and "is inside the input" in err


def test_out_on_a_foreign_folder_is_refused_unless_forced(video_dir, tmp_path, repo_root):
    out = tmp_path / "models"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "weights").write_text("precious")
    code, err = run_cli("data", "ingest-videos", video_dir, "--out", out, "--params", _params(repo_root))
    assert code == 2 and "--force" in err and (out / "tokenizer" / "weights").is_file()
    code, _ = run_cli("data", "ingest-videos", video_dir, "--out", out, "--force", "--params", _params(repo_root))
    assert code == 0 and (out / "index.json").is_file() and not (out / "tokenizer").exists()


def test_rerun_over_our_own_output_needs_no_force(video_dir, tmp_path, repo_root):
    out = tmp_path / "corpus"
    for _ in range(2):
        code, err = run_cli("data", "ingest-videos", video_dir, "--out", out, "--params", _params(repo_root))
        assert code == 0, err


def test_training_out_on_a_parent_folder_is_refused_before_training(tmp_path, repo_root):
    models = tmp_path / "models"
    for name in ("tokenizer", "policy"):
        (models / name).mkdir(parents=True)
        (models / name / "meta.json").write_text("{}")
    code, err = run_cli("train", "pretrain", "--params", _params(repo_root), "--tokens", tmp_path / "t",
                        "--tokenizer", models / "tokenizer", "--out", models)
    assert code == 2 and "contains the input" in err
    assert (models / "policy" / "meta.json").is_file()
    code, err = run_cli("train", "pretrain", "--params", _params(repo_root), "--tokens", tmp_path / "t",
                        "--tokenizer", tmp_path / "tok", "--out", models)
    assert code == 2 and "did not write" in err and (models / "policy" / "meta.json").is_file()


@pytest.mark.parametrize("argv", [
    ["data", "collect-metaworld", "--out", "{out}"],
    ["data", "render-corpus", "--out", "{out}"],
    ["rlbench", "generate", "--out", "{out}"],
    ["rlbench", "export", "{src}", "--out", "{out}"],
    ["tokenizer", "encode", "--tokenizer", "{src}", "--robot", "{src}", "--out", "{out}"],
])
def test_every_folder_writing_command_refuses_a_foreign_folder(argv, tmp_path, repo_root):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    src = tmp_path / "src"
    src.mkdir()
    code, err = run_cli(*[a.format(out=out, src=src) for a in argv], "--params", _params(repo_root))
    assert code == 2 and str(out) in err and (out / "notes.txt").read_text() == "mine", err


def test_render_corpus_never_replaces_a_folder_of_real_videos(tmp_path, repo_root):
    """A folder of someone's videos is not the renderer's output just because it holds mp4 files; a folder
    holding only what the renderer writes is."""
    out = tmp_path / "videos"
    out.mkdir()
    (out / "holiday.mp4").write_bytes(b"not ours")
    code, err = run_cli("data", "render-corpus", "--out", out, "--params", _params(repo_root))
    assert code == 2 and (out / "holiday.mp4").read_bytes() == b"not ours"
    assert "did not write" in err, err
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "reach-v3_000.mp4").write_bytes(b"")
    (ours / "reach-v3_000.txt").write_text("Reach the goal.\n")
    from vpdd.data.collect import _rendered_corpus

    check_output_dir(ours, marker=_rendered_corpus)  # no error


def test_a_file_or_symlink_as_out_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputFolderError, match="not a folder"):
        check_output_dir(f)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(OutputFolderError):
        check_output_dir(link)


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path):
    out = tmp_path / "corpus"
    dead = tmp_path / ".corpus.999999999.abcd.tmp"  # no such pid
    legacy = tmp_path / ".corpus.k2j3h4.tmp"  # written before pids were in the name
    alive = tmp_path / f".corpus.{os.getpid()}.efgh.tmp"
    for d in (dead, legacy, alive):
        d.mkdir()
        (d / "blob").write_bytes(b"0" * 1000)
    with atomic_directory(out, marker="index.json") as tmp:
        (tmp / "index.json").write_text("{}")
    assert not dead.exists() and not legacy.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, alive.name])
    assert clean_stale_temporaries(out) == []  # ours is alive


def test_atomic_writes_leave_the_modes_a_plain_open_gives(tmp_path):
    """tempfile makes 0600 files and 0700 folders; what a command writes must be readable by others (the
    umask decides, as for a plain open/mkdir)."""
    import numpy as np

    from vpdd.utils.io import atomic_write_png

    old = os.umask(0o022)
    try:
        png = atomic_write_png(tmp_path / "fig.png", np.zeros((4, 4, 3), dtype=np.uint8))
        with atomic_directory(tmp_path / "out", check=False) as tmp:
            (tmp / "a.txt").write_text("x")
        os.umask(0o027)
        strict = atomic_write_png(tmp_path / "fig2.png", np.zeros((4, 4, 3), dtype=np.uint8))
    finally:
        os.umask(old)
    assert png.stat().st_mode & 0o777 == 0o644 and (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert strict.stat().st_mode & 0o777 == 0o640
