"""Ingesting a folder of videos: good files become clips, bad ones are skipped and counted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpdd.data.corpus import CorpusStore, ingest_videos
from vpdd.data.episodes import DataFormatError
from vpdd.data.video import VideoError, read_video, resize_center_crop, write_video


def _moving_square(n=20, h=48, w=64):
    frames = np.zeros((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        frames[i, 10:26, 2 * i : 2 * i + 16] = (255, 80, 0)
    return frames


@pytest.fixture
def mixed_folder(tmp_path):
    src = tmp_path / "videos"
    write_video(src / "good_a.mp4", _moving_square(20))
    write_video(src / "sub" / "good_b.mp4", _moving_square(17))
    (src / "good_a.txt").write_text("  a square   slides right \n")
    (src / "empty.mp4").write_bytes(b"")
    (src / "text.webm").write_text("this is not a video")
    truncated = (src / "good_a.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(truncated[: len(truncated) // 3])
    write_video(src / "short.avi.mp4", _moving_square(3))
    return src


def test_mixed_folder_skips_bad_files_with_a_count(mixed_folder, tmp_path):
    report = ingest_videos(mixed_folder, tmp_path / "corpus", resolution=32, clip_length=8, clip_stride=4,
                           min_frames=8, default_caption="default caption", progress=False)
    assert report["videos_found"] == 6 and report["videos_ingested"] == 2 and report["videos_skipped"] == 4
    assert set(report["skipped"]) == {"empty.mp4", "text.webm", "truncated.mp4", "short.avi.mp4"}
    assert "expected >= 8" in report["skipped"]["short.avi.mp4"]
    store = CorpusStore(tmp_path / "corpus")
    captions = {e["id"]: e["caption"] for e in store.entries}
    assert captions == {"good_a": "a square slides right", "sub_good_b": "default caption"}
    record = store.load(store.entries[0])
    assert record.frames.shape[1:] == (32, 32, 3) and record.frames.dtype == np.uint8
    assert list(record.clip_starts) == [0, 4, 8, 12]  # 20 frames, clips of 8 every 4
    assert record.clip(3, 8).shape == (8, 32, 32, 3)
    assert json.loads((tmp_path / "corpus" / "report.json").read_text())["clips"] == 4 + 3


def test_strict_mode_turns_a_bad_file_into_an_error(mixed_folder, tmp_path):
    with pytest.raises(VideoError, match="empty.mp4"):
        ingest_videos(mixed_folder, tmp_path / "corpus", resolution=32, strict=True, progress=False)
    assert not (tmp_path / "corpus").exists()


def test_unusable_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such video folder"):
        ingest_videos(tmp_path / "nope", tmp_path / "out", resolution=32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no video files"):
        ingest_videos(tmp_path / "empty", tmp_path / "out", resolution=32)
    (tmp_path / "file.mp4").write_text("x")
    with pytest.raises(NotADirectoryError):
        ingest_videos(tmp_path / "file.mp4", tmp_path / "out", resolution=32)


def test_video_round_trip_and_crop(tmp_path):
    frames = _moving_square(10)
    path = write_video(tmp_path / "v.mp4", frames)
    back = read_video(path)
    assert back.shape == frames.shape
    psnr = 10 * np.log10(255**2 / np.mean((back.astype(float) - frames) ** 2))
    assert psnr > 30
    assert write_video(tmp_path / "w.mp4", frames).read_bytes() == path.read_bytes()  # deterministic encoder
    cropped = resize_center_crop(frames, 24)
    assert cropped.shape == (10, 24, 24, 3)
    with pytest.raises(VideoError, match="zero frames|not a readable"):
        (tmp_path / "z.mp4").write_bytes(b"\x00" * 64)
        read_video(tmp_path / "z.mp4")


def test_written_videos_are_readable_by_others(tmp_path):
    """Rollout mp4s are for people to watch: 0644 like any other output, not mkstemp's 0600."""
    import numpy as np

    from vpdd.data.video import write_video

    path = write_video(tmp_path / "v.mp4", np.zeros((2, 16, 16, 3), np.uint8))
    assert path.stat().st_mode & 0o777 == 0o644
