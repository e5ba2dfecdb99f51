"""Write vpdd's robot episodes as a LeRobot v3.0 dataset (the layout in :mod:`vpdd.data.lerobot`).

Field by field what LeRobot's ``LeRobotDatasetMetadata.create`` / ``LeRobotDataset.save_episode`` write
(docs/data.md cites the commits followed):

* ``meta/info.json``: ``create_empty_dataset_info``'s fields (codebase_version "v3.0", robot_type, totals,
  chunks_size 1000, data_files_size_in_mb 100, video_files_size_in_mb 500, fps, splits {"train": "0:N"},
  data_path, video_path, features). Features: the camera as ``dtype: video`` ``[H, W, 3]`` with names
  ``[height, width, channels]`` and ``info`` (video.height/width/codec/pix_fmt/is_depth_map/fps/channels,
  has_audio); ``observation.state`` (4: hand xyz + gripper, LeRobot's Meta-World ``agent_pos``);
  ``observation.environment_state`` (vpdd's full 39-d state); ``action`` (4); ``next.success`` (bool);
  and the default timestamp (float32), frame_index, episode_index, index, task_index (int64).
* ``data/chunk-XXX/file-XXX.parquet``: one row per frame; a new file when the current one reaches
  data_files_size_in_mb, a new chunk every chunks_size files (``update_chunk_file_indices``).
* ``videos/<key>/chunk-XXX/file-XXX.mp4``: episodes back to back, new file at video_files_size_in_mb.
  Encoded with libsvtav1 (AV1, LeRobot's default codec; ``g=2``, ``crf`` 30 like LeRobot's
  ``encode_video_frames``), yuv420p; libx264 when this FFmpeg has no SVT-AV1.
* ``meta/episodes/chunk-000/file-000.parquet``: episode_index, tasks, length, data/..., dataset_from_index,
  dataset_to_index (global ``index``), videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp},
  meta/episodes/{chunk_index, file_index}, stats/<feature>/{min, max, mean, std, count}; plus
  ``vpdd/meta`` (the vpdd episode metadata as JSON, so an import restores seeds and render settings).
* ``meta/stats.json`` (images per channel as (3, 1, 1) in [0, 1], like ``compute_episode_stats``) and
  ``meta/tasks.parquet`` (pandas layout: column task_index, index "task").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.data.episodes import EpisodeStore
from vpdd.data.lerobot import EPISODES_DIR, INFO_PATH, STATS_PATH, TASKS_PATH, LeRobotFormatError
from vpdd.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
DEFAULT_EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_CAMERA_KEY = "observation.image"  # LeRobot's Meta-World env: one camera -> observation.image
METAWORLD_FPS = 80  # Meta-World steps at 80 Hz (frame_skip 5 x 2.5 ms); LeRobot's MetaworldEnv render_fps


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    # LeRobot's update_chunk_file_indices
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def _stats(x: np.ndarray, image: bool = False) -> dict[str, list]:
    """min/max/mean/std/count over the frames; images per channel in [0, 1], shaped (3, 1, 1)."""
    x = np.asarray(x, dtype=np.float64)
    if image:
        x = x.transpose(0, 3, 1, 2) / 255.0  # (T, C, H, W) -> per channel, kept as (C, 1, 1)
        return {m: getattr(x, m)((0, 2, 3), keepdims=True)[0].tolist() for m in ("min", "max", "mean", "std")} | {
            "count": [int(len(x))]}
    x = x.reshape(len(x), -1)
    return {m: getattr(x, m)(0).tolist() for m in ("min", "max", "mean", "std")} | {"count": [int(len(x))]}


def _merge(stats: list[dict[str, list]]) -> dict[str, list]:
    """Combine per-episode stats (weighted mean, pooled variance), like LeRobot's aggregate_stats."""
    n = np.array([s["count"][0] for s in stats], dtype=np.float64)
    mean = np.array([s["mean"] for s in stats])
    std = np.array([s["std"] for s in stats])
    w = (n / n.sum()).reshape(-1, *([1] * (mean.ndim - 1)))
    total_mean = (w * mean).sum(0)
    var = (w * (std**2 + (mean - total_mean) ** 2)).sum(0)
    return {"min": np.min([s["min"] for s in stats], 0).tolist(), "max": np.max([s["max"] for s in stats], 0).tolist(),
            "mean": total_mean.tolist(), "std": np.sqrt(var).tolist(), "count": [int(n.sum())]}


def _tasks_table(tasks: list[str]):
    """tasks.parquet as pandas writes ``DataFrame({"task_index": ...}, index=pd.Index(tasks, name="task"))``."""
    import pyarrow as pa

    meta = {"index_columns": ["task"], "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                         "metadata": None}],
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    schema = pa.schema([("task_index", pa.int64()), ("task", pa.string())], metadata={"pandas": json.dumps(meta)})
    return pa.table({"task_index": list(range(len(tasks))), "task": tasks}, schema=schema)


class _VideoWriter:
    """Appends episodes to ``videos/<key>/chunk-XXX/file-XXX.mp4``; rolls to a new file at the size limit."""

    def __init__(self, root: Path, key: str, fps: int, size: int, limit_mb: float, chunks_size: int, crf: int):
        import av

        self.root, self.key, self.fps, self.size, self.limit, self.chunks = root, key, fps, size, limit_mb, chunks_size
        self.crf = crf
        self.codec = "libsvtav1"
        try:
            av.codec.Codec(self.codec, "w")
        except Exception:  # noqa: BLE001 - an FFmpeg build without SVT-AV1
            self.codec = "libx264"
        self.chunk = self.file = 0
        self.container = None
        self.frames_in_file = self.bytes = 0

    @property
    def path(self) -> Path:
        return self.root / DEFAULT_VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)

    def _open(self) -> None:
        import av

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), mode="w", format="mp4")
        stream = self.container.add_stream(self.codec, rate=self.fps)
        stream.width = stream.height = self.size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "g": "2"} | ({"preset": "12"} if self.codec == "libsvtav1" else {})
        self.stream = stream
        self.frames_in_file = self.bytes = 0

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None

    def add(self, frames: np.ndarray) -> dict[str, Any]:
        import av

        if self.container is not None and self.bytes / 2**20 >= self.limit:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file, self.chunks)
        if self.container is None:
            self._open()
        start = self.frames_in_file
        for arr in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                self.bytes += packet.size  # the encoded size so far (the file itself is written in bursts)
                self.container.mux(packet)
        self.frames_in_file += len(frames)
        return {f"videos/{self.key}/chunk_index": self.chunk, f"videos/{self.key}/file_index": self.file,
                f"videos/{self.key}/from_timestamp": start / self.fps,
                f"videos/{self.key}/to_timestamp": self.frames_in_file / self.fps}


def export_lerobot(robot: str | Path, out: str | Path, *, camera_key: str = DEFAULT_CAMERA_KEY,
                   fps: int = METAWORLD_FPS, tasks: list[str] | None = None, robot_type: str = "sawyer",
                   chunks_size: int = 1000, data_files_size_in_mb: float = 100, video_files_size_in_mb: float = 500,
                   crf: int = 30, verify: bool = False, force: bool = False) -> dict[str, Any]:
    """Write the episodes of the vpdd store ``robot`` (all, or those of ``tasks``) as a v3.0 dataset at ``out``.

    ``verify`` reads the written dataset back with :class:`~vpdd.data.lerobot.LeRobotDataset` and reports the
    codec's loss (PSNR of every episode's frames against the originals) and whether actions came back exact."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not camera_key or "/" in camera_key:
        raise LeRobotFormatError(f"camera key {camera_key!r}: LeRobot feature names are non-empty and hold no '/'")
    store = EpisodeStore(robot)
    entries = store.select(tasks) if tasks else sorted(store.entries, key=lambda e: (e["task"], e["seed"]))
    first = store.load(entries[0])
    h, w = first.frames.shape[1:3]
    if h != w or h % 2:
        raise LeRobotFormatError(f"{robot}: frames are {w}x{h}; the export writes square even-sized video")
    a_dim, s_dim = first.actions.shape[1], first.states.shape[1]
    task_texts: list[str] = []
    episodes: list[dict[str, Any]] = []
    ep_stats: list[dict[str, dict[str, list]]] = []
    total = 0
    with atomic_directory(out, inputs=[robot], marker="meta/info.json", force=force) as tmp:
        video = _VideoWriter(tmp, camera_key, fps, h, video_files_size_in_mb, chunks_size, crf)
        data_chunk = data_file = 0
        rows: list[pa.Table] = []
        rows_bytes = 0

        def flush() -> None:
            path = tmp / DEFAULT_DATA_PATH.format(chunk_index=data_chunk, file_index=data_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables(rows), path)

        for ep_index, entry in enumerate(entries):
            ep = first if ep_index == 0 else store.load(entry)
            if ep.frames.shape[1:3] != (h, w) or ep.actions.shape[1] != a_dim or ep.states.shape[1] != s_dim:
                raise LeRobotFormatError(f"{store.root / entry['path']}: frames {ep.frames.shape[1:3]}, actions "
                                         f"{ep.actions.shape[1]}-d, states {ep.states.shape[1]}-d differ from the "
                                         f"first episode's ({(h, w)}, {a_dim}, {s_dim})")
            text = ep.instruction or ep.task
            if text not in task_texts:
                task_texts.append(text)
            n = len(ep)
            cols = {
                "observation.state": ep.states[:, :4] if s_dim >= 4 else ep.states,
                "observation.environment_state": ep.states,
                "action": ep.actions,
                "next.success": ep.success.astype(bool),
                "timestamp": (np.arange(n) / fps).astype(np.float32),
                "frame_index": np.arange(n, dtype=np.int64),
                "episode_index": np.full(n, ep_index, np.int64),
                "index": np.arange(total, total + n, dtype=np.int64),
                "task_index": np.full(n, task_texts.index(text), np.int64),
            }
            table = pa.table({k: (pa.array(list(v), type=pa.list_(pa.float32(), v.shape[1])) if v.ndim == 2
                                  else pa.array(v)) for k, v in cols.items()})
            if rows and rows_bytes + table.nbytes >= data_files_size_in_mb * 2**20:
                flush()
                data_chunk, data_file = _next_file(data_chunk, data_file, chunks_size)
                rows, rows_bytes = [], 0
            rows.append(table)
            rows_bytes += table.nbytes
            stats = {camera_key: _stats(ep.frames, image=True)}
            stats.update({k: _stats(v) for k, v in cols.items()})
            ep_stats.append(stats)
            row = {"episode_index": ep_index, "tasks": [text], "length": n,
                   "data/chunk_index": data_chunk, "data/file_index": data_file,
                   "dataset_from_index": total, "dataset_to_index": total + n, **video.add(ep.frames),
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                   "vpdd/meta": json.dumps(ep.meta, sort_keys=True)}
            for feat, s in stats.items():
                row.update({f"stats/{feat}/{m}": v for m, v in s.items()})
            episodes.append(row)
            total += n
        flush()
        video.close()
        ep_path = tmp / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episodes), ep_path)
        pq.write_table(_tasks_table(task_texts), tmp / TASKS_PATH)
        atomic_write_json(tmp / STATS_PATH, {k: _merge([s[k] for s in ep_stats]) for k in ep_stats[0]})
        vec = {"dtype": "float32", "names": None}
        features = {
            camera_key: {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                         "info": {"video.height": h, "video.width": w,
                                  "video.codec": "av1" if video.codec == "libsvtav1" else "h264",
                                  "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                                  "video.channels": 3, "has_audio": False}},
            "observation.state": {**vec, "shape": [min(4, s_dim)]},
            "observation.environment_state": {**vec, "shape": [s_dim]},
            "action": {**vec, "shape": [a_dim]},
            "next.success": {"dtype": "bool", "shape": [1], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            **{k: {"dtype": "int64", "shape": [1], "names": None} for k in
               ("frame_index", "episode_index", "index", "task_index")},
        }
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(episodes),
                "total_frames": total, "total_tasks": len(task_texts), "chunks_size": chunks_size,
                "data_files_size_in_mb": data_files_size_in_mb, "video_files_size_in_mb": video_files_size_in_mb,
                "fps": fps, "splits": {"train": f"0:{len(episodes)}"}, "data_path": DEFAULT_DATA_PATH,
                "video_path": DEFAULT_VIDEO_PATH, "features": features}
        (tmp / INFO_PATH).write_text(json.dumps(info, indent=4, ensure_ascii=False))
        check = _verify(tmp, store, entries, camera_key) if verify else {}
    log.info("exported %d episodes (%d frames, %d tasks) to %s", len(episodes), total, len(task_texts), out)
    return {"episodes": len(episodes), "frames": total, "tasks": len(task_texts), "codec": video.codec,
            "camera_key": camera_key, "fps": fps, **check}


def _verify(root: Path, store: EpisodeStore, entries: list[dict[str, Any]], camera_key: str) -> dict[str, Any]:
    from vpdd.data.lerobot import LeRobotDataset

    psnr, exact = [], True
    for (_, back), entry in zip(LeRobotDataset(root).iter_episodes(camera_key), entries, strict=True):
        ep = store.load(entry)
        exact &= bool(np.array_equal(back.actions, ep.actions)) and len(back) == len(ep)
        mse = float(((back.frames.astype(np.float64) - ep.frames) ** 2).mean())
        psnr.append(99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return {"verify": {"psnr_db_min": round(min(psnr), 2), "psnr_db_mean": round(float(np.mean(psnr)), 2),
                       "actions_and_lengths_exact": exact}}
