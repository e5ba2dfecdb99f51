"""Video-prediction quality evaluation (vpdd.eval.video_quality, ``vpdd eval video``) on the tiny synthetic
checkpoints: outputs, determinism, the training window convention, held-out seeds, capped PSNR, bad input."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest

from vpdd.eval import video_quality as vq


def _run(argv: list[str]) -> int:
    from vpdd.cli.eval_video import register_video

    parser = argparse.ArgumentParser(prog="vpdd eval")
    register_video(parser.add_subparsers(dest="eval_cmd", required=True))
    args = parser.parse_args(["video", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def params_file(synthetic, tmp_path_factory):
    # Short real Meta-World episodes (24 steps at the synthetic 16x16 resolution); the synthetic tasks' scripted
    # experts do not succeed that fast, so the runs below keep failed episodes.
    return synthetic.write_params(tmp_path_factory.mktemp("vq") / "params.yaml", **{"data.robot.max_steps": 24})


@pytest.fixture(scope="module")
def heldout_root(synthetic, tmp_path_factory):
    """One synthetic episode per task whose seeds (100, 101) are not the training episodes' (0, 1, 2)."""
    from vpdd.data.episodes import Episode, save_episode, write_index
    from vpdd.envs.tasks import INSTRUCTIONS

    root = tmp_path_factory.mktemp("heldout")
    rng = np.random.default_rng(7)
    entries = []
    for k, task in enumerate(synthetic.TASKS):
        n = 30
        ep = Episode(synthetic.moving_square_video(rng, n), synthetic.scripted_actions(rng, n),
                     np.zeros((n, 39), np.float32), np.zeros(n, bool),
                     {"task": task, "seed": 100 + k, "instruction": INSTRUCTIONS[task]})
        save_episode(root / f"{task}/episode_0000.npz", ep)
        entries.append({"task": task, "seed": 100 + k, "path": f"{task}/episode_0000.npz", "length": n,
                        "instruction": INSTRUCTIONS[task]})
    write_index(root, entries)
    return root


@pytest.mark.sim
def test_metaworld_run_writes_outputs_and_repeats_byte_for_byte(trained, params_file, synthetic, tmp_path):
    from PIL import Image

    common = ["--policy", str(trained["policy"]), "--params", str(params_file), "--robot", str(trained["robot"]),
              "--episodes", "1", "--windows", "2", "--sampling-stride", "5", "--keep-failures"]
    assert _run([*common, "--out", str(tmp_path / "a")]) == 0
    assert _run([*common, "--out", str(tmp_path / "b")]) == 0
    for name in ("metrics.json", "run.json", "side_by_side.png", "side_by_side.gif"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    from vpdd.utils.records import read_record

    assert set(json.loads((tmp_path / "a" / "metrics.json").read_text())) == {"mean", "per_task", "tokens",
                                                                              "foresight_probe"}
    m = read_record(tmp_path / "a" / "metrics.json")
    # the foresight probe ran on 12 states per episode (fewer where an episode is short), in three modes
    probe = m["foresight_probe"]
    assert 2 <= probe["states"] <= 2 * 12 and set(probe["per_task"]) == set(synthetic.TASKS)
    assert all(0 <= probe["mean"][k] <= 2 for k in ("deployed", "true_future", "masked", "discretization"))
    assert 0 <= m["tokens"]["mean"]["predicted_acc"] <= 1 and 0 <= m["tokens"]["mean"]["copy_last_acc"] <= 1
    tasks = synthetic.TASKS
    assert set(m["per_task"]) == set(tasks) and set(m["mean"]) == set(vq.ROWS)
    for row in vq.ROWS:
        assert 0 < m["mean"][row]["psnr"] <= vq.PSNR_CAP_DB and -1 <= m["mean"][row]["ssim"] <= 1
    assert m["counts"]["episodes"] == 2 and m["counts"]["windows"] == len(m["windows"]) >= 2
    assert m["settings"]["sampling_stride"] == 5 and m["settings"]["future_offset"] == 20
    assert m["checkpoint"]["kind"] == "vpdd-policy" and len(m["checkpoint"]["checkpoint_hash"]) == 64
    assert m["heldout"]["source"] == "metaworld" and m["heldout"]["render"]["resolution"] == synthetic.RES
    # held-out scenes are never training scenes: not in the data's index, not derivable from data.robot.seed
    cfg = synthetic.config(**{"data.robot.max_steps": 24})
    train = vq.training_seeds(cfg.data.robot, tasks, trained["robot"])
    assert {0, 1, 2} <= train["reach-v3"]
    assert all(e["seed"] not in train[e["task"]] for e in m["heldout"]["episodes"])
    # images: one row per example (2 tasks x 1 episode x 2 windows, 2 examples per task)
    png = Image.open(io.BytesIO((tmp_path / "a" / "side_by_side.png").read_bytes()))
    cell = synthetic.RES * vq._scale(synthetic.RES)
    assert png.height == 20 + 4 * (cell + 2) and png.width > 13 * cell
    gif = Image.open(tmp_path / "a" / "side_by_side.gif")
    assert gif.n_frames == 8  # 4 history frames, then 4 future frames


def test_windows_follow_the_training_convention(trained):
    """The real future window is the token cache's target row: same step, and the same tokens."""
    import torch

    from vpdd.data.episodes import EpisodeStore
    from vpdd.policy import VPDDPolicy
    from vpdd.tokenizer.cache import TokenCache
    from vpdd.tokenizer.model import to_model_input

    src = TokenCache(trained["tokens"])["robot"]
    store = EpisodeStore(trained["robot"])
    item = 0
    key = str(src.items[item]["key"])
    ep = store.load(next(e for e in store.entries if e["path"] == key))
    hist_rows, tgt_rows = src.pair_rows(20, [item])
    steps = src.steps[hist_rows].astype(np.int64)
    history, real, ends = vq.clip_windows(ep.frames, steps, 20, 4)
    assert np.array_equal(ends, src.steps[tgt_rows]) and history.shape == real.shape == (len(steps), 4, 16, 16, 3)
    policy = VPDDPolicy.from_pretrained(trained["policy"])
    with torch.no_grad():
        codes = policy.tokenizer.encode(to_model_input(torch.from_numpy(real))).numpy()
    assert np.array_equal(codes, src.tokens[tgt_rows].astype(np.int64))
    # sampled steps leave a full future_offset ahead when the episode is long enough
    assert list(vq.window_steps(30, 20, 4)) == [0, 3, 6, 9] and list(vq.window_steps(10, 20, 4)) == [0]


def test_heldout_folder_is_scored_deterministically_and_training_episodes_are_refused(trained, params_file,
                                                                                        heldout_root, tmp_path):
    from vpdd.config import load_config

    cfg = load_config(params_file)
    settings = vq.VideoEvalSettings(episodes_per_task=1, windows_per_episode=3, sampling_stride=5, seed=3)
    a = vq.run_video_eval(trained["pretrain"], cfg, tmp_path / "a", settings, robot=trained["robot"],
                          heldout=heldout_root)
    b = vq.run_video_eval(trained["pretrain"], cfg, tmp_path / "b", settings, robot=trained["robot"],
                          heldout=heldout_root)
    assert a == b and a["counts"]["windows"] == 2 * 3 and a["checkpoint"]["kind"] == "vpdd-pretrain"
    assert [w["t"] for w in a["windows"][:3]] == [0, 4, 9] and {w["target_end"] for w in a["windows"]} == {20, 24, 29}
    c = vq.run_video_eval(trained["pretrain"], cfg, tmp_path / "c", vq.VideoEvalSettings(
        episodes_per_task=1, windows_per_episode=3, sampling_stride=5, seed=4), heldout=heldout_root)
    # the reference rows do not depend on the sampling seed; the prediction is a sample
    for row in ("reconstruction", "copy_last"):
        assert c["mean"][row] == a["mean"][row]
    with pytest.raises(vq.VideoEvalError, match=r"have the \(task, seed\) of training episodes"):
        vq.run_video_eval(trained["pretrain"], cfg, tmp_path / "d", settings, robot=trained["robot"],
                          heldout=trained["robot"])
    assert not (tmp_path / "d").exists()


@pytest.mark.sim
def test_a_heldout_seed_that_is_a_training_seed_is_skipped():
    render = {"camera": "corner2", "resolution": 16, "flip": True, "crop": 1.0, "fast_render": True,
              "render_backend": "egl"}
    first = vq.heldout_seed(0, "reach-v3", 0)
    settings = vq.VideoEvalSettings(episodes_per_task=1, keep_failures=True)
    episodes, report = vq.collect_heldout(["reach-v3"], render, 3, 0, settings, {"reach-v3": {first}})
    assert episodes[0].meta["seed"] == vq.heldout_seed(0, "reach-v3", 1) != first
    assert report["reach-v3"] == {"attempts": 2, "failures": 1, "skipped_training_seeds": 1}
    # the held-out rule never spells a collector seed string, and differs from it for the same numbers
    from vpdd.data.collect import episode_seed

    assert vq.heldout_seed(0, "reach-v3", 0) != episode_seed(0, "reach-v3", 0)


def test_identical_clips_give_the_capped_psnr_and_unit_ssim():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    p, s = vq.clip_scores(clip, clip.copy())
    assert np.all(p == vq.PSNR_CAP_DB) and np.allclose(s, 1.0, atol=1e-5)
    noisy = np.clip(clip.astype(int) + rng.integers(-20, 21, clip.shape), 0, 255).astype(np.uint8)
    p2, s2 = vq.clip_scores(clip, noisy)
    assert np.all(np.isfinite(p2)) and np.all(p2 < 40) and np.all(s2 < 1)
    with pytest.raises(vq.VideoEvalError, match="shapes"):
        vq.clip_scores(clip, clip[:, :2])


def test_bad_checkpoint_path_is_a_clear_error(trained, params_file, tmp_path):
    missing = tmp_path / "no_such_policy"
    with pytest.raises(vq.VideoEvalError, match=f"--policy {missing}: no such checkpoint directory"):
        _run(["--policy", str(missing), "--params", str(params_file), "--out", str(tmp_path / "out")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=str(empty)):
        _run(["--policy", str(empty), "--params", str(params_file), "--out", str(tmp_path / "out")])
    with pytest.raises(vq.VideoEvalError, match="windows_per_episode=0"):
        _run(["--policy", str(trained["policy"]), "--params", str(params_file), "--out", str(tmp_path / "out"),
              "--windows", "0"])
    assert not (tmp_path / "out").exists()
