"""Read LeRobot datasets (codebase v3.0, and v2.1) and import them into a vpdd episode store.

The layout followed is LeRobot's own (``src/lerobot/datasets/utils.py`` and ``lerobot_dataset.py`` of
huggingface/lerobot; docs/data.md cites the commits)::

    meta/info.json                                   codebase_version, fps, features, totals, chunks_size,
                                                     data_files_size_in_mb, video_files_size_in_mb,
                                                     data_path, video_path
    meta/stats.json                                  per feature: min, max, mean, std, count
    meta/tasks.parquet                               task_index (int64), the task string as the index "task"
    meta/episodes/chunk-XXX/file-XXX.parquet         one row per episode: episode_index, tasks, length,
                                                     data/chunk_index, data/file_index, dataset_from_index,
                                                     dataset_to_index, videos/<key>/{chunk_index, file_index,
                                                     from_timestamp, to_timestamp}, meta/episodes/..., stats/...
    data/chunk-XXX/file-XXX.parquet                  one row per frame: the features that are not video,
                                                     timestamp, frame_index, episode_index, index, task_index
    videos/<key>/chunk-XXX/file-XXX.mp4              several episodes back to back; an episode is the frames
                                                     in [from_timestamp, to_timestamp)

v2.1 has one parquet and one mp4 per episode (``data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}
.parquet``, ``videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4``) and JSON-lines
``meta/tasks.jsonl`` / ``meta/episodes.jsonl``; both are read through the same :class:`LeRobotDataset`.

:func:`import_lerobot` writes a normal vpdd episode store (``index.json`` + one ``.npz`` per episode,
:mod:`vpdd.data.episodes`) atomically, resizing the chosen camera's frames to the pipeline's resolution,
plus ``source.json``: the dataset's identity (path, repo id, revision, a content hash) for lineage.
Every problem is a :class:`LeRobotFormatError` naming the file and the field; nothing is half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.data.episodes import DataFormatError, Episode, save_episode, write_index
from vpdd.envs.tasks import INSTRUCTIONS
from vpdd.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("v3.0", "v2.1")
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
SOURCE_FILE = "source.json"  # the imported dataset's identity, inside the episode store
DEFAULT_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
CAMERA_DTYPES = ("video", "image")


class LeRobotFormatError(DataFormatError):
    """A LeRobot dataset this reader cannot use; the message names the file and the field."""


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise LeRobotFormatError("reading LeRobot datasets needs pyarrow (pip install pyarrow)") from None
    return pq


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: missing (not a LeRobot dataset folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LeRobotFormatError(f"{path}: not valid JSON ({err})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: missing")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise LeRobotFormatError(f"{path}:{n}: not valid JSON ({err})") from None
    return rows


def _read_parquet(path: Path, columns: list[str] | None = None) -> dict[str, list[Any]]:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: missing")
    pq = _pq()
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow.lib.ArrowInvalid and friends
        raise LeRobotFormatError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
    if columns:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise LeRobotFormatError(f"{path}: missing columns {missing}; it has {table.column_names}")
    return table.to_pydict()


def resolve_root(path: str | Path) -> tuple[Path, dict[str, str | None]]:
    """The dataset folder of ``path`` and what its location says about its identity.

    ``path`` is a dataset folder, or a Hugging Face hub cache repo folder (``datasets--org--name``, whose
    ``refs/main`` names the snapshot), or a snapshot inside one (``.../snapshots/<commit>``)."""
    root = Path(path).expanduser()
    ident: dict[str, str | None] = {"repo_id": None, "revision": None}
    if not root.is_dir():
        raise LeRobotFormatError(f"{root}: no such dataset folder")
    if (root / "snapshots").is_dir() and not (root / INFO_PATH).is_file():
        ref = root / "refs" / "main"
        snaps = sorted(p for p in (root / "snapshots").iterdir() if p.is_dir())
        if ref.is_file():
            root = root / "snapshots" / ref.read_text().strip()
        elif len(snaps) == 1:
            root = snaps[0]
        else:
            raise LeRobotFormatError(f"{root}: a hub cache folder without refs/main and {len(snaps)} snapshots")
    parts = root.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("datasets--"):
        ident["repo_id"] = "/".join(parts[-3].split("--")[1:])
        ident["revision"] = parts[-1]
    return root, ident


def content_hash(root: Path) -> tuple[str, int]:
    """sha256 over every file of the dataset (relative path and bytes, in path order) and the file count."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                           p.relative_to(root).parts))
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest(), len(files)


@dataclass
class EpisodeRecord:
    """One episode as the metadata describes it."""

    index: int
    length: int
    tasks: list[str]
    data_file: Path
    videos: dict[str, tuple[Path, float, float]]  # key -> (file, from_timestamp, to_timestamp)
    extra: dict[str, Any]


class LeRobotDataset:
    """The metadata of a LeRobot dataset folder, and its episodes read one at a time."""

    def __init__(self, path: str | Path):
        self.root, self.identity = resolve_root(path)
        info_path = self.root / INFO_PATH
        self.info = _read_json(info_path)
        version = self.info.get("codebase_version")
        if version not in SUPPORTED_VERSIONS:
            raise LeRobotFormatError(f"{info_path}: codebase_version={version!r} is not supported; this reader "
                                     f"reads {list(SUPPORTED_VERSIONS)} (convert older datasets with LeRobot's "
                                     "convert_dataset_v21_to_v30 / v20_to_v21 scripts)")
        self.version = version
        for key in ("fps", "features", "data_path", "total_episodes", "total_frames"):
            if key not in self.info:
                raise LeRobotFormatError(f"{info_path}: missing field {key!r}")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.camera_keys = [k for k, f in self.features.items() if f.get("dtype") in CAMERA_DTYPES]
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()
        total = sum(e.length for e in self.episodes)
        if len(self.episodes) != int(self.info["total_episodes"]) or total != int(self.info["total_frames"]):
            raise LeRobotFormatError(
                f"{info_path}: total_episodes={self.info['total_episodes']}, total_frames="
                f"{self.info['total_frames']}, but the episode metadata lists {len(self.episodes)} episodes of "
                f"{total} frames")

    # ------------------------------------------------------------------------------------- metadata
    def _read_tasks(self) -> dict[int, str]:
        if self.version == "v2.1":
            path = self.root / LEGACY_TASKS_PATH
            rows = _read_jsonl(path)
            try:
                return {int(r["task_index"]): str(r["task"]) for r in rows}
            except KeyError as err:
                raise LeRobotFormatError(f"{path}: a row without field {err}") from None
        path = self.root / TASKS_PATH
        cols = _read_parquet(path)
        # pandas writes the task strings as the index "task" (older LeRobot: an unnamed index)
        name = "task" if "task" in cols else "__index_level_0__" if "__index_level_0__" in cols else None
        if name is None or "task_index" not in cols:
            raise LeRobotFormatError(f"{path}: expected columns 'task_index' and 'task'; it has {list(cols)}")
        return {int(i): str(t) for i, t in zip(cols["task_index"], cols[name], strict=True)}

    def _read_episodes(self) -> list[EpisodeRecord]:
        chunks = int(self.info.get("chunks_size", 1000))
        if self.version == "v2.1":
            path = self.root / LEGACY_EPISODES_PATH
            out = []
            for row in _read_jsonl(path):
                try:
                    idx, length = int(row["episode_index"]), int(row["length"])
                except KeyError as err:
                    raise LeRobotFormatError(f"{path}: an episode without field {err}") from None
                fmt = {"episode_chunk": idx // chunks, "episode_index": idx}
                data = self.root / self.info["data_path"].format(**fmt)
                videos = {}
                if self.info.get("video_path"):
                    for key in self.camera_keys:
                        if self.features[key]["dtype"] == "video":
                            file = self.root / self.info["video_path"].format(video_key=key, **fmt)
                            videos[key] = (file, 0.0, length / self.fps)
                out.append(EpisodeRecord(idx, length, list(row.get("tasks") or []), data, videos, {}))
            return sorted(out, key=lambda e: e.index)
        files = sorted((self.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
        if not files:
            raise LeRobotFormatError(f"{self.root / EPISODES_DIR}: no episode metadata (chunk-XXX/file-XXX.parquet)")
        out = []
        need = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index"]
        for path in files:
            cols = _read_parquet(path, need)
            for i in range(len(cols["episode_index"])):
                row = {k: v[i] for k, v in cols.items() if not k.startswith("stats/")}
                data = self.root / self.info["data_path"].format(chunk_index=int(row["data/chunk_index"]),
                                                                 file_index=int(row["data/file_index"]))
                videos = {}
                for key in self.camera_keys:
                    if self.features[key]["dtype"] != "video":
                        continue
                    fields = [f"videos/{key}/{p}" for p in ("chunk_index", "file_index", "from_timestamp",
                                                             "to_timestamp")]
                    missing = [f for f in fields if f not in row]
                    if missing:
                        raise LeRobotFormatError(f"{path}: video feature {key!r} has no columns {missing}")
                    file = self.root / self.info["video_path"].format(video_key=key, chunk_index=int(row[fields[0]]),
                                                                      file_index=int(row[fields[1]]))
                    videos[key] = (file, float(row[fields[2]]), float(row[fields[3]]))
                extra = {k: v for k, v in row.items() if k.startswith("vpdd/")}
                out.append(EpisodeRecord(int(row["episode_index"]), int(row["length"]), list(row["tasks"] or []),
                                         data, videos, extra))
        return sorted(out, key=lambda e: e.index)

    def camera(self, key: str | None) -> str:
        """The camera feature to read: ``key``, or the only camera when ``key`` is empty."""
        info = self.root / INFO_PATH
        if not self.camera_keys:
            raise LeRobotFormatError(f"{info}: features hold no camera (no feature of dtype video or image)")
        if not key:
            if len(self.camera_keys) > 1:
                raise LeRobotFormatError(f"{info}: several cameras {self.camera_keys}; choose one with "
                                         "data.robot.lerobot.camera (or --camera)")
            return self.camera_keys[0]
        if key not in self.features:
            raise LeRobotFormatError(f"{info}: features has no camera key {key!r}; cameras: {self.camera_keys}")
        if key not in self.camera_keys:
            raise LeRobotFormatError(f"{info}: features.{key} has dtype {self.features[key].get('dtype')!r}, not a "
                                     f"camera; cameras: {self.camera_keys}")
        return key

    def action_dim(self) -> int:
        info = self.root / INFO_PATH
        ft = self.features.get("action")
        if ft is None:
            raise LeRobotFormatError(f"{info}: features has no 'action' (vpdd fine-tunes on action-labelled data)")
        shape = list(ft.get("shape") or [])
        if len(shape) != 1:
            raise LeRobotFormatError(f"{info}: features.action.shape={shape}: expected a vector [D]")
        return int(shape[0])

    # --------------------------------------------------------------------------------------- frames
    def _data_rows(self, path: Path, cache: dict[Path, dict[str, Any]]) -> dict[str, Any]:
        """The columns of a data file: vectors as (N, D) arrays, scalars as (N,), images as Python objects."""
        import pyarrow as pa

        if path not in cache:
            cache.clear()  # keep one data file in memory at a time (episodes are sorted by file)
            if not path.is_file():
                raise LeRobotFormatError(f"{path}: missing data file")
            try:
                table = _pq().read_table(path)
            except Exception as err:  # pyarrow.lib.ArrowInvalid and friends
                raise LeRobotFormatError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
            missing = [c for c in ("episode_index", "frame_index", "action") if c not in table.column_names]
            if missing:
                raise LeRobotFormatError(f"{path}: missing columns {missing}; it has {table.column_names}")
            cols: dict[str, Any] = {}
            for name in table.column_names:
                col = table.column(name).combine_chunks()
                if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
                    flat = col.flatten().to_numpy(zero_copy_only=False)
                    cols[name] = flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 0)
                elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
                    cols[name] = col.to_numpy(zero_copy_only=False)
                else:
                    cols[name] = col.to_pylist()
            cache[path] = cols
        return cache[path]

    def iter_episodes(self, camera: str, resolution: int | None = None) -> Iterator[tuple[EpisodeRecord, Episode]]:
        """(record, vpdd Episode) per episode, frames of ``camera`` resized to ``resolution`` (if given)."""
        from vpdd.data.video import resize_center_crop

        cache: dict[Path, dict[str, Any]] = {}
        videos = _VideoFrames(self.fps)
        state_key = next((k for k in ("observation.environment_state", "observation.state") if k in self.features),
                         None)
        for rec in self.episodes:
            cols = self._data_rows(rec.data_file, cache)
            rows = np.nonzero(cols["episode_index"] == rec.index)[0]
            rows = rows[np.argsort(cols["frame_index"][rows], kind="stable")]
            if len(rows) != rec.length:
                raise LeRobotFormatError(f"{rec.data_file}: episode {rec.index} has {len(rows)} rows, but its "
                                         f"metadata says length={rec.length}")
            actions = np.asarray(cols["action"][rows], dtype=np.float32).reshape(len(rows), -1)
            states = (np.asarray(cols[state_key][rows], dtype=np.float32).reshape(len(rows), -1) if state_key in cols
                      else np.zeros((len(rows), 0), np.float32))
            success = (np.asarray(cols["next.success"][rows]).reshape(len(rows), -1)[:, 0].astype(bool)
                       if "next.success" in cols else np.zeros(len(rows), bool))
            if camera in rec.videos:
                frames = videos.episode(rec, camera)
            else:
                frames = self._image_frames(rec, cols, rows, camera)
            if len(frames) != rec.length:
                where = rec.videos[camera][0] if camera in rec.videos else rec.data_file
                raise LeRobotFormatError(f"{where}: episode {rec.index} has {len(frames)} frames of {camera!r} "
                                         f"but length={rec.length} rows of data")
            if resolution is not None:
                frames = resize_center_crop(frames, resolution)
            task_ids = sorted({int(t) for t in np.asarray(cols["task_index"])[rows]}) if "task_index" in cols else []
            unknown = [t for t in task_ids if t not in self.tasks]
            if unknown:
                raise LeRobotFormatError(f"{rec.data_file}: episode {rec.index} uses task_index {unknown}, which "
                                         f"{self.root / TASKS_PATH} does not list")
            texts = [self.tasks[t] for t in task_ids] or rec.tasks
            if len(set(texts)) != 1:
                raise LeRobotFormatError(f"{rec.data_file}: episode {rec.index} has tasks {texts}; a vpdd episode "
                                         "has exactly one task")
            meta = {"lerobot_task": texts[0], "lerobot_episode_index": rec.index, "lerobot_camera": camera}
            yield rec, Episode(frames, actions, states, success, meta)

    def _image_frames(self, rec: EpisodeRecord, cols: dict[str, Any], rows: np.ndarray, camera: str) -> np.ndarray:
        import io

        from PIL import Image

        if camera not in cols:
            raise LeRobotFormatError(f"{rec.data_file}: no column {camera!r} (features say it is an image)")
        out = []
        for i in rows:
            cell = cols[camera][i]
            raw = cell.get("bytes") if isinstance(cell, dict) else cell
            if raw is None and isinstance(cell, dict) and cell.get("path"):
                raw = (self.root / cell["path"]).read_bytes()
            out.append(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
        return np.stack(out)


class _VideoFrames:
    """Streams the mp4 files: decodes each file once, front to back, keeping only the current episode's
    frames (a LeRobot video file holds up to 500 MB of episodes; decoding it whole would not fit in memory)."""

    def __init__(self, fps: float):
        self.fps = fps
        self.path: Path | None = None
        self.frames: Iterator[np.ndarray] | None = None
        self.position = 0  # index of the next frame self.frames yields

    def _open(self, path: Path) -> None:
        self.path, self.frames, self.position = path, _decode(path), 0

    def episode(self, rec: EpisodeRecord, camera: str) -> np.ndarray:
        path, start_ts, _ = rec.videos[camera]
        if not path.is_file():
            raise LeRobotFormatError(f"{path}: missing video file of camera {camera!r} (episode {rec.index})")
        # Frames are at t = k / fps; the episode holds those with from_timestamp <= t < to_timestamp.
        first = int(round(start_ts * self.fps))
        if path != self.path or first < self.position:
            self._open(path)
        out = []
        for arr in self.frames:
            self.position += 1
            if self.position - 1 >= first:
                out.append(arr)
                if len(out) == rec.length:
                    break
        if len(out) < rec.length:
            raise LeRobotFormatError(
                f"{path}: episode {rec.index} needs frames {first}..{first + rec.length - 1} "
                f"(videos/{camera}/from_timestamp={start_ts}, length={rec.length}) but the file holds "
                f"{self.position} frames")
        return np.stack(out)


def _decode(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video as (H, W, 3) uint8 RGB, one at a time (the colour conversion of read_video)."""
    import av

    from vpdd.data.video import _plane_array, yuv_planes_to_rgb

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise LeRobotFormatError(f"{path}: the file has no video stream")
            for frame in container.decode(container.streams.video[0]):
                if frame.format.name == "yuv420p":
                    yield yuv_planes_to_rgb(*(_plane_array(p) for p in frame.planes))
                else:
                    yield frame.to_ndarray(format="rgb24")
    except LeRobotFormatError:
        raise
    except Exception as err:  # av.error.InvalidDataError and friends
        raise LeRobotFormatError(f"{path}: not a readable video ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------- import
def metaworld_task(text: str) -> str | None:
    """The Meta-World v3 task a task string names: the name itself, or its instruction (case, spacing and a
    final full stop ignored; LeRobot's Meta-World descriptions are vpdd's without the full stop)."""
    if text in INSTRUCTIONS:
        return text

    def norm(s: str) -> str:
        return re.sub(r"\s+", " ", s.strip().lower()).rstrip(".")

    hits = [t for t, s in INSTRUCTIONS.items() if norm(s) == norm(text)]
    return hits[0] if len(hits) == 1 else None


def import_lerobot(path: str | Path, out: str | Path, *, camera: str | None = None, resolution: int | None = None,
                   action_dim: int | None = None, repo_id: str | None = None, revision: str | None = None,
                   progress: bool = False, force: bool = False) -> dict[str, Any]:
    """Import a LeRobot dataset into a vpdd episode store at ``out`` (replaced atomically); the summary.

    ``action_dim`` is the action width the policy's action bins take (``model.actions.dim``): another width
    is an error before anything is written."""
    from tqdm import tqdm

    ds = LeRobotDataset(path)
    key = ds.camera(camera)
    dim = ds.action_dim()
    if action_dim is not None and dim != action_dim:
        raise LeRobotFormatError(f"{ds.root / INFO_PATH}: features.action.shape=[{dim}], but the action bins "
                                 f"(model.actions.dim) take {action_dim}-d actions")
    digest, n_files = content_hash(ds.root)
    entries = []
    with atomic_directory(out, inputs=[path, ds.root], marker=SOURCE_FILE, force=force) as tmp:
        for rec, ep in tqdm(ds.iter_episodes(key, resolution), total=len(ds.episodes), desc="import",
                            unit="episode", disable=not progress):
            text = ep.meta["lerobot_task"]
            extra = json.loads(rec.extra["vpdd/meta"]) if rec.extra.get("vpdd/meta") else {}
            task = metaworld_task(text) or text
            ep.meta.update({"task": task, "instruction": INSTRUCTIONS.get(task, text),
                            "seed": int(extra.get("seed", rec.index)), "length": len(ep),
                            "resolution": int(ep.frames.shape[1]), "benchmark": "lerobot",
                            "success": bool(ep.success.any()) if "next.success" in ds.features else None})
            for k in ("attempt", "first_success_step", "success", "camera", "flipped", "crop"):
                if k in extra:
                    ep.meta[k] = extra[k]
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", task)[:80]
            rel = f"{safe}/episode_{rec.index:06d}.npz"
            save_episode(tmp / rel, ep)
            entries.append({"path": rel, **{k: ep.meta[k] for k in ("task", "instruction", "seed", "success",
                                                                     "length")}})
        write_index(tmp, entries)
        source = {
            "format": "lerobot", "codebase_version": ds.version, "path": str(Path(path).expanduser().resolve()),
            "repo_id": repo_id or ds.identity["repo_id"], "revision": revision or ds.identity["revision"],
            "content_sha256": digest, "files": n_files, "camera": key, "fps": ds.fps,
            "episodes": len(entries), "frames": sum(e["length"] for e in entries), "resolution": resolution,
        }
        atomic_write_json(tmp / SOURCE_FILE, source)
    log.info("imported %d episodes (%d frames) of %s camera %s", len(entries), source["frames"], ds.root, key)
    return {**source, "tasks": sorted({e["task"] for e in entries})}
