"""The tokenize stage: cache layout, window convention, pairing, lineage, and mismatch errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vpdd.data.episodes import DataFormatError, load_episode
from vpdd.runtime.checkpoint import checkpoint_hash
from vpdd.tokenizer.cache import TokenCache, TokenCacheError
from vpdd.tokenizer.encode import TokenizerMismatch, encode_dataset
from vpdd.tokenizer.model import to_model_input
from vpdd.tokenizer.pretrained import load_tokenizer
from vpdd.tokenizer.train import train_tokenizer

from .conftest import tiny_config, write_corpus_root, write_robot_root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, robot_root, corpus_root):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(tiny_config(steps=4), out, robot_root, corpus_root, None, data_dvc=None)
    return out


def test_cache_layout_windows_and_pairs(tmp_path, trained, robot_root, corpus_root):
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: 0123456789abcdef.dir\n  path: data\n")
    manifest = encode_dataset(trained, tmp_path / "tokens", robot_root, corpus_root, data_dvc=dvc_file)
    assert manifest["data_version"] == "0123456789abcdef.dir"
    assert manifest["tokenizer"]["checkpoint_hash"] == checkpoint_hash(trained)
    assert manifest["inputs"]["robot"]["index_sha256"] and manifest["inputs"]["corpus"]["clip_length"] == 8

    cache = TokenCache(tmp_path / "tokens")
    assert cache.sources == ["robot", "corpus"] and cache.grid_shape == (1, 4, 4) and cache.n_codes == 32
    cache.check_tokenizer(trained)
    robot = cache["robot"]
    index = json.loads((robot_root / "index.json").read_text())["episodes"]
    lengths = [e["length"] for e in index]
    assert robot.n_items == len(index) and len(robot) == sum(lengths)
    assert isinstance(robot.tokens, np.memmap) and robot.tokens.dtype == np.uint16
    # one grid per step; row s of an episode encodes frames s-3..s with the first frame repeated
    model, cfg, _ = load_tokenizer(trained)
    e = 1
    ep = load_episode(robot_root / robot.items[e]["path"])
    rows = robot.item_tokens(e)
    assert rows.shape == (len(ep), 1, 4, 4) and robot.steps[robot.item_rows(e)].tolist() == list(range(len(ep)))
    for s in (0, 2, 3, len(ep) - 1):
        idx = np.maximum(np.arange(s - 3, s + 1), 0)
        direct = model.encode(to_model_input(torch.from_numpy(ep.frames[idx][None])))[0].numpy()
        assert np.array_equal(rows[s], direct), s
    # pairs: history s, target min(s + 20, T - 1) within the same episode
    hist, tgt = robot.pair_rows(20)
    assert len(hist) == len(robot)
    start = robot.offsets[e]
    for s in range(len(ep)):
        j = start + s
        assert hist[j] == j and tgt[j] == start + min(s + 20, len(ep) - 1)
    assert (robot.item_of(hist) == robot.item_of(tgt)).all()
    h, t = robot.pairs(20, np.random.default_rng(0), 5)
    assert h.shape == t.shape == (5, 1, 4, 4) and h.dtype == np.int64
    assert robot.select(task="push-v3").tolist() == [i for i, r in enumerate(robot.items) if r["task"] == "push-v3"]
    assert robot.items[0]["instruction"].startswith("do ")

    corpus = cache["corpus"]
    cindex = json.loads((corpus_root / "index.json").read_text())["videos"]
    assert len(corpus) == sum(v["n_clips"] for v in cindex)
    # corpus rows: one per ingested clip, the clip's first window (ends at start + 3)
    rec = corpus.items[0]
    assert corpus.steps[corpus.item_rows(0)].tolist() == [8 * j + 3 for j in range(rec["rows"])]
    assert rec["caption"]


def test_cache_is_deterministic(tmp_path, trained, robot_root):
    encode_dataset(trained, tmp_path / "a", robot_root, None, data_dvc=None)
    encode_dataset(trained, tmp_path / "b", robot_root, None, data_dvc=None, batch_size=3)
    for name in (
        "manifest.json",
        "robot/tokens.npy",
        "robot/offsets.npy",
        "robot/steps.npy",
        "robot/items.json",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert TokenCache(tmp_path / "a").data_version is None


def test_mismatches_are_named(tmp_path, trained):
    big = write_robot_root(tmp_path / "big", [8, 8], res=32)
    message = r"tokenizer \(checkpoint .*\) works on 16x16 frames, but .*big holds 32x32 frames"
    with pytest.raises(DataFormatError, match=message):
        encode_dataset(trained, tmp_path / "tokens", big, None, data_dvc=None)
    short = write_corpus_root(tmp_path / "short", [12, 12], clip_length=2)
    with pytest.raises(TokenizerMismatch, match="clips of 2 frames, but the tokenizer .* windows of 4 frames"):
        encode_dataset(trained, tmp_path / "tokens", None, short, data_dvc=None)
    with pytest.raises(TokenizerMismatch, match=r"resolution: checkpoint 16 vs params 64"):
        encode_dataset(trained, tmp_path / "tokens", big, None, params=tiny_config(resolution=64), data_dvc=None)
    assert not (tmp_path / "tokens").exists()
    with pytest.raises(TokenCacheError, match="manifest.json: missing"):
        TokenCache(tmp_path / "tokens")
