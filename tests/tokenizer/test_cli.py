"""``vpdd tokenizer encode/reconstruct`` through the real CLI entry point, and the encode benchmark."""

from __future__ import annotations

import json

import pytest

from vpdd.cli import main
from vpdd.data.video import read_video
from vpdd.tokenizer.cache import TokenCache
from vpdd.tokenizer.train import train_tokenizer

from .conftest import RES, tiny_config
from .test_train import _write_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory, robot_root):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(tiny_config(steps=3), out, robot_root, None, None, data_dvc=None)
    return out


def test_encode_command(tmp_path, trained, robot_root, corpus_root, capsys):
    cfg = tiny_config()
    params = _write_params(
        tmp_path / "params.yaml",
        resolution=RES,
        n_codes=cfg.n_codes,
        embedding_dim=cfg.embedding_dim,
        n_hiddens=cfg.n_hiddens,
    )
    rc = main(
        [
            "tokenizer",
            "encode",
            "--params",
            str(params),
            "--tokenizer",
            str(trained),
            "--robot",
            str(robot_root),
            "--corpus",
            str(corpus_root),
            "--out",
            str(tmp_path / "tokens"),
        ]
    )
    assert rc == 0 and "token cache" in capsys.readouterr().out
    assert TokenCache(tmp_path / "tokens").sources == ["robot", "corpus"]
    # params that disagree with the checkpoint: a clear error, exit code 2, nothing written
    bad = _write_params(tmp_path / "bad.yaml", resolution=RES, n_codes=64)
    rc = main(
        [
            "tokenizer",
            "encode",
            "--params",
            str(bad),
            "--tokenizer",
            str(trained),
            "--robot",
            str(robot_root),
            "--out",
            str(tmp_path / "tokens2"),
        ]
    )
    assert rc == 2 and "n_codes: checkpoint 32 vs params 64" in capsys.readouterr().err
    assert not (tmp_path / "tokens2").exists()


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_reconstruct_command(tmp_path, trained, robot_root, fmt):
    rc = main(
        [
            "tokenizer",
            "reconstruct",
            "--tokenizer",
            str(trained),
            "--robot",
            str(robot_root),
            "--n",
            "2",
            "--out",
            str(tmp_path / "videos"),
            "--format",
            fmt,
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "videos" / "psnr.json").read_text())
    assert len(report["videos"]) == 2
    first = report["videos"][0]
    if fmt == "mp4":
        frames = read_video(first["video"])
    else:
        from PIL import Image, ImageSequence

        frames = [f.copy() for f in ImageSequence.Iterator(Image.open(first["video"]))]
        frames = [__import__("numpy").asarray(f.convert("RGB")) for f in frames]
    assert len(frames) == first["frames"] and frames[0].shape == (
        RES,
        2 * RES,
        3,
    )  # original | reconstruction


def test_encode_benchmark_writes_results(tmp_path, trained):
    from vpdd.tokenizer.benchmark import main as bench

    out = tmp_path / "bench.json"
    assert (
        bench(
            [
                "--tokenizer",
                str(trained),
                "--presets",
                "tiny",
                "--seconds",
                "0.2",
                "--batch-size",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rec = json.loads(out.read_text())
    assert rec["device"] == "cpu" and rec["machine"]["cpu_count"] and rec["machine"]["date"]
    assert [r["model"].split()[0] for r in rec["results"]] == ["checkpoint", "preset"]
    assert all(r["clips_per_s"] > 0 and r["batches"] >= 3 for r in rec["results"])
    assert rec["results"][1]["latent_shape"] == [1, 16, 16]
