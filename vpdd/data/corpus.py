"""The actionless video corpus: ingesting a folder of videos into clips, and reading them back.

``ingest_videos(src, out, ...)`` decodes every video under ``src`` (mp4, webm, avi, mkv, mov), resizes
and centre-crops it to the model resolution, and cuts it into clips of ``clip_length`` frames every
``clip_stride`` frames. A caption comes from a sidecar text file (``clip.mp4`` -> ``clip.txt``) when one
exists, else the default caption. Bad videos are skipped with a warning and counted (``strict`` makes
them an error). The output folder, written atomically, holds:

=================  ==========================================================================
``index.json``     format, resolution, clip_length and one entry per video (id, path, source,
                   caption, captioned, n_frames, n_clips)
``<id>.npz``       ``frames`` (T, R, R, 3) uint8, ``clip_starts`` (n,) int64, ``meta.json``
``report.json``    counts: videos found, ingested, skipped (with the reason per file), clips
=================  ==========================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.data.episodes import DataFormatError
from vpdd.data.npz import save_npz
from vpdd.data.video import VIDEO_SUFFIXES, VideoError, decode_video
from vpdd.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)
FORMAT = "vpdd-corpus/1"


@dataclass
class VideoRecord:
    frames: np.ndarray  # (T, R, R, 3) uint8
    clip_starts: np.ndarray  # (n,) int64
    caption: str
    meta: dict[str, Any]

    def clip(self, i: int, clip_length: int) -> np.ndarray:
        start = int(self.clip_starts[i])
        return self.frames[start : start + clip_length]


def find_videos(src: str | Path, dangling: list[Path] | None = None) -> list[Path]:
    """The video files under ``src``, sorted; symbolic links that point nowhere go to ``dangling``."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such video folder")
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: expected a folder of video files, got a file")
    try:
        found = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    except PermissionError as err:
        raise PermissionError(f"{src}: folder cannot be read ({err})") from None
    if dangling is not None:
        dangling.extend(p for p in found if p.is_symlink() and not p.exists())
    try:
        return [p for p in found if p.is_file()]
    except PermissionError as err:
        raise PermissionError(f"{src}: folder cannot be read ({err})") from None


MAX_CAPTION_BYTES = 4096


class CaptionError(DataFormatError):
    """A caption sidecar that is not a short UTF-8 text."""


def read_caption(video: Path, default: str) -> tuple[str, bool]:
    """The sidecar caption of ``video`` (same name, .txt) or ``default``; and whether a sidecar was used.

    A sidecar that is not text (not UTF-8, control bytes such as NUL, over :data:`MAX_CAPTION_BYTES`) is a
    :class:`CaptionError` naming the file."""
    sidecar = video.with_suffix(".txt")
    if sidecar.is_file():
        data = sidecar.read_bytes()[: MAX_CAPTION_BYTES + 1]
        if len(data) > MAX_CAPTION_BYTES:
            raise CaptionError(f"{sidecar}: caption longer than {MAX_CAPTION_BYTES} bytes")
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CaptionError(f"{sidecar}: caption is not UTF-8 text ({err.reason} at byte {err.start})") from None
        bad = sorted({hex(ord(c)) for c in raw if ord(c) < 32 and c not in "\t\n\r"})
        if bad:
            raise CaptionError(f"{sidecar}: caption holds control bytes {bad[:4]}; expected plain text")
        text = " ".join(raw.split())
        if text:
            return text, True
    return default, False


def _video_id(src: Path, video: Path) -> str:
    rel = video.relative_to(src).with_suffix("")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(rel))


def video_ids(src: Path, videos: list[Path]) -> dict[Path, str]:
    """A unique, stable id per video: the sanitised relative path without suffix, and where two videos
    would share one (``a b.mp4`` / ``a_b.mp4``, ``same.mp4`` / ``same.mkv``, or ids differing only in case)
    each of them gets the id plus its suffix and a hash of its relative path, whatever else is present."""
    base = {v: _video_id(src, v) for v in videos}
    groups: dict[str, list[Path]] = {}
    for v, vid in base.items():
        groups.setdefault(vid.lower(), []).append(v)
    ids = {}
    for v, vid in base.items():
        if len(groups[vid.lower()]) == 1:
            ids[v] = vid
        else:
            rel = str(v.relative_to(src))
            ids[v] = f"{vid}{v.suffix.lower().replace('.', '_')}-{hashlib.sha256(rel.encode()).hexdigest()[:8]}"
    if len({i.lower() for i in ids.values()}) != len(ids):  # a hash collision: never overwrite
        raise DataFormatError(f"{src}: video ids collide even after disambiguation: {sorted(ids.values())}")
    return ids


def clip_starts(n_frames: int, clip_length: int, clip_stride: int) -> np.ndarray:
    return np.arange(0, n_frames - clip_length + 1, clip_stride, dtype=np.int64)


def ingest_videos(
    src: str | Path,
    out: str | Path,
    resolution: int,
    clip_length: int = 8,
    clip_stride: int = 8,
    frame_step: int = 1,
    min_frames: int = 8,
    default_caption: str = "There are observations about human hands interacting with objects",
    strict: bool = False,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Ingest every video under ``src`` into clips under ``out``; returns the report."""
    from tqdm import tqdm

    src = Path(src)
    dangling: list[Path] = []
    videos = find_videos(src, dangling)
    if not videos:
        raise DataFormatError(f"{src}: no video files ({', '.join(VIDEO_SUFFIXES)}) found")
    need = max(min_frames, clip_length)
    entries, skipped, n_clips = [], {}, 0
    for link in dangling:
        if strict:
            raise VideoError(f"{link}: dangling symbolic link (points to {link.readlink()})")
        log.warning("skipping %s: dangling symbolic link", link)
        skipped[str(link.relative_to(src))] = f"{link}: dangling symbolic link (points to {link.readlink()})"
    ids = video_ids(src, videos)
    renamed = {str(v.relative_to(src)): i for v, i in ids.items() if i != _video_id(src, v)}
    if renamed:
        log.warning("ingest: %d videos would share an id; they get unique ids %s", len(renamed), renamed)
    with atomic_directory(out, inputs=[src], marker="index.json", force=force) as tmp:
        for video in tqdm(videos, desc="ingest", unit="video", disable=not progress, leave=False):
            rel = str(video.relative_to(src))
            try:
                caption, captioned = read_caption(video, default_caption)
                frames, _ = decode_video(video, frame_step=frame_step, resolution=resolution, check_truncation=True)
                if len(frames) < need:
                    raise VideoError(f"{video}: {len(frames)} frames after frame_step={frame_step}, expected >= {need}")
            except (VideoError, CaptionError) as err:
                if strict:
                    raise
                log.warning("skipping %s", err)
                skipped[rel] = str(err)
                continue
            starts = clip_starts(len(frames), clip_length, clip_stride)
            vid = ids[video]
            meta = {"id": vid, "source": rel, "caption": caption, "captioned": captioned,
                    "n_frames": int(len(frames)), "n_clips": int(len(starts))}
            save_npz(tmp / f"{vid}.npz", {"frames": frames, "clip_starts": starts},
                     {"meta.json": json.dumps(meta, sort_keys=True).encode()})
            entries.append({**meta, "path": f"{vid}.npz"})
            n_clips += len(starts)
        if not entries:
            raise DataFormatError(f"{src}: none of the {len(videos)} video files could be ingested: {skipped}")
        index = {"format": FORMAT, "resolution": resolution, "clip_length": clip_length,
                 "clip_stride": clip_stride, "frame_step": frame_step, "videos": entries}
        report = {"videos_found": len(videos) + len(dangling), "videos_ingested": len(entries),
                  "videos_skipped": len(skipped), "skipped": skipped, "clips": n_clips,
                  "captioned": sum(e["captioned"] for e in entries)}
        if dangling:  # keys only when they apply, so a clean ingest's report is unchanged
            report["dangling_links"] = len(dangling)
        if renamed:
            report["renamed_ids"] = renamed
        atomic_write_json(tmp / "index.json", index)
        atomic_write_json(tmp / "report.json", report)
    if skipped:
        log.warning("ingest: skipped %d of %d videos (see %s/report.json)", len(skipped), len(videos), out)
    return report


class CorpusStore:
    """An ingested corpus folder, read through its ``index.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.is_file():
            raise DataFormatError(
                f"{index}: missing corpus index; expected a folder written by `vpdd data ingest-videos`"
            )
        try:
            data = json.loads(index.read_text())
            if data.get("format") != FORMAT:
                raise KeyError(f"format {data.get('format')!r} is not {FORMAT!r}")
            self.entries: list[dict[str, Any]] = list(data["videos"])
            self.resolution = int(data["resolution"])
            self.clip_length = int(data["clip_length"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataFormatError(f"{index}: malformed corpus index ({err})") from None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def n_clips(self) -> int:
        return sum(int(e["n_clips"]) for e in self.entries)

    def load(self, entry: dict[str, Any]) -> VideoRecord:
        path = self.root / entry["path"]
        try:
            with np.load(path, allow_pickle=False) as npz:
                frames, starts = npz["frames"], npz["clip_starts"]
                meta = json.loads(npz.zip.read("meta.json"))
        except Exception as err:
            raise DataFormatError(f"{path}: unreadable corpus file ({type(err).__name__}: {err})") from None
        if frames.ndim != 4 or frames.shape[1:] != (self.resolution, self.resolution, 3):
            raise DataFormatError(
                f"{path}: frames {frames.shape}, expected (T, {self.resolution}, {self.resolution}, 3)"
            )
        return VideoRecord(frames=frames, clip_starts=starts, caption=str(meta.get("caption", "")), meta=meta)

    def __iter__(self):
        for entry in self.entries:
            yield self.load(entry)
