"""Bad configs are refused at load with the file, key and value; valid ones load unchanged."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from vpdd.config import ConfigError, load_config

from .conftest import run_cli


@pytest.fixture(scope="module")
def full(repo_root) -> dict:
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    return data


@pytest.mark.parametrize("key,value,fragment", [
    ("diffusion.truncation_r", 0.0, "(0, 1]"),
    ("diffusion.truncation_r", -1.0, "(0, 1]"),
    ("diffusion.truncation_r", float("nan"), "finite"),
    ("finetune.lr", float("inf"), "finite"),
    ("pretrain.lr", float("nan"), "finite"),
    ("data.robot.tasks", ["drawer-close-v3", "drawer-close-v3"], "repeated"),
    ("data.corpus.tasks", [], "non-empty"),
    ("eval.tasks", ["drawer-close-v3", "drawer-close-v3"], "repeated"),
    ("rlbench.tasks", ["pick_up_block", "not_a_task"], "unknown"),
    ("rlbench.tasks", ["push_button", "push_button"], "repeated"),
])
def test_bad_values_are_refused_naming_file_key_value(tmp_path, full, key, value, fragment):
    path = _write(tmp_path, _set(full, key, value))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and fragment in msg
    code, stderr = run_cli("config", "check", path)
    assert code == 2 and key in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("data", [None, {}, {"diffusion": {"truncation_r": 0.5}}])
def test_empty_or_partial_params_are_refused(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text("" if data is None else yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="params file: .* keys missing"):
        load_config(path)


def test_a_partial_file_naming_its_preset_takes_that_preset(tmp_path, repo_root, full):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"preset": "tiny", "diffusion": {"truncation_r": 0.5}}))
    (tmp_path / "conf").symlink_to(repo_root / "conf")
    cfg = load_config(path)
    ref = load_config(repo_root / "params.yaml")
    assert cfg.diffusion.truncation_r == 0.5 and cfg.pretrain == ref.pretrain and cfg.data == ref.data


def test_the_committed_params_still_load(repo_root):
    cfg = load_config(repo_root / "params.yaml")
    assert cfg.diffusion.truncation_r == 0.88
