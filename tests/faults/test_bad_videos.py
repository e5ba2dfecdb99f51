"""A generated set of bad videos: collisions, truncation, binary captions, dangling links, huge frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vpdd.data.corpus import CorpusStore, ingest_videos
from vpdd.data.video import VideoError, decode_video, write_video

from .conftest import moving_frames


def _ingest(src: Path, out: Path, **kw):
    return ingest_videos(src, out, resolution=16, clip_length=4, clip_stride=4, min_frames=4, progress=False, **kw)


def test_colliding_names_get_unique_ids_and_a_consistent_index(tmp_path):
    src = tmp_path / "v"
    lengths = {"a b.mp4": 8, "a_b.mp4": 12, "same.mp4": 16, "same.mkv": 20, "solo.mp4": 8}
    for name, n in lengths.items():
        write_video(src / name, moving_frames(n, seed=n))
    out = tmp_path / "corpus"
    report = _ingest(src, out)
    store = CorpusStore(out)
    assert report["videos_ingested"] == 5 and len(store) == 5
    ids = [e["id"] for e in store.entries]
    assert len(set(ids)) == 5 and "solo" in ids  # a name without a collision keeps its old id
    assert len(list(out.glob("*.npz"))) == 5
    for entry in store.entries:  # each entry's frame count is its own file's
        assert len(store.load(entry).frames) == lengths[entry["source"]] == entry["n_frames"]
    assert set(report["renamed_ids"]) == {"a b.mp4", "a_b.mp4", "same.mp4", "same.mkv"}
    again = tmp_path / "again"
    _ingest(src, again)
    assert [e["id"] for e in CorpusStore(again).entries] == ids  # stable


@pytest.mark.parametrize("suffix,fmt", [(".mp4", "mp4"), (".mkv", "matroska")])
def test_a_truncated_video_is_reported_not_ingested_short(tmp_path, suffix, fmt):
    import av

    src = tmp_path / "v"
    src.mkdir()
    full = src / f"full{suffix}"
    with av.open(str(full), "w", format=fmt, options={"movflags": "+faststart"} if fmt == "mp4" else {}) as c:
        st = c.add_stream("mpeg4", rate=20)
        st.width = st.height = 32
        st.pix_fmt = "yuv420p"
        for arr in moving_frames(60):
            for pkt in st.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    data = full.read_bytes()
    full.unlink()
    (src / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    write_video(src / "good.mp4", moving_frames(16))
    report = _ingest(src, tmp_path / "corpus")
    assert report["videos_ingested"] == 1 and report["videos_skipped"] == 1
    reason = report["skipped"][f"cut{suffix}"]
    assert f"cut{suffix}" in reason and ("truncated" in reason or "decoding failed" in reason)
    with pytest.raises(VideoError, match=f"cut{suffix}"):
        _ingest(src, tmp_path / "strict", strict=True)


def test_a_binary_caption_is_refused_and_counted(tmp_path):
    src = tmp_path / "v"
    write_video(src / "clip.mp4", moving_frames(8))
    (src / "clip.txt").write_bytes(b"a hand\x00\x01\xff\xfe opens")
    write_video(src / "ok.mp4", moving_frames(8, seed=2))
    (src / "ok.txt").write_text("a hand opens a drawer\n")
    report = _ingest(src, tmp_path / "corpus")
    assert "clip.txt" in report["skipped"]["clip.mp4"] and report["videos_ingested"] == 1
    entry = CorpusStore(tmp_path / "corpus").entries[0]
    assert entry["caption"] == "a hand opens a drawer" and "\x00" not in json.dumps(entry)


def test_dangling_links_are_counted(tmp_path):
    src = tmp_path / "v"
    write_video(src / "ok.mp4", moving_frames(8))
    (src / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    report = _ingest(src, tmp_path / "corpus")
    assert report["dangling_links"] == 1 and "dangling" in report["skipped"]["gone.mp4"]
    assert report["videos_found"] == 2 and report["videos_ingested"] == 1


def test_a_clean_ingest_report_keeps_its_keys(tmp_path, video_dir):
    report = _ingest(video_dir, tmp_path / "corpus")
    assert set(report) == {"videos_found", "videos_ingested", "videos_skipped", "skipped", "clips", "captioned"}


def test_huge_frames_are_downscaled_while_decoding(tmp_path, monkeypatch):
    import vpdd.data.video as video

    big = np.zeros((6, 480, 640, 3), np.uint8)
    big[:, 100:200, 100:300] = 200
    path = write_video(tmp_path / "big.mp4", big)
    held = []
    real = video.resize_center_crop
    monkeypatch.setattr(video, "_BUFFER_PIXELS", 2 * 480 * 640)  # at most two full-size frames at once

    def spy(frames, resolution):
        held.append(len(frames))
        return real(frames, resolution)

    monkeypatch.setattr(video, "resize_center_crop", spy)
    frames, declared = decode_video(path, resolution=16)
    assert frames.shape == (6, 16, 16, 3) and declared == 6 and max(held) <= 2
    # and the result is the same as resizing the whole stack at once (numerics unchanged)
    assert np.array_equal(frames, real(video.read_video(path), 16))


def test_the_frame_budget_is_enforced(tmp_path):
    path = write_video(tmp_path / "long.mp4", moving_frames(30))
    with pytest.raises(VideoError, match="budget"):
        decode_video(path, budget=10)
    assert len(decode_video(path, frame_step=3, budget=10)[0]) == 10
