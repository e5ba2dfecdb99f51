"""LeRobot dataset import/export (vpdd/data/lerobot*.py, docs/data.md).

The fixture datasets are written here directly from LeRobot's published layout (info.json fields, parquet
columns and dtypes, path templates, several episodes per mp4 with from/to timestamps), not by vpdd's writer,
so the reader is checked against the specification and the writer is checked against the same field list.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vpdd.data.episodes import Episode, EpisodeStore, save_episode, write_index
from vpdd.data.lerobot import LeRobotFormatError, import_lerobot, metaworld_task
from vpdd.data.lerobot_export import export_lerobot
from vpdd.data.video import write_video

RES = 32
# LeRobot's Meta-World task descriptions have no final full stop (src/lerobot/envs/metaworld.py)
TASKS = ["Reach a goal position", "Push the puck to a goal"]
# create_empty_dataset_info (src/lerobot/datasets/utils.py) + the totals save_episode fills in
INFO_KEYS = {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
             "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
             "features"}
DEFAULT_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                    "task_index": "int64"}


def _video(rng: np.random.Generator, n: int, res: int = RES) -> np.ndarray:
    """Smooth frames (a gradient that drifts) so the codec loss is small and measurable."""
    yy, xx = np.mgrid[0:res, 0:res]
    out = [np.stack([(xx * 6 + t * 3) % 256, (yy * 6 + 40) % 256, np.full_like(xx, 90 + t)], -1) for t in range(n)]
    return (np.stack(out) + rng.integers(0, 2, (n, res, res, 3))).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _vec(x: np.ndarray) -> pa.Array:
    return pa.array(list(x.astype(np.float32)), type=pa.list_(pa.float32(), x.shape[1]))


def write_spec_dataset(root: Path, lengths=(9, 7, 8), cams=("observation.image",), action_dim=4) -> dict:
    """A v3.0 dataset: episodes 0, 1 in data/chunk-000/file-000 and videos file-000; episode 2 in file-001."""
    rng = np.random.default_rng(0)
    fps = 10
    eps = []
    for e, n in enumerate(lengths):
        eps.append({"frames": _video(rng, n), "actions": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
                    "state": rng.normal(size=(n, 4)).astype(np.float32), "task": e % 2})
    files = {0: [0, 1], 1: [2]}
    rows, total = [], 0
    for file, members in files.items():
        tables, offset = [], 0
        for cam in cams:
            write_video(root / f"videos/{cam}/chunk-000/file-{file:03d}.mp4",
                        np.concatenate([eps[e]["frames"] for e in members]), fps=fps, quality=2)
        for e in members:
            ep, n = eps[e], lengths[e]
            tables.append(pa.table({
                "observation.state": _vec(ep["state"]), "action": _vec(ep["actions"]),
                "timestamp": pa.array((np.arange(n) / fps).astype(np.float32)),
                "frame_index": pa.array(np.arange(n, dtype=np.int64)),
                "episode_index": pa.array(np.full(n, e, np.int64)),
                "index": pa.array(np.arange(total, total + n, dtype=np.int64)),
                "task_index": pa.array(np.full(n, ep["task"], np.int64))}))
            row = {"episode_index": e, "tasks": [TASKS[ep["task"]]], "length": n, "data/chunk_index": 0,
                   "data/file_index": file, "dataset_from_index": total, "dataset_to_index": total + n,
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
            for cam in cams:
                row.update({f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": file,
                            f"videos/{cam}/from_timestamp": offset / fps,
                            f"videos/{cam}/to_timestamp": (offset + n) / fps})
            rows.append(row)
            offset += n
            total += n
        path = root / f"data/chunk-000/file-{file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), path)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    # older LeRobot wrote DataFrame({"task_index": ...}, index=tasks): an unnamed index column
    pq.write_table(pa.table({"task_index": [0, 1], "__index_level_0__": TASKS}), root / "meta/tasks.parquet")
    vec = {"dtype": "float32", "names": None}
    features = {cam: {"dtype": "video", "shape": [RES, RES, 3], "names": ["height", "width", "channels"]}
                for cam in cams}
    features.update({"observation.state": {**vec, "shape": [4]}, "action": {**vec, "shape": [action_dim]},
                     **{k: {"dtype": d, "shape": [1], "names": None} for k, d in DEFAULT_FEATURES.items()}})
    info = {"codebase_version": "v3.0", "robot_type": "sawyer", "total_episodes": len(lengths),
            "total_frames": total, "total_tasks": 2, "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500, "fps": fps, "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/stats.json").write_text("{}")
    return {"root": root, "episodes": eps, "info": info}


def write_v21_dataset(root: Path) -> dict:
    """v2.1: one parquet and one mp4 per episode, JSON-lines tasks and episodes."""
    rng = np.random.default_rng(1)
    eps = []
    for e, n in enumerate((6, 5)):
        frames, actions = _video(rng, n), rng.uniform(-1, 1, (n, 4)).astype(np.float32)
        write_video(root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4", frames, fps=10, quality=2)
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"action": _vec(actions), "frame_index": pa.array(np.arange(n, dtype=np.int64)),
                                 "episode_index": pa.array(np.full(n, e, np.int64)),
                                 "task_index": pa.array(np.zeros(n, np.int64))}), path)
        eps.append({"frames": frames, "actions": actions})
    (root / "meta").mkdir(parents=True)
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "drawer-close-v3"}) + "\n")
    (root / "meta/episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": ["drawer-close-v3"], "length": len(x["actions"])}) + "\n"
        for e, x in enumerate(eps)))
    info = {"codebase_version": "v2.1", "fps": 10, "total_episodes": 2, "total_frames": 11, "chunks_size": 1000,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": {"observation.images.top": {"dtype": "video", "shape": [RES, RES, 3]},
                         "action": {"dtype": "float32", "shape": [4]}}}
    (root / "meta/info.json").write_text(json.dumps(info))
    return {"root": root, "episodes": eps}


def write_vpdd_store(root: Path, demos: int = 2) -> Path:
    from vpdd.envs.tasks import INSTRUCTIONS

    rng = np.random.default_rng(2)
    entries = []
    for task in ("reach-v3", "push-v3"):
        for seed in range(demos):
            n = int(rng.integers(10, 14))
            ep = Episode(_video(rng, n), rng.uniform(-1, 1, (n, 4)).astype(np.float32),
                         rng.normal(size=(n, 39)).astype(np.float32), np.arange(n) >= n - 2,
                         {"task": task, "instruction": INSTRUCTIONS[task], "seed": 100 + seed, "success": True,
                          "camera": "corner2", "flipped": True, "crop": 0.5417, "resolution": RES})
            rel = f"{task}/episode_{seed:04d}.npz"
            save_episode(root / rel, ep)
            entries.append({"path": rel, "task": task, "instruction": ep.instruction, "seed": 100 + seed,
                            "success": True, "length": n})
    write_index(root, entries)
    return root


# ----------------------------------------------------------------------------------------------- import
def test_import_reads_a_dataset_written_from_the_specification(tmp_path):
    spec = write_spec_dataset(tmp_path / "ds")
    report = import_lerobot(tmp_path / "ds", tmp_path / "store", resolution=RES, action_dim=4, repo_id="me/ds")
    store = EpisodeStore(tmp_path / "store")
    assert report["episodes"] == 3 and report["frames"] == 24 and report["codebase_version"] == "v3.0"
    by_index = {store.load(e).meta["lerobot_episode_index"]: store.load(e) for e in store.entries}
    for e, want in enumerate(spec["episodes"]):
        got = by_index[e]
        assert len(got) == len(want["actions"])  # episode boundaries, across two data and two video files
        np.testing.assert_array_equal(got.actions, want["actions"])
        np.testing.assert_array_equal(got.states, want["state"])
        assert _psnr(got.frames, want["frames"]) > 30  # mpeg4 at qscale 2
        assert got.task == ["reach-v3", "push-v3"][want["task"]]  # LeRobot descriptions map to Meta-World names
        assert got.instruction.endswith(".") and got.meta["lerobot_task"] == TASKS[want["task"]]
    source = json.loads((tmp_path / "store/source.json").read_text())
    assert source["repo_id"] == "me/ds" and len(source["content_sha256"]) == 64
    assert source["camera"] == "observation.image"


def test_import_reads_v21(tmp_path):
    spec = write_v21_dataset(tmp_path / "ds")
    import_lerobot(tmp_path / "ds", tmp_path / "store", action_dim=4)
    store = EpisodeStore(tmp_path / "store")
    eps = [store.load(e) for e in sorted(store.entries, key=lambda e: e["seed"])]
    assert [len(e) for e in eps] == [6, 5] and {e.task for e in eps} == {"drawer-close-v3"}
    for got, want in zip(eps, spec["episodes"], strict=True):
        np.testing.assert_array_equal(got.actions, want["actions"])
        assert _psnr(got.frames, want["frames"]) > 30


def test_import_resizes_and_reads_a_hub_cache_folder(tmp_path):
    snap = tmp_path / "hub/datasets--lerobot--tiny/snapshots/abc123"
    write_spec_dataset(snap)
    (tmp_path / "hub/datasets--lerobot--tiny/refs").mkdir()
    (tmp_path / "hub/datasets--lerobot--tiny/refs/main").write_text("abc123")
    report = import_lerobot(tmp_path / "hub/datasets--lerobot--tiny", tmp_path / "store", resolution=16)
    assert report["repo_id"] == "lerobot/tiny" and report["revision"] == "abc123"
    assert EpisodeStore(tmp_path / "store").load(EpisodeStore(tmp_path / "store").entries[0]).frames.shape[1:] == (
        16, 16, 3)


def _break(root: Path, what: str) -> None:
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    if what == "version":
        info["codebase_version"] = "v2.0"
    elif what == "length":
        path = root / "meta/episodes/chunk-000/file-000.parquet"
        t = pq.read_table(path).to_pylist()
        t[1]["length"] += 2
        t[1]["dataset_to_index"] += 2
        pq.write_table(pa.Table.from_pylist(t), path)
        info["total_frames"] += 2
    elif what == "video":
        (root / "videos/observation.image/chunk-000/file-001.mp4").unlink()
    info_path.write_text(json.dumps(info))


@pytest.mark.parametrize("what, kwargs, fragments", [
    ("version", {}, ["meta/info.json", "codebase_version='v2.0'", "v3.0"]),
    ("length", {}, ["data/chunk-000/file-000.parquet", "episode 1", "length=9"]),
    ("video", {}, ["videos/observation.image/chunk-000/file-001.mp4", "missing video"]),
    ("none", {"camera": "observation.images.wrist"}, ["meta/info.json", "'observation.images.wrist'",
                                                      "observation.image"]),
    ("none", {"camera": "action"}, ["features.action", "not a camera"]),
    ("none", {"action_dim": 7}, ["meta/info.json", "features.action.shape=[4]", "model.actions.dim"]),
])
def test_import_errors_name_the_file_and_field_and_write_nothing(tmp_path, what, kwargs, fragments):
    write_spec_dataset(tmp_path / "ds")
    _break(tmp_path / "ds", what)
    out = tmp_path / "store"
    out.mkdir()
    (out / "keep.txt").write_text("old")  # an existing output stays as it was
    with pytest.raises(LeRobotFormatError) as err:  # force: a folder import-lerobot did not write is refused
        import_lerobot(tmp_path / "ds", out, force=True, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "store"]  # no temporary folder left
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_several_cameras_need_a_choice(tmp_path):
    write_spec_dataset(tmp_path / "ds", cams=("observation.images.a", "observation.images.b"))
    with pytest.raises(LeRobotFormatError, match=r"several cameras .*observation.images.a.*data.robot.lerobot.camera"):
        import_lerobot(tmp_path / "ds", tmp_path / "store")
    import_lerobot(tmp_path / "ds", tmp_path / "store", camera="observation.images.b")
    assert json.loads((tmp_path / "store/source.json").read_text())["camera"] == "observation.images.b"


def test_not_a_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(LeRobotFormatError, match="meta/info.json: missing"):
        import_lerobot(tmp_path / "ds", tmp_path / "store")
    with pytest.raises(LeRobotFormatError, match="no such dataset folder"):
        import_lerobot(tmp_path / "nope", tmp_path / "store")


def test_task_strings_map_to_metaworld_names():
    assert metaworld_task("drawer-close-v3") == "drawer-close-v3"
    assert metaworld_task("push and close a drawer") == "drawer-close-v3"
    assert metaworld_task("Push and close a drawer.") == "drawer-close-v3"
    assert metaworld_task("fold the towel") is None


# ------------------------------------------------------------------------------------- export, round trip
def test_export_follows_the_published_layout(tmp_path):
    write_vpdd_store(tmp_path / "robot", demos=3)
    export_lerobot(tmp_path / "robot", tmp_path / "ds", fps=80, chunks_size=2, data_files_size_in_mb=0.002)
    root = tmp_path / "ds"
    info = json.loads((root / "meta/info.json").read_text())
    assert set(info) == INFO_KEYS and info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 6 and info["total_tasks"] == 2 and info["splits"] == {"train": "0:6"}
    feats = info["features"]
    assert feats["observation.image"]["dtype"] == "video" and feats["observation.image"]["shape"] == [RES, RES, 3]
    assert feats["observation.image"]["names"] == ["height", "width", "channels"]
    assert {"video.codec", "video.pix_fmt", "video.fps", "has_audio"} <= set(feats["observation.image"]["info"])
    assert feats["action"] == {"dtype": "float32", "shape": [4], "names": None}
    assert {k: feats[k]["dtype"] for k in DEFAULT_FEATURES} == DEFAULT_FEATURES
    # chunking: a new data file per episode here (tiny size limit), a new chunk every chunks_size=2 files
    data_files = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    assert data_files[:3] == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
                              "data/chunk-001/file-000.parquet"]
    table = pq.read_table(root / data_files[0])
    assert table.schema.field("action").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("timestamp").type == pa.float32()
    assert all(table.schema.field(k).type == pa.int64() for k in ("frame_index", "episode_index", "index",
                                                                   "task_index"))
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    need = {"episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
            "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index",
            *(f"videos/observation.image/{k}" for k in ("chunk_index", "file_index", "from_timestamp",
                                                        "to_timestamp")),
            *(f"stats/action/{m}" for m in ("min", "max", "mean", "std", "count"))}
    assert need <= set(eps[0])
    assert [e["dataset_from_index"] for e in eps[1:]] == [e["dataset_to_index"] for e in eps[:-1]]
    assert eps[1]["videos/observation.image/from_timestamp"] == eps[0]["videos/observation.image/to_timestamp"]
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    assert tasks.to_pydict()["task_index"] == [0, 1]
    stats = json.loads((root / "meta/stats.json").read_text())
    assert np.asarray(stats["observation.image"]["mean"]).shape == (3, 1, 1) and stats["action"]["count"] == [
        info["total_frames"]]


def test_export_then_import_round_trips(tmp_path):
    write_vpdd_store(tmp_path / "robot")
    export_lerobot(tmp_path / "robot", tmp_path / "ds", video_files_size_in_mb=0.001)
    import_lerobot(tmp_path / "ds", tmp_path / "back", resolution=RES, action_dim=4)
    a, b = EpisodeStore(tmp_path / "robot"), EpisodeStore(tmp_path / "back")
    assert len(a) == len(b)
    psnr = []
    for entry in a.entries:
        x = a.load(entry)
        match = [e for e in b.entries if e["task"] == entry["task"] and e["seed"] == entry["seed"]]
        assert len(match) == 1
        y = b.load(match[0])
        assert len(x) == len(y) and x.instruction == y.instruction
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.states, y.states)
        np.testing.assert_array_equal(x.success, y.success)
        assert {k: y.meta[k] for k in ("camera", "flipped", "crop")} == {"camera": "corner2", "flipped": True,
                                                                        "crop": 0.5417}
        psnr.append(_psnr(x.frames, y.frames))
    # AV1 (libsvtav1, crf 30, LeRobot's settings) on 32x32 frames: measured about 40 dB; 30 dB is the bar
    assert min(psnr) > 30, psnr


def test_cli_import_and_export(tmp_path, synthetic, capsys):
    from vpdd.cli import main

    params = synthetic.write_params(tmp_path / "params.yaml")  # env.resolution 16: the import resizes
    write_vpdd_store(tmp_path / "robot")
    assert main(["data", "export-lerobot", str(tmp_path / "robot"), "--out", str(tmp_path / "ds"), "--verify"]) == 0
    check = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["verify"]
    assert check["actions_and_lengths_exact"] and check["psnr_db_min"] > 30
    assert main(["data", "import-lerobot", str(tmp_path / "ds"), "--params", str(params), "--out",
                 str(tmp_path / "back"), "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 4
    assert main(["data", "import-lerobot", str(tmp_path / "robot"), "--params", str(params), "--out",
                 str(tmp_path / "x")]) != 0
    assert "meta/info.json: missing" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------- config, lineage
def test_config_switch_and_its_checks(repo_root):
    from vpdd.config import ConfigError, compose

    data = compose(["data.robot.source=lerobot", "data.robot.lerobot.path=/some/ds"], conf_dir=repo_root / "conf")
    robot = data["data"]["robot"]
    assert robot["episodes"] == "build/robot/lerobot" and robot["imports"] == ["lerobot"]
    assert compose([], conf_dir=repo_root / "conf")["data"]["robot"]["imports"] == []
    with pytest.raises(ConfigError, match="data.robot.lerobot.path"):
        compose(["data.robot.source=lerobot"], conf_dir=repo_root / "conf")
    with pytest.raises(ConfigError, match="data.robot.source=.*one of"):
        compose(["data.robot.source=hdf5"], conf_dir=repo_root / "conf")
    with pytest.raises(ConfigError, match="data.robot.episodes='elsewhere'.*set the source"):
        compose(["data.robot.episodes=elsewhere"], conf_dir=repo_root / "conf")


def test_lineage_reads_the_import_identity(tmp_path):
    from vpdd.lineage import robot_data_source

    write_spec_dataset(tmp_path / "ds")
    import_lerobot(tmp_path / "ds", tmp_path / "build/robot/lerobot", repo_id="me/ds", revision="v1")
    rec = robot_data_source(tmp_path, {"data": {"robot": {"episodes": "build/robot/lerobot"}}})
    assert rec["repo_id"] == "me/ds" and rec["revision"] == "v1" and rec["path"] == str((tmp_path / "ds").resolve())
    assert rec["content_sha256"] == json.loads((tmp_path / "build/robot/lerobot/source.json").read_text())[
        "content_sha256"]
    assert robot_data_source(tmp_path, {"data": {"robot": {"episodes": "data/metaworld"}}}) is None


def test_import_reads_cameras_stored_as_images(tmp_path):
    """dtype "image": PNG bytes in the data parquet (a struct {bytes, path}, as HF datasets' Image writes)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(3)
    root = tmp_path / "ds"
    n, frames = 5, _video(rng, 5)
    actions = rng.uniform(-1, 1, (n, 4)).astype(np.float32)
    png = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        png.append({"bytes": buf.getvalue(), "path": None})
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table({"observation.images.cam": pa.array(png), "action": _vec(actions),
                             "frame_index": pa.array(np.arange(n, dtype=np.int64)),
                             "episode_index": pa.array(np.zeros(n, np.int64)),
                             "task_index": pa.array(np.zeros(n, np.int64))}), root / "data/chunk-000/file-000.parquet")
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"episode_index": 0, "tasks": ["reach-v3"], "length": n,
                                          "data/chunk_index": 0, "data/file_index": 0}]),
                   root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "task": ["reach-v3"]}), root / "meta/tasks.parquet")
    info = {"codebase_version": "v3.0", "fps": 10, "total_episodes": 1, "total_frames": n, "video_path": None,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "features": {"observation.images.cam": {"dtype": "image", "shape": [RES, RES, 3]},
                         "action": {"dtype": "float32", "shape": [4]}}}
    (root / "meta/info.json").write_text(json.dumps(info))
    import_lerobot(root, tmp_path / "store")
    store = EpisodeStore(tmp_path / "store")
    ep = store.load(store.entries[0])
    np.testing.assert_array_equal(ep.frames, frames)  # PNG is lossless
    np.testing.assert_array_equal(ep.actions, actions)
