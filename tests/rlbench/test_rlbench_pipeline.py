"""Generated PerAct episodes through tokenization, multi-view pre-training, keyframe fine-tuning of a tiny
model and keyframe prediction (library and CLI); the RLBench config's value checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vpdd.config import ConfigError
from vpdd.models.checkpoint import KIND_POLICY, KIND_PRETRAIN, load_vpdd_checkpoint
from vpdd.rlbench.keyframes import PoseActionCoder, discover_keyframes, keyframe_targets
from vpdd.rlbench.reader import list_episodes, load_episode
from vpdd.rlbench.training import KeyframeFinetuneData, MultiViewPairs
from vpdd.tokenizer.cache import TokenCache


def test_the_token_cache_holds_every_camera_of_every_episode(rlb_tokens, rlb):
    cache = TokenCache(rlb_tokens["tokens"])
    src = cache["robot"]
    refs = list_episodes(rlb_tokens["data"])
    assert src.n_items == len(refs) * 4 and cache.grid_shape == (1, 4, 4)
    keys = {(r["episode"], r["view"]) for r in src.items}
    assert keys == {(ref.rel, c) for ref in refs for c in rlb.CAMERAS}
    rec = next(r for r in src.items if r["episode"] == refs[0].rel)
    ep = load_episode(refs[0], rlb.CAMERAS)
    assert rec["length"] == len(ep) and rec["instruction"] == ep.instruction and rec["task"] == refs[0].task
    # the views of one pair sit one after another, in camera order, at the same step
    pairs = MultiViewPairs(src, rlb.CAMERAS, offset=4)
    assert len(pairs) == sum(r["length"] for r in src.items) // 4 and pairs.hist.shape[1] == 4
    p = 7
    tokens = pairs.tokens(pairs.hist[p : p + 1])[0].reshape(4, -1)
    ep_rel, s = pairs.episodes[pairs.episode[p]], int(pairs.step[p])
    for v, cam in enumerate(rlb.CAMERAS):
        item = next(i for i, r in enumerate(src.items) if r["episode"] == ep_rel and r["view"] == cam)
        assert torch.equal(tokens[v], torch.from_numpy(src.item_tokens(item)[s].reshape(-1).astype(np.int64)))
    n = int(src.items[0]["length"])
    assert int(pairs.tgt[n - 1, 0] - pairs.hist[n - 1, 0]) == 0  # the target is clamped at the episode end
    with pytest.raises(Exception, match="no tokens for cameras"):
        MultiViewPairs(src, [*rlb.CAMERAS, "overhead"], offset=4)


def test_finetune_data_targets_are_the_next_keyframes(rlb_tokens, rlb):
    cfg = rlb.config()
    data = KeyframeFinetuneData(TokenCache(rlb_tokens["tokens"]), rlb_tokens["data"], cfg.rlbench)
    assert len(data.pairs.episodes) == 2 * len(rlb.TASKS)  # finetune.demos_per_task of each task
    assert data.action_bins.shape == (len(data.pairs), 28) and data.views == 4
    coder = data.discretizer
    assert isinstance(coder, PoseActionCoder) and coder.n_bins == 360 and coder.chunk == 4
    p = 5
    ep = load_episode(rlb_tokens["data"] / data.pairs.episodes[data.pairs.episode[p]], images=False)
    keys = discover_keyframes(ep.gripper_open, ep.joint_velocities)
    assert data.describe()["keyframes"][ep.ref.rel] == keys and len(keys) >= 3
    frames = keyframe_targets(keys, len(ep), 4)[int(data.pairs.step[p])]
    pose, grip = coder.decode_pose(data.action_bins[p].reshape(4, 7))
    np.testing.assert_array_equal(grip, ep.gripper_open[frames])
    bins = data.action_bins[p].reshape(4, 7)
    for d in range(3):
        assert np.all(np.abs(pose[:, d] - ep.gripper_pose[frames, d]) <= coder.bin_width(d, bins[:, d]) + 1e-12)
    data.bind({t: i for i, t in enumerate(data.texts())})
    batch = data.batch(6, seed=0, rank=0, step=0, micro=0)
    assert batch.history.shape == (6, 64) and batch.actions.shape == (6, 28) and int(batch.actions.max()) < 360
    short = rlb.replace(cfg, finetune=type(cfg.rlbench.finetune)(**{**cfg.rlbench.finetune.__dict__,
                                                                    "demos_per_task": 9}))
    with pytest.raises(ValueError, match="has 3 episodes, rlbench.finetune.demos_per_task=9"):
        KeyframeFinetuneData(TokenCache(rlb_tokens["tokens"]), rlb_tokens["data"], short.rlbench)


def test_pretraining_and_finetuning_write_multiview_checkpoints(rlb_trained):
    pre = load_vpdd_checkpoint(rlb_trained["pretrain"])
    assert pre.kind == KIND_PRETRAIN and pre.model.action is None
    lay = pre.spec.layout
    assert (lay.n_video_codes, lay.n_action_bins, lay.n_video_tokens, lay.n_action_tokens) == (32, 360, 64, 28)
    pol = load_vpdd_checkpoint(rlb_trained["policy"])
    assert pol.kind == KIND_POLICY and pol.spec.action_net == "multiview" and pol.spec.layout == lay
    assert pol.spec.action["foresight"] is True and pol.spec.action["views"] == 4
    assert pol.config["actions"]["kind"] == "rlbench-keyframe"
    demos = pol.config["data"]["demonstrations"]
    assert demos["benchmark"] == "rlbench" and demos["cameras"] == ["front", "left_shoulder", "right_shoulder",
                                                                     "wrist"]
    # the frozen video network is the pre-trained one
    for k, v in pre.model.video.state_dict().items():
        assert torch.equal(v, pol.model.video.state_dict()[k]), k
    metrics = json.loads((rlb_trained["root"] / "live_finetune" / "metrics.json").read_text())
    assert 0.0 <= metrics["eval"]["action_bin_acc"] <= 1.0 and np.isfinite(metrics["train"]["loss"])
    assert (rlb_trained["root"] / "live_finetune" / "samples.png").is_file()  # all four views decoded


def test_the_policy_predicts_keyframe_actions_on_an_episode(rlb_trained, rlb):
    from vpdd.rlbench.policy import RLBenchPolicy

    policy = RLBenchPolicy.from_pretrained(rlb_trained["policy"], sampling_stride=5)
    assert policy.cameras == rlb.CAMERAS and policy.chunk == 4
    ref = list_episodes(rlb_trained["data"], ["push_button"])[0]
    ep = load_episode(ref, rlb.CAMERAS)
    views = {c: ep.frames[c][0] for c in rlb.CAMERAS}
    policy.reset(seed=3)
    out = policy.predict(views, ep.instruction)
    assert out.actions.shape == (4, 8) and out.bins.shape == (28,) and out.video_tokens.shape == (4, 1, 4, 4)
    np.testing.assert_allclose(np.linalg.norm(out.actions[:, 3:7], axis=1), 1.0, atol=1e-5)
    assert set(np.unique(out.actions[:, 7])) <= {0.0, 1.0}
    coder = policy.coder
    lo, hi = [min(e[0] for e in coder.edges[:3])], [max(e[-1] for e in coder.edges[:3])]
    assert np.all(out.actions[:, :3] >= lo[0] - 1e-6) and np.all(out.actions[:, :3] <= hi[0] + 1e-6)
    policy.reset(seed=3)
    again = policy.predict(views, ep.instruction)
    assert np.array_equal(again.bins, out.bins)  # the seed fixes the sample
    # frames of another size are resized like the reader's; a missing camera is refused
    big = {c: np.repeat(np.repeat(f, 4, axis=0), 4, axis=1) for c, f in views.items()}
    assert policy.select_action(big, ep.instruction).shape == (8,)
    with pytest.raises(ValueError, match=r"missing cameras \['wrist'\]"):
        policy.select_action({c: f for c, f in views.items() if c != "wrist"}, ep.instruction)


def test_cli_tokenize_finetune_and_predict(rlb_trained, rlb, tmp_path, capsys):
    from vpdd.cli import main

    params = rlb.write_params(tmp_path / "params.yaml", **{"rlbench.foresight": False,
                                                            "rlbench.finetune.steps": 2})
    tokens = tmp_path / "tokens"
    assert main(["rlbench", "tokenize", "--params", str(params), "--tokenizer", str(rlb_trained["tokenizer"]),
                 "--data", str(rlb_trained["data"]), "--out", str(tokens)]) == 0
    assert (tokens / "robot" / "tokens.npy").is_file()
    assert np.array_equal(TokenCache(tokens)["robot"].tokens, TokenCache(rlb_trained["tokens"])["robot"].tokens)
    out = tmp_path / "policy"
    assert main(["rlbench", "finetune", "--params", str(params), "--tokens", str(tokens), "--tokenizer",
                 str(rlb_trained["tokenizer"]), "--data", str(rlb_trained["data"]), "--pretrained",
                 str(rlb_trained["pretrain"]), "--out", str(out)]) == 0
    assert load_vpdd_checkpoint(out).spec.action["foresight"] is False  # the released code's conditioning
    ep = list_episodes(rlb_trained["data"], ["pick_up_block"])[1].path
    report = tmp_path / "predict.json"
    capsys.readouterr()
    assert main(["rlbench", "predict", "--policy", str(out), "--episode", str(ep), "--stride", "5",
                 "--out", str(report)]) == 0
    from vpdd.utils.records import read_record

    assert "episodes" not in json.loads(report.read_text())  # the per-episode queries are in predict.run.json
    res = read_record(report)
    q = res["episodes"][0]["queries"]
    keys = res["episodes"][0]["keyframes"]
    assert [x["step"] for x in q] == [0, *keys[:-1]] and len(q[0]["predicted"]) == 4
    assert all(x["target_keyframes"][0] > x["step"] for x in q)
    assert 0.0 <= res["gripper_accuracy"] <= 1.0 and res["mean_translation_error_m"] >= 0.0
    assert main(["rlbench", "predict", "--policy", str(rlb_trained["pretrain"]), "--episode", str(ep)]) == 2
    assert "not an RLBench keyframe policy" in capsys.readouterr().err


@pytest.mark.parametrize("key, value, message", [
    ("rlbench.rotation_resolution", 7.0, "rlbench.rotation_resolution=7.0: expected a divisor of 360"),
    ("rlbench.cameras", ["front", "fisheye"], "rlbench.cameras=['front', 'fisheye']: expected distinct camera"),
    ("rlbench.pretrain.use_actionless", True, "rlbench.pretrain.use_actionless=True: expected false"),
    ("rlbench.generate.tasks", ["open_drawer"], "rlbench.generate.tasks=['open_drawer']: expected distinct synth"),
    ("rlbench.finetune.steps", 0, "rlbench.finetune.steps=0: expected a value > 0"),
    ("rlbench.tasks", ["Open Drawer"], "rlbench.tasks=['Open Drawer']: expected a non-empty list"),
])
def test_bad_rlbench_values_are_named(rlb, key, value, message):
    with pytest.raises(ConfigError, match="invalid values") as info:
        rlb.config(**{key: value})
    assert message in str(info.value)
