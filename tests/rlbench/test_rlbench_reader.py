"""Reading PerAct-format episodes without RLBench: generated data reads back, the unpickler refuses anything
outside its allow-list without running it, and malformed episodes fail with errors naming what is wrong."""

from __future__ import annotations

import os
import pickle
import shutil
import sys

import numpy as np
import pytest

from vpdd.rlbench.reader import (
    DESCRIPTIONS_PICKLE,
    LOW_DIM_PICKLE,
    Demo,
    Observation,
    PerActFormatError,
    UnsafePickleError,
    dumps_as_rlbench,
    list_episodes,
    load_episode,
    safe_load_pickle,
)


def test_generated_episodes_read_back_with_their_fields(rlb_data, rlb):
    refs = list_episodes(rlb_data)
    assert sorted({r.task for r in refs}) == sorted(rlb.TASKS) and len(refs) == 3 * len(rlb.TASKS)
    variations = {}
    for ref in refs:
        ep = load_episode(ref, rlb.CAMERAS)
        n = len(ep)
        assert n >= 10 and set(ep.frames) == set(rlb.CAMERAS)
        for frames in ep.frames.values():
            assert frames.shape == (n, rlb.RES, rlb.RES, 3) and frames.dtype == np.uint8
        assert ep.gripper_pose.shape == (n, 7)
        np.testing.assert_allclose(np.linalg.norm(ep.gripper_pose[:, 3:], axis=1), 1.0, atol=1e-9)
        assert set(np.unique(ep.gripper_open)) <= {0.0, 1.0}
        assert ep.joint_velocities.shape == (n, 7)
        assert ep.low_dim("gripper_joint_positions").shape == (n, 2)
        assert ep.demo[0].misc["front_camera_extrinsics"].shape == (4, 4)  # PerAct's misc dict survives
        assert ep.demo[0].front_rgb is None  # images live in the PNGs, as in PerAct's data
        variations.setdefault(ref.task, set()).add(ep.variation)
        assert len(ep.descriptions) == 3 and ep.instruction == ep.descriptions[0]
    assert all(v == {0, 1} for v in variations.values())


def test_low_dim_pickles_carry_rlbench_class_names(rlb_data):
    raw = (list_episodes(rlb_data)[0].path / LOW_DIM_PICKLE).read_bytes()
    assert b"rlbench.demo" in raw and b"rlbench.backend.observation" in raw and b"Observation" in raw
    assert "rlbench" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="rlbench"):
        pickle.loads(raw)  # a plain unpickler needs RLBench; the safe one does not
    demo = safe_load_pickle(list_episodes(rlb_data)[0].path / LOW_DIM_PICKLE)
    assert isinstance(demo, Demo) and isinstance(demo[0], Observation)
    assert demo.random_seed[0] == "MT19937" and demo.random_seed[1].dtype == np.uint32


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_safe_unpickler_reads_every_pickle_protocol(tmp_path, protocol):
    obs = [Observation(gripper_pose=np.arange(7, dtype=np.float64), gripper_open=1.0, joint_velocities=np.zeros(7),
                       gripper_joint_positions=np.float32([0.04, 0.04]), misc={"near": np.float64(0.01)},
                       flags={1, 2}, ignore_collisions=np.array(1.0))]
    path = tmp_path / "demo.pkl"
    path.write_bytes(dumps_as_rlbench(Demo(obs, random_seed=None), protocol=protocol))
    demo = safe_load_pickle(path)
    assert isinstance(demo, Demo) and len(demo) == 1
    np.testing.assert_array_equal(demo[0].gripper_pose, np.arange(7))
    assert demo[0].gripper_joint_positions.dtype == np.float32 and demo[0].flags == {1, 2}
    assert demo[0].misc["near"] == np.float64(0.01)


class _Exploit:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _episode_copy(rlb_data, tmp_path):
    src = list_episodes(rlb_data)[0]
    dst = tmp_path / src.task / "all_variations" / "episodes" / "episode0"
    shutil.copytree(src.path, dst)
    return dst


def test_a_malicious_pickle_is_refused_without_running(rlb_data, tmp_path):
    ep = _episode_copy(rlb_data, tmp_path)
    marker = tmp_path / "pwned"
    (ep / LOW_DIM_PICKLE).write_bytes(pickle.dumps(_Exploit(f"touch {marker}")))
    with pytest.raises(UnsafePickleError) as info:
        load_episode(ep)
    msg = str(info.value)
    assert str(ep / LOW_DIM_PICKLE) in msg and f"{os.system.__module__}.system" in msg and "nothing was executed" in msg
    assert not marker.exists()
    # a hand-written GLOBAL opcode to builtins.eval, as an attacker would write it
    (ep / DESCRIPTIONS_PICKLE).write_bytes(b"cbuiltins\neval\n(V__import__('os').system('touch " +
                                            str(marker).encode() + b"')\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load_pickle(ep / DESCRIPTIONS_PICKLE)
    assert not marker.exists()


def test_inspect_cli_reports_an_unsafe_pickle(rlb_data, tmp_path, capsys):
    from vpdd.cli import main

    ep = _episode_copy(rlb_data, tmp_path / "data")
    (ep / LOW_DIM_PICKLE).write_bytes(pickle.dumps(_Exploit("true")))
    assert main(["rlbench", "inspect", str(tmp_path / "data"), "--no-images"]) == 2
    assert "refusing to load global" in capsys.readouterr().err


def _drop_camera(ep):
    shutil.rmtree(ep / "wrist_rgb")
    return [str(ep), "missing camera folder wrist_rgb/"]


def _drop_frame(ep):
    n = len(list((ep / "front_rgb").iterdir()))
    (ep / "front_rgb" / f"{n - 1}.png").unlink()
    return [str(ep), f"front_rgb/ holds {n - 1} PNGs", f"expected {n}"]


def _truncate_pickle(ep):
    raw = (ep / LOW_DIM_PICKLE).read_bytes()
    (ep / LOW_DIM_PICKLE).write_bytes(raw[: len(raw) // 2])
    return [str(ep / LOW_DIM_PICKLE), "not a readable low-dimensional observations"]


def _bad_descriptions(ep):
    (ep / DESCRIPTIONS_PICKLE).write_bytes(pickle.dumps({"not": "a list"}))
    return [str(ep / DESCRIPTIONS_PICKLE), "expected a non-empty list of strings"]


def _missing_field(ep):
    demo = safe_load_pickle(ep / LOW_DIM_PICKLE)
    del demo[3].__dict__["gripper_pose"]
    (ep / LOW_DIM_PICKLE).write_bytes(dumps_as_rlbench(demo))
    return [str(ep), "observation 3 has no gripper_pose"]


def _missing_pickle(ep):
    (ep / "variation_number.pkl").unlink()
    return [str(ep / "variation_number.pkl"), "missing; expected the variation number"]


def _corrupt_png(ep):
    (ep / "left_shoulder_rgb" / "2.png").write_bytes(b"not a png")
    return [str(ep / "left_shoulder_rgb" / "2.png"), "unreadable PNG"]


@pytest.mark.parametrize("damage", [_drop_camera, _drop_frame, _truncate_pickle, _bad_descriptions, _missing_field,
                                    _missing_pickle, _corrupt_png])
def test_malformed_episodes_name_the_episode_and_what_was_expected(rlb_data, tmp_path, damage, rlb):
    ep = _episode_copy(rlb_data, tmp_path)
    expected = damage(ep)
    with pytest.raises(PerActFormatError) as info:
        load_episode(ep, rlb.CAMERAS)
    for part in expected:
        assert part in str(info.value)


def test_bad_layouts_are_named(tmp_path, rlb_data):
    with pytest.raises(PerActFormatError, match="no such RLBench data folder"):
        list_episodes(tmp_path / "nowhere")
    with pytest.raises(PerActFormatError, match=r"no all_variations/episodes/ folder for tasks \['open_drawer'\]"):
        list_episodes(rlb_data, ["open_drawer"])
    with pytest.raises(PerActFormatError, match="expected an episode folder"):
        load_episode(tmp_path)


def test_generation_is_deterministic(tmp_path, rlb):
    from vpdd.config.rlbench import RLBenchGenerateConfig
    from vpdd.rlbench.synthetic import generate_dataset

    cfg = RLBenchGenerateConfig(tasks=["push_button"], variations=1, episodes_per_task=1, segment_steps=3,
                                pause_steps=1)
    for name in ("a", "b"):
        generate_dataset(tmp_path / name, cfg, rlb.RES, rlb.CAMERAS)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 10
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = RLBenchGenerateConfig(tasks=["push_button"], variations=1, episodes_per_task=1, segment_steps=3,
                                  pause_steps=1, seed=1)
    generate_dataset(tmp_path / "c", other, rlb.RES, rlb.CAMERAS)
    rel = next(r for r in files if r.name == LOW_DIM_PICKLE)
    assert (tmp_path / "c" / rel).read_bytes() != (tmp_path / "a" / rel).read_bytes()
