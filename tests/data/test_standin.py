"""The cross-domain stand-in for human video: real Meta-World renders at a tiny size, checked for the robot's
look, for files without actions, for determinism, for the ingest path real human video takes, and for the
config's refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpdd.config import ConfigError, compose, config_from_dict, write_params
from vpdd.data.standin import (
    NAME,
    StandinError,
    StandinSpec,
    caption,
    colour_matrix,
    make_env,
    render_standin,
    robot_parts,
    standin_spec,
    video_settings,
)

REPO = Path(__file__).resolve().parents[2]
VPDD = str(Path(sys.executable).with_name("vpdd"))
FINE_TUNING = ["button-press-topdown-v3", "drawer-close-v3", "plate-slide-v3", "handle-press-v3"]
TINY = {"tasks": ["handle-press-side-v3"], "videos_per_task": 2, "render_resolution": 32,
        "cameras": ["corner", "topview"], "max_steps": 80, "steps_after_success": 2}


def _raw(**standin):
    raw = compose([], conf_dir=REPO / "conf")
    raw["data"]["standin"].update(standin)
    return raw


def _cfg(**standin):
    return config_from_dict(_raw(**standin), source="test")


# --- config ----------------------------------------------------------------------------------------------


def test_the_default_config_is_valid_and_far_from_the_demonstrations():
    cfg = _cfg()
    s = cfg.data.standin
    assert not set(s.tasks) & set(cfg.data.robot.tasks)
    assert cfg.env.camera not in s.cameras
    assert s.seed not in (cfg.data.robot.seed, cfg.data.corpus.seed, cfg.data.task_video.seed)
    spec = standin_spec(cfg)
    assert spec.fine_tuning_tasks == list(cfg.data.robot.tasks) and spec.demo_camera == cfg.env.camera


def test_a_fine_tuning_task_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.standin\.tasks=.*fine-tuning.*drawer-close-v3"):
        _cfg(tasks=["button-press-v3", "drawer-close-v3"])
    with pytest.raises(StandinError, match="fine-tuning tasks"):
        StandinSpec(tasks=["drawer-close-v3"], fine_tuning_tasks=FINE_TUNING)


def test_the_demonstration_camera_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"data\.standin\.cameras=.*'corner2'"):
        _cfg(cameras=["corner", "corner2"])
    with pytest.raises(StandinError, match="cameras"):
        StandinSpec(cameras=["corner4"], demo_camera="corner4")  # whatever env.camera is


@pytest.mark.parametrize("key, value", [("seed", 0), ("seed", 1000), ("seed", 2000), ("tasks", ["no-such-v3"]),
                                        ("arm_style", "invisible"), ("light_scale", [1.5, 0.5]),
                                        ("colour_jitter", 2.0), ("render_resolution", 33)])
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"data\.standin\.{key}="):
        _cfg(**{key: value})


# --- the look ----------------------------------------------------------------------------------------------


def test_settings_are_drawn_from_the_seed_and_rotate_over_the_cameras():
    spec = StandinSpec(fine_tuning_tasks=FINE_TUNING)
    looks = [video_settings(spec, "drawer-open-v3", k) for k in range(8)]
    assert looks == [video_settings(spec, "drawer-open-v3", k) for k in range(8)]
    assert {lk["camera"] for lk in looks} == set(spec.cameras)
    assert all(spec.light_scale[0] <= lk["light_scale"] <= spec.light_scale[1] for lk in looks)
    other = StandinSpec(seed=spec.seed + 1, fine_tuning_tasks=FINE_TUNING)
    assert looks != [video_settings(other, "drawer-open-v3", k) for k in range(8)]
    np.testing.assert_allclose(colour_matrix(1.0, [1, 1, 1], 0.0), np.eye(3), atol=1e-12)
    grey = colour_matrix(1.0, [1, 1, 1], 30.0) @ np.ones(3)  # a hue rotation keeps grey grey
    np.testing.assert_allclose(grey, np.ones(3), atol=1e-12)
    assert caption("button-press-v3") == "a hand presses a button"
    assert caption("assembly-v3").startswith("a hand")


def _sawyer_red(frame: np.ndarray) -> int:
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return int(((r > 60) & (r > 2.5 * g) & (r > 2.5 * b)).sum())


@pytest.mark.sim
@pytest.mark.parametrize("arm_style", ["hidden", "recoloured"])
def test_the_robot_is_hidden_or_recoloured_in_the_rendered_model(arm_style):
    from vpdd.envs.metaworld import MetaWorldEnv

    spec = StandinSpec(tasks=["plate-slide-side-v3"], render_resolution=64, arm_style=arm_style, colour_jitter=0.0,
                       light_scale=(1.0, 1.0), fine_tuning_tasks=FINE_TUNING)
    look = {**video_settings(spec, "plate-slide-side-v3", 0), "camera": "corner"}
    with MetaWorldEnv("plate-slide-side-v3", "corner", 64) as plain:
        plain.reset(7)
        normal = plain.render()
    with make_env(spec, "plate-slide-side-v3", look) as env:
        model = env.raw.model
        parts = robot_parts(model)
        assert parts["arm_geoms"] and parts["gripper_geoms"] and parts["body_geoms"]
        assert (model.geom_rgba[parts["body_geoms"], 3] == 0).all()
        visible_grip = [g for g in parts["gripper_geoms"] if model.geom_rgba[g, 3] > 0]
        assert visible_grip
        np.testing.assert_allclose(model.geom_rgba[visible_grip, :3], [look["skin_tone"]] * len(visible_grip),
                                   atol=1e-6)
        arm = model.geom_rgba[parts["arm_geoms"]]
        if arm_style == "hidden":
            assert (arm[:, 3] == 0).all()
        else:
            shown = arm[arm[:, 3] > 0]
            assert len(shown) and np.allclose(shown[:, :3], look["skin_tone"], atol=1e-6)
        env.reset(7)
        standin = env.render()
    # the red Sawyer fills a good part of the demonstration-style frame and is gone from the stand-in one
    assert _sawyer_red(normal) > 150
    assert _sawyer_red(standin) < 0.1 * _sawyer_red(normal)


# --- rendering, files, determinism, ingest ------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    spec = StandinSpec(**TINY, fine_tuning_tasks=FINE_TUNING)
    root = tmp_path_factory.mktemp("standin")
    reports = [render_standin(spec, root / name, progress=False) for name in ("a", "b")]
    return spec, root, reports


@pytest.mark.sim
def test_the_folder_holds_only_videos_and_captions(rendered):
    import av

    spec, root, (report, _) = rendered
    files = sorted(p.name for p in (root / "a").rglob("*"))
    assert files == ["standin_handle-press-side-v3_000.mp4", "standin_handle-press-side-v3_000.txt",
                     "standin_handle-press-side-v3_001.mp4"]
    assert all(NAME.fullmatch(f) for f in files)
    assert (root / "a" / files[1]).read_text() == "a hand presses a handle down from the side\n"
    for mp4 in (root / "a").glob("*.mp4"):  # one video stream; no data, subtitle or attachment streams
        with av.open(str(mp4)) as container:
            assert [s.type for s in container.streams] == ["video"]
    text = json.dumps(report)
    assert report["videos"] == 2 and report["captioned"] == 1
    assert not any(word in text for word in ('"action', '"state', '"reward'))
    assert [v["camera"] for v in report["per_video"]] == [video_settings(spec, spec.tasks[0], k)["camera"]
                                                           for k in range(2)]


@pytest.mark.sim
def test_the_same_seed_gives_the_same_bytes(rendered):
    _, root, (a, b) = rendered
    names = sorted(p.name for p in (root / "a").iterdir())
    assert names == sorted(p.name for p in (root / "b").iterdir())
    for name in names:
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


@pytest.mark.sim
def test_ingest_videos_reads_the_folder_like_human_video(rendered, tmp_path):
    from vpdd.data.corpus import ingest_videos
    from vpdd.data.video import read_video

    _, root, (report, _) = rendered
    frames = read_video(root / "a" / "standin_handle-press-side-v3_000.mp4")
    assert frames.shape == (report["per_video"][0]["frames"], 32, 32, 3)
    out = ingest_videos(root / "a", tmp_path / "corpus", resolution=16, clip_length=8, clip_stride=8,
                        default_caption="There are observations about human hands interacting with objects",
                        progress=False, strict=True)
    assert out["videos_ingested"] == 2 and out["videos_skipped"] == 0 and out["captioned"] == 1
    index = json.loads((tmp_path / "corpus" / "index.json").read_text())
    captions = sorted(e["caption"] for e in index["videos"])
    assert captions == ["There are observations about human hands interacting with objects",
                        "a hand presses a handle down from the side"]


def test_a_foreign_folder_is_not_replaced(tmp_path):
    from vpdd.utils.io import OutputFolderError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("not a stand-in video\n")
    with pytest.raises(OutputFolderError):
        render_standin(StandinSpec(**TINY, fine_tuning_tasks=FINE_TUNING), tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.md").is_file()


@pytest.mark.sim
def test_cli_renders_and_ingests_end_to_end(tmp_path, tool_env):
    raw = _raw(**{**TINY, "videos_per_task": 1, "captioned_fraction": 1.0})
    params = tmp_path / "params.yaml"
    write_params(raw, params)
    out, report = tmp_path / "videos", tmp_path / "standin.json"
    run = subprocess.run([VPDD, "data", "render-standin-video", "--params", str(params), "--out", str(out),
                          "--report", str(report)], capture_output=True, text=True, env=tool_env, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["videos"] == 1 and summary["captioned"] == 1
    written = json.loads(report.read_text())
    assert written["spec"]["fine_tuning_tasks"] == FINE_TUNING and "seconds" not in written
    assert [p.name for p in out.iterdir()] and all(NAME.fullmatch(p.name) for p in out.iterdir())
    run = subprocess.run([VPDD, "data", "ingest-videos", str(out), "--params", str(params), "--out",
                          str(tmp_path / "corpus"), "--report", str(tmp_path / "corpus.json")],
                         capture_output=True, text=True, env=tool_env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "corpus.json").read_text())["videos_ingested"] == 1
