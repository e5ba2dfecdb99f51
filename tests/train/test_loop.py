"""The diffusion training loop: outputs of both stages, exact resume, refusal of another run, the NaN guard,
and clear errors for a pre-trained model that does not fit the fine-tuning run."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vpdd.models.checkpoint import KIND_POLICY, KIND_PRETRAIN, CheckpointMismatch, load_vpdd_checkpoint
from vpdd.runtime.checkpoint import CheckpointError, load_checkpoint
from vpdd.runtime.guard import TrainingDiverged
from vpdd.train.loop import train_stage


def _flat_state(path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(path, training_state=True)
    st = ck.training_state
    flat = {f"w.{k}": v for k, v in ck.weights.items()}
    flat.update({f"raw.{k}": v for k, v in st["model"].items()})
    flat.update({f"ema.{k}": v for k, v in st["ema"].items()})
    for pid, s in st["optimizer"]["state"].items():
        flat.update({f"opt.{pid}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    for r, s in enumerate(st["scheduler"]):
        flat.update({f"sched{r}.{k}": v for k, v in s.items()})
    return flat


def test_pretraining_writes_a_self_describing_checkpoint_and_metrics(trained):
    pre = load_vpdd_checkpoint(trained["pretrain"], training_state=True)
    cfg = pre.config
    assert cfg["kind"] == KIND_PRETRAIN and pre.model.action is None and pre.discretizer is None
    assert not any(k.startswith("model.action.") for k in pre.checkpoint.weights)
    assert any(k.startswith("tokenizer.") for k in pre.checkpoint.weights)  # decodes predictions on its own
    assert cfg["scheduler"]["layout"] == cfg["model"]["layout"]
    assert cfg["language"]["encoder"] == "minilm" and "Reach a goal position." in cfg["language"]["texts"]
    assert "a hand opens a drawer" in cfg["language"]["texts"]  # corpus captions are embedded too
    prov = cfg["provenance"]
    assert prov["tokenizer_hash"] == cfg["tokenizer"]["checkpoint_hash"] and prov["token_cache_manifest_sha256"]
    assert (trained["pretrain"] / "lineage.json").is_file()
    state = pre.checkpoint.training_state
    assert state["step"] == 6 and len(state["scheduler"]) == 1
    assert int(state["scheduler"][0]["Lt_count"].sum()) == 6 * 2 * 4  # steps x micro-batches x batch
    # the inference weights are the EMA, not the raw weights
    raw, ema = state["model"], pre.checkpoint.weights
    assert any(not torch.equal(raw[k], ema[f"model.{k}"]) for k in raw if k.startswith("video."))
    live = trained["root"] / "live_pretrain"
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["train"]["loss"] > 0
    ev = metrics["eval"]
    assert 0 <= ev["video_token_acc"] <= 1 and 0 <= ev["changed_token_fraction"] <= 1
    # accuracy on the changed tokens exactly when some change
    assert ("video_changed_token_acc" in ev) == (ev["changed_token_fraction"] > 0)
    rows = (live / "plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["2", "4", "6"]
    assert Image.open(live / "samples.png").size[0] > 0


def test_finetuning_freezes_the_video_network_and_fits_the_actions(trained):
    pre = load_vpdd_checkpoint(trained["pretrain"])
    pol = load_vpdd_checkpoint(trained["policy"], training_state=True)
    assert pol.config["kind"] == KIND_POLICY and pol.model.action is not None
    for k, v in pre.model.video.state_dict().items():  # the Perceiver did not move
        assert torch.equal(v, pol.model.video.state_dict()[k]), k
    assert pol.config["pretrained"]["checkpoint_hash"] == pre.checkpoint.meta["checkpoint_hash"]
    disc = pol.discretizer
    assert disc.n_bins == 48 and disc.chunk == 4 and disc.values[-1] == [-1.0, 1.0]
    assert pol.config["data"]["demonstrations"]["tasks"] == ["reach-v3", "push-v3"]
    metrics = pol.checkpoint.meta["metrics"]
    assert {"eval/action_bin_acc", "eval/action_l1", "eval/video_token_acc"} <= set(metrics)


def test_resume_after_an_interruption_is_exact(artefacts, synthetic, tmp_path):
    cfg = synthetic.config()
    kw = dict(tokens=artefacts["tokens"], tokenizer=artefacts["tokenizer"], params_file=None, progress=False)
    train_stage("pretrain", cfg, out=tmp_path / "full", **kw)

    def crash(step, model):
        if step == 4:
            raise KeyboardInterrupt("simulated kill after step 4 (checkpoint at step 3)")

    with pytest.raises(KeyboardInterrupt):
        train_stage("pretrain", cfg, out=tmp_path / "resumed", live_dir=tmp_path / "live", step_hook=crash, **kw)
    assert load_checkpoint(tmp_path / "resumed").step == 3
    res = train_stage("pretrain", cfg, out=tmp_path / "resumed", live_dir=tmp_path / "live", **kw)
    assert res.resumed_from == 3 and res.step == 6
    a, b = _flat_state(tmp_path / "full"), _flat_state(tmp_path / "resumed")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"
    rows = (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["2", "4", "6"]  # rows after the checkpoint replayed once
    # a finished run asked again does nothing
    again = train_stage("pretrain", cfg, out=tmp_path / "resumed", **kw)
    assert again.resumed_from == 6 and load_checkpoint(tmp_path / "resumed").step == 6


def test_a_different_run_is_refused_or_restarted(artefacts, synthetic, tmp_path):
    kw = dict(tokens=artefacts["tokens"], tokenizer=artefacts["tokenizer"], params_file=None, progress=False)
    train_stage("pretrain", synthetic.config(**{"pretrain.steps": 2}), out=tmp_path / "ck", **kw)
    changed = synthetic.config(**{"pretrain.steps": 2, "pretrain.lr": 1e-4})
    with pytest.raises(CheckpointError) as err:
        train_stage("pretrain", changed, out=tmp_path / "ck", **kw)
    assert "lr" in str(err.value) and "0.002" in str(err.value) and "0.0001" in str(err.value)
    res = train_stage("pretrain", changed, out=tmp_path / "ck", resume="auto", **kw)
    assert res.resumed_from is None and load_vpdd_checkpoint(tmp_path / "ck").config["train"]["lr"] == 1e-4
    # more steps is the same run, continued
    longer = synthetic.config(**{"pretrain.steps": 3, "pretrain.lr": 1e-4})
    assert train_stage("pretrain", longer, out=tmp_path / "ck", **kw).resumed_from == 2


def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_checkpoint(artefacts, synthetic, tmp_path):
    cfg = synthetic.config()

    def poison(step, model):
        if step == 4:
            with torch.no_grad():
                next(model.video.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="not finite"):
        train_stage("pretrain", cfg, tokens=artefacts["tokens"], tokenizer=artefacts["tokenizer"],
                    out=tmp_path / "ck", params_file=None, progress=False, step_hook=poison)
    ck = load_vpdd_checkpoint(tmp_path / "ck")
    assert ck.checkpoint.step == 3
    assert all(torch.isfinite(v).all() for v in ck.model.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"model.actions.n_bins": 32}, ["vocabulary mismatch", "K_a=32", "K_a=48"]),
        ({"model.actions.chunk": 2, "eval.execute_steps": 1}, ["token layout mismatch", "N_a=8", "N_a=16"]),
        ({"model.video.dim": 24}, ["video network mismatch", "24", "16"]),
    ],
)
def test_finetuning_refuses_a_pretrained_model_that_does_not_fit(artefacts, synthetic, tmp_path, override,
                                                                 expected):
    kw = dict(tokens=artefacts["tokens"], tokenizer=artefacts["tokenizer"], params_file=None, progress=False)
    train_stage("pretrain", synthetic.config(**{"pretrain.steps": 1, **override}), out=tmp_path / "pre", **kw)
    with pytest.raises(CheckpointMismatch) as err:
        train_stage("finetune", synthetic.config(), out=tmp_path / "pol", robot=artefacts["robot"],
                    pretrained=tmp_path / "pre", **kw)
    for text in expected:
        assert text in str(err.value)
    assert str(tmp_path / "pre") in str(err.value)
    assert not (tmp_path / "pol").exists()


def test_finetuning_refuses_a_pretrained_model_of_another_tokenizer(artefacts, synthetic, tmp_path):
    from vpdd.tokenizer.encode import encode_dataset
    from vpdd.tokenizer.train import train_tokenizer

    cfg = synthetic.config(**{"tokenizer.seed": 5, "tokenizer.steps": 1})
    train_tokenizer(cfg.tokenizer, tmp_path / "tok2", artefacts["robot"], artefacts["corpus"], None,
                    data_dvc=None, progress=False)
    encode_dataset(tmp_path / "tok2", tmp_path / "tokens2", robot=artefacts["robot"], corpus=artefacts["corpus"],
                   data_dvc=None, progress=False)
    kw = dict(params_file=None, progress=False)
    train_stage("pretrain", synthetic.config(**{"pretrain.steps": 1}), tokens=tmp_path / "tokens2",
                tokenizer=tmp_path / "tok2", out=tmp_path / "pre", **kw)
    with pytest.raises(CheckpointMismatch, match="tokenizer mismatch") as err:
        train_stage("finetune", synthetic.config(), tokens=artefacts["tokens"], tokenizer=artefacts["tokenizer"],
                    out=tmp_path / "pol", robot=artefacts["robot"], pretrained=tmp_path / "pre", **kw)
    theirs = load_vpdd_checkpoint(tmp_path / "pre").config["tokenizer"]["checkpoint_hash"][:12]
    assert theirs in str(err.value)
    # the token cache must come from the tokenizer given
    with pytest.raises(ValueError, match="run `vpdd tokenizer encode` again"):
        train_stage("pretrain", synthetic.config(), tokens=tmp_path / "tokens2", tokenizer=artefacts["tokenizer"],
                    out=tmp_path / "x", **kw)


def test_a_checkpoint_of_another_format_is_refused_naming_both_versions(trained, tmp_path):
    import shutil

    copy = tmp_path / "pol"
    shutil.copytree(trained["policy"], copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "format": 99}))
    with pytest.raises(CheckpointError, match="vpdd checkpoint format 99, this code reads format 1"):
        load_vpdd_checkpoint(copy)


def test_masked_foresight_trains_and_acts_on_all_mask_video(trained, synthetic, tmp_path, monkeypatch):
    """finetune.foresight=masked: the network reads all [MASK] as the video in every training step and in
    every reverse step of the policy it makes (the same input at training and test time)."""
    import numpy as np

    from vpdd.models import model as model_module
    from vpdd.policy import VPDDPolicy
    from vpdd.train.loop import train_stage

    cfg = synthetic.config(**{"finetune.foresight": "masked", "finetune.steps": 2})
    seen = []
    forward = model_module.VPDDModel.forward

    def spy(self, x_t, t, history, lang):
        seen.append(self.layout.split(x_t)[0].clone())
        return forward(self, x_t, t, history, lang)

    monkeypatch.setattr(model_module.VPDDModel, "forward", spy)
    out = tmp_path / "policy"
    train_stage("finetune", cfg, tokens=trained["tokens"], tokenizer=trained["tokenizer"], out=out,
                robot=trained["robot"], pretrained=trained["pretrain"], params_file=None, progress=False)
    policy = VPDDPolicy.from_pretrained(out, sampling_stride=5)
    mask_id = policy.layout.mask_id
    assert seen and all(bool((v == mask_id).all()) for v in seen)  # training steps and the stage's evaluation
    seen.clear()
    frame = np.zeros((policy.resolution, policy.resolution, 3), dtype=np.uint8)
    policy.reset(seed=0)
    deployed = policy.predict_action_chunk(frame, "reach the goal")
    assert seen and all(bool((v == mask_id).all()) for v in seen)
    policy.reset(seed=0)
    masked = policy.predict({"image": frame[None]}, "reach the goal", foresight="masked").actions[0]
    np.testing.assert_array_equal(deployed, masked)
    # a noised_truth policy (the released recipe) reads the video it samples: not all [MASK] after the first step
    cfg = synthetic.config(**{"finetune.foresight": "noised_truth", "finetune.steps": 2})
    train_stage("finetune", cfg, tokens=trained["tokens"], tokenizer=trained["tokenizer"], out=tmp_path / "released",
                robot=trained["robot"], pretrained=trained["pretrain"], params_file=None, progress=False)
    seen.clear()
    VPDDPolicy.from_pretrained(tmp_path / "released", sampling_stride=5).predict_action_chunk(frame, "reach the goal")
    assert not all(bool((v == mask_id).all()) for v in seen)
