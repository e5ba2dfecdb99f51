"""The behaviour-cloning baseline: its data, training on the skeleton (loss falls, exact resume, run identity,
divergence), the config checks, `vpdd train bc` and `vpdd eval run` of a BC policy in real Meta-World."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from vpdd.bc.data import BCData, window_index
from vpdd.bc.train import train_bc
from vpdd.config import ConfigError
from vpdd.data.episodes import EpisodeStore
from vpdd.runtime.checkpoint import CheckpointError, load_checkpoint
from vpdd.runtime.guard import TrainingDiverged

SMALL = {"bc.batch_size": 8, "bc.log_every": 2, "bc.eval_every": 4, "bc.checkpoint_every": 4, "bc.heldout_steps": 8,
         "bc.channels": [8, 16], "bc.hidden": 32}


def _cfg(synthetic, **over):
    return synthetic.config(**{**SMALL, **over})


def test_data_uses_the_finetuning_demonstrations_windows_and_bins(artefacts, synthetic):
    cfg = _cfg(synthetic, **{"finetune.demos_per_task": 2})
    act = cfg.model.actions
    data = BCData(artefacts["robot"], synthetic.TASKS, 2, act.n_bins, act.chunk, 4, synthetic.RES, 8, 0)
    store = EpisodeStore(artefacts["robot"])
    entries = store.select(synthetic.TASKS, per_task=2)  # the selection fine-tuning makes
    assert [str(e["path"]) for e in data.entries] == [str(e["path"]) for e in entries]
    ep = store.load(entries[0])
    b = data.take(np.array([0, 5]))
    np.testing.assert_array_equal(b["history_frames"][0], ep.frames[window_index(0, 4)])  # first frame repeated
    np.testing.assert_array_equal(b["history_frames"][1], ep.frames[[2, 3, 4, 5]])
    np.testing.assert_array_equal(b["action_bins"][1], data.discretizer.episode_chunks(ep.actions)[5])
    assert data.discretizer.n_bins == act.n_bins and data.discretizer.chunk == act.chunk
    batch = data.batch(8, 0, 0, 3)
    assert sorted(np.bincount(batch["task_ids"])) == [4, 4]  # spread evenly over the tasks
    assert not set(data.heldout) & {int(r) for rows in data.rows_of_task for r in rows}  # held out: never trained
    np.testing.assert_array_equal(batch["action_bins"], data.batch(8, 0, 0, 3)["action_bins"])  # (seed, rank, step)


def _loss_curve(live):
    with open(live / "plots" / "metrics" / "train" / "loss.tsv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f, delimiter="\t")]


def test_training_lowers_the_loss_and_writes_a_bc_checkpoint(artefacts, synthetic, tmp_path):
    cfg = _cfg(synthetic, **{"bc.steps": 24, "bc.lr": 3e-3})
    result = train_bc(cfg, robot=artefacts["robot"], out=tmp_path / "bc", live_dir=tmp_path / "live",
                      params_file=None, progress=False)
    losses = _loss_curve(tmp_path / "live")
    assert result.step == 24 and len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.25, losses
    assert {"eval/action_bin_acc", "eval/action_l1", "eval/majority_bin_acc"} <= set(result.metrics)
    ckpt = load_checkpoint(tmp_path / "bc")
    assert ckpt.config["kind"] == "vpdd-bc" and ckpt.config["tasks"] == synthetic.TASKS
    assert ckpt.config["env"]["resolution"] == synthetic.RES and ckpt.config["net"]["window"] == 4
    assert ckpt.config["data"]["demonstrations"]["heldout_steps"] == 8

    from vpdd.bc import BCPolicy
    from vpdd.policy.episode import PolicyError

    policy = BCPolicy.from_pretrained(tmp_path / "bc")
    ep = EpisodeStore(artefacts["robot"]).load(EpisodeStore(artefacts["robot"]).select(synthetic.TASKS, 1)[0])
    for frame in ep.frames[:3]:
        policy.observe(frame)
    window = ep.frames[None, :4]  # the window the policy sees with the next frame
    chunk = policy.predict_windows(window, ep.instruction)  # the probe's entry: the same chunk, history untouched
    np.testing.assert_array_equal(chunk[0], policy.predict_action_chunk(ep.frames[3], ep.instruction))
    with pytest.raises(PolicyError, match=r"windows: expected uint8 \(B, 4, H, W, 3\)"):
        policy.predict_windows(ep.frames[:4], ep.instruction)


def test_a_resumed_run_ends_bit_identical_and_another_run_is_refused(artefacts, synthetic, tmp_path):
    full = tmp_path / "full"
    train_bc(_cfg(synthetic, **{"bc.steps": 10}), robot=artefacts["robot"], out=full, params_file=None,
             progress=False)
    part = tmp_path / "part"
    train_bc(_cfg(synthetic, **{"bc.steps": 6}), robot=artefacts["robot"], out=part, params_file=None,
             progress=False)
    r = train_bc(_cfg(synthetic, **{"bc.steps": 10}), robot=artefacts["robot"], out=part, params_file=None,
                 progress=False)
    assert r.resumed_from == 6 and r.step == 10
    a, b = load_checkpoint(full, training_state=True), load_checkpoint(part, training_state=True)
    for k, v in a.weights.items():
        assert torch.equal(v, b.weights[k]), k
    with pytest.raises(CheckpointError, match="different run"):
        train_bc(_cfg(synthetic, **{"bc.steps": 12, "bc.lr": 5e-4}), robot=artefacts["robot"], out=part,
                 params_file=None, progress=False)


def test_divergence_stops_before_the_update_and_keeps_the_last_checkpoint(artefacts, synthetic, tmp_path):
    out = tmp_path / "bc"
    with pytest.raises(TrainingDiverged, match="not finite"):
        train_bc(_cfg(synthetic, **{"bc.steps": 40, "bc.lr": 1e30, "bc.weight_decay": 0.0}),
                 robot=artefacts["robot"], out=out, params_file=None, progress=False)
    if (out / "meta.json").is_file():  # a checkpoint saved before the blow-up holds finite weights
        assert all(torch.isfinite(v).all() for v in load_checkpoint(out).weights.values())


@pytest.mark.parametrize(("key", "value"), [("bc.shift", -1), ("bc.channels", []), ("bc.lr", 0.0),
                                            ("bc.heldout_steps", -2)])
def test_bad_bc_config_values_name_the_key(synthetic, key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        synthetic.config(**{key: value})


def test_vpdd_train_bc_cli_and_the_output_rule(artefacts, synthetic, tmp_path, capsys):
    from vpdd.cli import main

    params = synthetic.write_params(tmp_path / "params.yaml", **{**SMALL, "bc.steps": 4})
    out = tmp_path / "bc"
    args = ["train", "bc", "--params", str(params), "--robot", str(artefacts["robot"]), "--out", str(out),
            "--live", str(tmp_path / "live"), "--device", "cpu"]
    assert main(args) == 0
    assert "bc: step 4" in capsys.readouterr().out
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["step"] == 4
    assert main([*args[:-2], "--fresh"]) == 0  # start over in the same folder
    capsys.readouterr()
    assert main(["policy", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "vpdd-bc" and info["step"] == 4 and info["tasks"] == synthetic.TASKS
    assert info["actions"]["chunk"] == info["net"]["chunk"] and info["parameters"] > 0
    episode = sorted((artefacts["robot"]).rglob("*.npz"))[0]
    assert main(["policy", "predict", "--policy", str(out), "--episode", str(episode), "--step", "3"]) == 0
    printed = capsys.readouterr().out
    assert "predicted chunk at step 3" in printed and "recorded actions" in printed
    # a BC policy samples nothing and predicts no video: the diffusion-only options are refused
    assert main(["policy", "predict", "--policy", str(out), "--episode", str(episode), "--stride", "5"]) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main([*args[:6], "--out", str(tmp_path / "other")]) == 2  # never writes into a folder it did not make


@pytest.mark.sim
def test_vpdd_eval_run_evaluates_a_bc_policy_and_refuses_an_unknown_kind(artefacts, synthetic, tmp_path):
    from vpdd.eval.closed_loop import EvaluationError
    from vpdd.eval.report import EvalSettings, evaluate
    from vpdd.runtime.checkpoint import save_checkpoint

    cfg = _cfg(synthetic, **{"bc.steps": 4})
    train_bc(cfg, robot=artefacts["robot"], out=tmp_path / "bc", params_file=None, progress=False)
    env = {k: getattr(cfg.env, k) for k in cfg.env.__dataclass_fields__}
    settings = EvalSettings(tasks=["reach-v3"], episodes_per_task=2, seeds=[0], max_steps=4, n_envs=2,
                            execute_steps=2, videos_per_task=0)
    m = evaluate(tmp_path / "bc", settings, env, tmp_path / "eval", progress=False)
    assert m["episodes"] == 2 and set(m["tasks"]) == {"reach-v3"}
    assert m["settings"]["policy_kind"] == "vpdd-bc" and m["settings"]["reverse_steps"] is None
    episodes = json.loads((tmp_path / "eval" / "episodes.json").read_text())
    assert all(e["policy_calls"] == -(-e["steps"] // 2) for e in episodes)  # a chunk every 2 steps
    save_checkpoint(tmp_path / "odd", config={"kind": "some-other-policy"}, weights={"w": torch.zeros(1)})
    with pytest.raises(EvaluationError, match="some-other-policy"):
        evaluate(tmp_path / "odd", settings, env, tmp_path / "eval_odd", progress=False)


def test_the_dvc_stages_list_the_params_read_and_mirror_evaluate(repo_root):
    import yaml

    from vpdd.bc.train import PARAM_KEYS

    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    assert sorted(stages["train_bc"]["params"]) == sorted(PARAM_KEYS)  # the lineage hashes what DVC tracks
    ev, bc = stages["evaluate"], stages["evaluate_bc"]
    assert bc["cmd"] == ev["cmd"].replace("models/policy", "models/bc").replace("results/eval", "results/eval_bc")
    assert bc["params"] == ev["params"]
    for key in ("outs", "metrics", "plots"):
        assert json.dumps(bc[key]) == json.dumps(ev[key]).replace("results/eval/", "results/eval_bc/"), key
    assert [d if d != "models/bc" else "models/policy" for d in bc["deps"]] == ev["deps"]
