"""Tokenizer training: outputs, exact resume after an injected stop or SIGKILL, divergence guard, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vpdd.data.episodes import DataFormatError
from vpdd.runtime.checkpoint import CheckpointError, load_checkpoint
from vpdd.runtime.guard import TrainingDiverged
from vpdd.tokenizer.model import VQVAE
from vpdd.tokenizer.train import train_tokenizer

from .conftest import RES, subprocess_env, tiny_config


def _state(out: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(out, training_state=True)
    flat = dict(ck.weights)
    flat.update({f"ema.{k}": v for k, v in ck.training_state["ema"].items()})
    for pid, st in ck.training_state["optimizer"]["state"].items():
        flat.update({f"opt.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return flat


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"resumed run differs from the uninterrupted one in {different[:5]}"


def test_train_writes_checkpoint_metrics_and_grid(tmp_path, robot_root, corpus_root):
    cfg = tiny_config(steps=6)
    res = train_tokenizer(cfg, tmp_path / "ckpt", robot_root, corpus_root, tmp_path / "live", data_dvc=None)
    assert res.step == 6 and res.resumed_from is None
    assert set(res.metrics) == {"psnr", "ssim", "usage", "perplexity"}
    ck = load_checkpoint(tmp_path / "ckpt", training_state=True)
    assert ck.config["kind"] == "vpdd-tokenizer" and ck.config["latent_shape"] == [1, 4, 4]
    assert ck.step == 6 and ck.meta["data_version"] is None and len(ck.meta["heldout"]) >= 2
    assert "codebook.ema_count" not in ck.weights and "ema_count" in ck.training_state["ema"]
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["step"] == 6 and 0 <= metrics["eval"]["usage"] <= 1 and metrics["eval"]["psnr"] > 5
    assert metrics["train_seconds"] > 0
    loss_rows = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [r.split("\t")[-2] for r in loss_rows[1:]] == ["2", "4", "6"]
    grid = Image.open(tmp_path / "live" / "recon_grid.png")
    # 4 held-out clips x (original row + reconstruction row) of 4 frames, scaled x2, below a title line and
    # beside a margin naming the rows (truth / recon)
    from vpdd.utils.figures import TEXT_H, text_width

    margin = text_width("recon") + 6
    assert grid.size == (2 * max(margin + 4 * RES + 3 * 2, text_width("held-out clips, frames t = 0..3 ->") + 4),
                         2 * (TEXT_H + 8 * RES + 4 * 2 + 3 * 6))
    assert not (tmp_path / "live" / "dvc.yaml").exists()


def test_injected_stop_then_resume_matches_uninterrupted(tmp_path, robot_root, corpus_root):
    cfg = tiny_config(steps=7, checkpoint_every=3, eval_every=100)
    train_tokenizer(cfg, tmp_path / "a", robot_root, corpus_root, tmp_path / "live_a", data_dvc=None)

    def stop_at_5(step):
        if step == 5:
            raise KeyboardInterrupt("injected stop")

    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(
            cfg,
            tmp_path / "b",
            robot_root,
            corpus_root,
            tmp_path / "live_b",
            data_dvc=None,
            step_hook=stop_at_5,
        )
    assert load_checkpoint(tmp_path / "b").step == 3  # the last checkpoint before the stop
    res = train_tokenizer(cfg, tmp_path / "b", robot_root, corpus_root, tmp_path / "live_b", data_dvc=None)
    assert res.resumed_from == 3 and res.step == 7
    _assert_same_state(tmp_path / "a", tmp_path / "b")
    # the learning curve has each step once, as in the uninterrupted run
    curve = lambda d: (d / "plots/metrics/train/loss.tsv").read_text().splitlines()  # noqa: E731
    rows_a, rows_b = curve(tmp_path / "live_a"), curve(tmp_path / "live_b")
    assert [r.split("\t")[0] for r in rows_b] == ["step", "2", "4", "6", "7"]
    # values are window means: equal except at step 4, whose window after the resume holds only step 4
    assert rows_a[:2] == rows_b[:2] and rows_a[3:] == rows_b[3:]


def _write_params(path: Path, **tok) -> Path:
    from vpdd.config import compose, write_params

    repo = Path(__file__).resolve().parents[2]
    overrides = [f"env.resolution={RES}"] + [f"tokenizer.{k}={v}" for k, v in tok.items()]
    return write_params(compose(overrides, repo / "conf"), path)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vpdd.cli.tokenizer", *args]


TEST_TOK = dict(
    resolution=RES,
    n_codes=32,
    embedding_dim=8,
    n_hiddens=16,
    n_res_layers=1,
    batch_size=4,
    lr=1e-3,
    eval_clips=8,
    eval_every=1000,
    log_every=5,
    heldout_fraction=0.2,
)


def test_sigkill_midway_then_resume(tmp_path, robot_root, corpus_root):
    params = _write_params(tmp_path / "params.yaml", steps=400, checkpoint_every=4, **TEST_TOK)
    out, live = tmp_path / "ckpt", tmp_path / "live"
    cmd = _cli(
        "train",
        "--params",
        str(params),
        "--robot",
        str(robot_root),
        "--corpus",
        str(corpus_root),
        "--out",
        str(out),
        "--live",
        str(live),
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env())
    deadline = time.time() + 120
    try:
        while not (out / "meta.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(0.3)  # let it get into the middle of later steps / saves
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(out, training_state=True).step  # complete and verified despite the kill
    assert 4 <= killed_at < 400 and killed_at % 4 == 0
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt")]
    steps = killed_at + 6
    from vpdd.config import load_config

    cfg = load_config(params).tokenizer
    cfg.steps = steps
    res = train_tokenizer(cfg, out, robot_root, corpus_root, live, data_dvc=None)
    assert res.resumed_from == killed_at and res.step == steps
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt")], leftovers
    train_tokenizer(cfg, tmp_path / "straight", robot_root, corpus_root, None, data_dvc=None)
    _assert_same_state(tmp_path / "straight", out)


def test_sigterm_saves_and_exits(tmp_path, robot_root):
    params = _write_params(tmp_path / "params.yaml", steps=100000, checkpoint_every=100000, **TEST_TOK)
    out = tmp_path / "ckpt"
    proc = subprocess.Popen(
        _cli(
            "train",
            "--params",
            str(params),
            "--robot",
            str(robot_root),
            "--out",
            str(out),
            "--live",
            str(tmp_path / "live"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    deadline = time.time() + 120
    while not (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = load_checkpoint(out).step
    assert step >= 5 and f"stopped by a signal at step {step}" in err


def _nan_after(monkeypatch, at_call: int, factor: float):
    calls = {"n": 0}
    real = VQVAE.forward

    def forward(self, x, generator=None):
        loss, info = real(self, x, generator)
        calls["n"] += 1
        if calls["n"] > at_call:
            loss = loss * factor
        return loss, info

    monkeypatch.setattr(VQVAE, "forward", forward)


@pytest.mark.parametrize("factor,message", [(float("nan"), "is not finite"), (1e6, "exceeds 50x its running mean")])
def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, robot_root, monkeypatch, factor, message):
    cfg = tiny_config(steps=20, checkpoint_every=4, eval_every=1000)
    _nan_after(monkeypatch, 13, factor)  # the 14th forward (step 13) goes bad
    with pytest.raises(TrainingDiverged, match=message) as err:
        train_tokenizer(cfg, tmp_path / "ckpt", robot_root, None, tmp_path / "live", data_dvc=None)
    assert "step 13" in str(err.value) and "last good checkpoint" in str(err.value)
    ck = load_checkpoint(tmp_path / "ckpt", training_state=True)
    assert ck.step == 12 and all(torch.isfinite(v).all() for v in ck.weights.values() if v.is_floating_point())


def test_resume_only_the_same_run(tmp_path, robot_root, corpus_root):
    ck = tmp_path / "ckpt"

    def run(cfg, corpus=None, resume="strict"):
        return train_tokenizer(cfg, ck, robot_root, corpus, None, data_dvc=None, resume=resume)

    run(tiny_config(steps=2))
    # more steps, same run: continues
    assert run(tiny_config(steps=3)).resumed_from == 2
    # other architecture or other data: refused by default, naming what differs
    with pytest.raises(CheckpointError, match=r"n_hiddens: checkpoint 16 vs params 8"):
        run(tiny_config(steps=4, n_hiddens=8))
    with pytest.raises(CheckpointError, match=r"corpus index changed.*--restart-if-changed"):
        run(tiny_config(steps=4), corpus=corpus_root)
    # --restart-if-changed ("auto") starts over; --fresh ("never") always does
    res = run(tiny_config(steps=2, n_hiddens=8), resume="auto")
    assert res.resumed_from is None and load_checkpoint(ck).config["tokenizer"]["n_hiddens"] == 8
    assert run(tiny_config(steps=3, n_hiddens=8), resume="auto").resumed_from == 2
    assert run(tiny_config(steps=3, n_hiddens=8), resume="never").resumed_from is None


def test_resolution_mismatch_names_both(tmp_path, robot_root):
    message = rf"tokenizer \(params tokenizer.resolution\) works on 32x32 frames, but .* holds {RES}x{RES} frames"
    with pytest.raises(DataFormatError, match=message):
        train_tokenizer(tiny_config(resolution=32), tmp_path / "ckpt", robot_root, None, None, data_dvc=None)
    assert not (tmp_path / "ckpt").exists()


def test_batches_depend_only_on_seed_rank_step(robot_root, corpus_root):
    from vpdd.tokenizer.data import ClipSampler, load_items, window_indices

    items = load_items(robot_root, corpus_root)
    s = ClipSampler(items, 4, 0.5, seed=3)
    assert np.array_equal(s.sample(10, 8), s.sample(10, 8))
    assert not np.array_equal(s.sample(10, 8), s.sample(11, 8))
    assert not np.array_equal(s.sample(10, 8, rank=0), s.sample(10, 8, rank=1))
    assert window_indices(1, 4).tolist() == [0, 0, 0, 1] and window_indices(9, 4).tolist() == [6, 7, 8, 9]
