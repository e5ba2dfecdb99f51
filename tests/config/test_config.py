"""Config composition and validation: presets compose, bad keys and values fail with their names."""

from __future__ import annotations

import pytest
import yaml

from vpdd.config import ConfigError, compose, config_from_dict, load_config


def test_default_composes_to_the_committed_params(repo_root):
    """params.yaml must be what `vpdd config compose` produces from conf/ (no hand edits drift)."""
    composed = compose([], repo_root / "conf")
    committed = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert composed == committed


def test_paper_preset_has_the_published_sizes(repo_root):
    cfg = config_from_dict(compose(["preset=paper"], repo_root / "conf"))
    assert cfg.preset == "paper"
    assert (cfg.env.resolution, cfg.tokenizer.resolution) == (96, 96)
    assert (cfg.tokenizer.n_codes, cfg.tokenizer.embedding_dim, cfg.tokenizer.n_hiddens) == (2048, 256, 256)
    assert cfg.tokenizer.downsample == [4, 4, 4]
    assert len(cfg.data.robot.tasks) == 50 and cfg.data.robot.demos_per_task == 20
    assert cfg.model.video.num_latents == 2048 and cfg.model.action.n_layer == 6
    assert cfg.diffusion.num_timesteps == 100 and cfg.eval.episodes_per_task == 50


def test_unknown_key_is_named(repo_root):
    with pytest.raises(ConfigError, match=r"tokenizer\.bogus"):
        compose(["+tokenizer.bogus=1"], repo_root / "conf")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("tokenizer.n_codes=-3", "tokenizer.n_codes=-3: expected a value > 0"),
        ("data.robot.tasks=[not-a-task-v3]", "unknown: ['not-a-task-v3']"),
        ("diffusion.truncation_r=1.5", "diffusion.truncation_r=1.5"),
        ("eval.truncation_r=0", "eval.truncation_r=0.0: expected null (the checkpoint's"),
        ("eval.truncation_r=1e-6", None),  # valid: greedy decoding
        ("kernel=triton", None),  # valid: a group switch
        ("tokenizer.resolution=96", "equal to env.resolution"),
        ("env.camera=ceiling", "env.camera='ceiling': expected one of"),
        ("finetune.token_shift=-1", "finetune.token_shift=-1: expected a value >= 0"),
        ("model.action.action_embedding=onehot", "model.action.action_embedding='onehot': expected one of"),
    ],
)
def test_bad_values_are_named(repo_root, override, fragment):
    if fragment is None:
        composed = compose([override], repo_root / "conf")
        assert composed["kernel"]["impl"] == "triton" if override.startswith("kernel") else \
            composed["eval"]["truncation_r"] == 1e-6
        return
    with pytest.raises(ConfigError) as err:
        compose([override], repo_root / "conf")
    assert fragment in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path, repo_root):
    data = yaml.safe_load((repo_root / "params.yaml").read_text())
    data["pretrain"]["steps"] = "many"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "pretrain.steps" in str(err.value) and "many" in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_corpus_tasks_must_be_outside_the_finetuning_set(repo_root):
    with pytest.raises(ConfigError, match="tasks outside the fine-tuning set"):
        compose(["data.corpus.tasks=[drawer-close-v3]"], repo_root / "conf")
