"""Video file IO (PyAV) and frame preprocessing.

Decoding errors become :class:`VideoError` naming the file and what was wrong (unreadable container,
no video stream, zero frames, frames of changing size, truncated, over the frame budget). Decoding streams:
frames are downscaled a few at a time, so a huge video never holds all its full-size frames. Writing is
deterministic for the same frames (single-threaded libx264 with fixed settings) and atomic (temporary
name, then rename).

The RGB <-> YUV 4:2:0 conversion is done here in numpy (BT.601, limited range) rather than by FFmpeg's
swscale, and every byte handed to the encoder (line padding included) is defined: otherwise the encoded
bytes varied between runs, and pinned videos must hash the same on every run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from vpdd.utils.io import default_mode

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov")


class VideoError(ValueError):
    """A video file that cannot be used; the message names the file and the problem."""


# Budgets of the streaming decode (:func:`decode_video`): frames kept per video after ``frame_step``, and
# the pixels of full-size frames held at once before they are downscaled.
MAX_FRAMES = 20_000
_BUFFER_PIXELS = 32 * 1024 * 1024
# A video that decodes cleanly but yields fewer frames than its container declares is truncated when it
# misses more than this many frames (or this fraction of them): containers round their durations.
TRUNCATION_TOLERANCE = (2, 0.05)


def declared_frames(stream) -> int | None:
    """The frame count the container declares for ``stream`` (header count, else duration x rate)."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif stream.container.duration is not None:
        duration = stream.container.duration / 1_000_000  # av.time_base
    if rate and duration and duration > 0:
        return int(round(duration * float(rate)))
    return None


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Decode all frames of a video as (T, H, W, 3) uint8 RGB."""
    return decode_video(path, max_frames=max_frames, budget=None)[0]


def decode_video(
    path: str | Path,
    *,
    frame_step: int = 1,
    resolution: int | None = None,
    max_frames: int | None = None,
    budget: int | None = MAX_FRAMES,
    check_truncation: bool = False,
) -> tuple[np.ndarray, int | None]:
    """Stream-decode a video: every ``frame_step``-th frame, resized and centre-cropped to ``resolution``
    (:func:`resize_center_crop`) a few frames at a time so full-size frames are never all held at once.

    Returns the frames (T, H, W, 3) uint8 and the container's declared frame count (None if unknown).
    More than ``budget`` kept frames, or (with ``check_truncation``) a clean decode that ends well short of
    the declared count (:data:`TRUNCATION_TOLERANCE`), is a :class:`VideoError`.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    if frame_step < 1:
        raise VideoError(f"{path}: frame_step must be >= 1, got {frame_step}")
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    first_shape = None
    decoded = kept = 0
    declared = None

    def flush() -> None:
        if pending:
            batch = np.stack(pending)
            pending.clear()
            out.append(resize_center_crop(batch, resolution) if resolution else batch)

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            declared = declared_frames(stream)
            for frame in container.decode(stream):
                index, decoded = decoded, decoded + 1
                shape = (frame.height, frame.width)
                if first_shape is None:
                    first_shape = shape
                elif shape != first_shape:
                    raise VideoError(
                        f"{path}: frame {index} has size {shape[1]}x{shape[0]}, "
                        f"expected {first_shape[1]}x{first_shape[0]} like the first frame"
                    )
                if index % frame_step:
                    continue
                if budget is not None and kept >= budget:
                    raise VideoError(f"{path}: more than {budget} frames after frame_step={frame_step} "
                                     "(the decode budget); cut the video or raise frame_step")
                if frame.format.name == "yuv420p":
                    arr = yuv_planes_to_rgb(*(_plane_array(p) for p in frame.planes))
                else:
                    arr = frame.to_ndarray(format="rgb24")
                pending.append(arr)
                kept += 1
                if len(pending) * arr.shape[0] * arr.shape[1] >= _BUFFER_PIXELS:
                    flush()
                if max_frames is not None and kept >= max_frames:
                    break
    except VideoError:
        raise
    except Exception as err:  # av.error.InvalidDataError, EOFError, ...; PyAV's hierarchy varies by version
        if decoded:
            raise VideoError(f"{path}: decoding failed after {decoded} frames ({type(err).__name__}: {err})") from None
        raise VideoError(f"{path}: not a readable video ({type(err).__name__}: {err})") from None
    if not decoded:
        raise VideoError(f"{path}: the video has zero frames")
    if check_truncation and max_frames is None and declared:
        slack = max(TRUNCATION_TOLERANCE[0], int(np.ceil(TRUNCATION_TOLERANCE[1] * declared)))
        if decoded < declared - slack:
            raise VideoError(f"{path}: truncated: decoded {decoded} frames, the container declares {declared}")
    flush()
    return np.concatenate(out) if len(out) > 1 else out[0], declared


def write_video(path: str | Path, frames: np.ndarray, fps: int = 20, codec: str = "mpeg4", quality: int = 3) -> Path:
    """Encode (T, H, W, 3) uint8 frames as an mp4, atomically. Even H and W are required by yuv420p.

    ``codec`` is FFmpeg's native ``mpeg4`` by default: its output bytes are the same on every run, which
    pinned data needs (libx264's were not, under load). ``quality`` is its qscale (1 best .. 31).
    """
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise VideoError(f"{path}: expected (T, H, W, 3) uint8 frames with T > 0, got {frames.shape} {frames.dtype}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise VideoError(f"{path}: H.264 needs even frame sizes, got {w}x{h}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.thread_count = 1
            if codec == "mpeg4":
                stream.options = {"flags": "+qscale", "global_quality": str(quality * 118)}  # 118 = FF_QP2LAMBDA
            elif codec == "libx264":
                stream.options = {"crf": str(quality), "x264-params": "threads=1:lookahead-threads=1"}
            container.metadata["encoder"] = "vpdd"
            for arr in frames:
                for packet in stream.encode(_yuv_frame(arr)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        default_mode(tmp)  # mkstemp makes it 0600; a video is for others to watch too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rgb_to_yuv_planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> Y (H, W), U and V (H/2, W/2) uint8: BT.601 limited range in integer maths."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    h, w = y.shape

    def pool(c: np.ndarray) -> np.ndarray:
        return (c.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3)) + 2) >> 2

    return y.astype(np.uint8), pool(u).astype(np.uint8), pool(v).astype(np.uint8)


def yuv_planes_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb_to_yuv_planes` (chroma upsampled by repetition), integer maths."""
    c = y.astype(np.int32) - 16
    d = u.astype(np.int32).repeat(2, 0).repeat(2, 1)[: y.shape[0], : y.shape[1]] - 128
    e = v.astype(np.int32).repeat(2, 0).repeat(2, 1)[: y.shape[0], : y.shape[1]] - 128
    r = (298 * c + 409 * e + 128) >> 8
    g = (298 * c - 100 * d - 208 * e + 128) >> 8
    b = (298 * c + 516 * d + 128) >> 8
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def _plane_array(plane) -> np.ndarray:
    """A decoded plane as (height, width) uint8, dropping the line padding."""
    raw = np.frombuffer(bytes(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)
    return raw[:, : plane.width]


def _yuv_frame(rgb: np.ndarray):
    """An ``av.VideoFrame`` holding ``rgb`` as yuv420p, every byte (line padding too) defined."""
    import av

    frame = av.VideoFrame(rgb.shape[1], rgb.shape[0], "yuv420p")
    for plane, data in zip(frame.planes, rgb_to_yuv_planes(rgb), strict=True):
        padded = np.zeros((plane.height, plane.line_size), dtype=np.uint8)
        padded[:, : plane.width] = data
        plane.update(padded.tobytes())
    return frame


def resize_center_crop(frames: np.ndarray, resolution: int) -> np.ndarray:
    """Scale the short side to ``resolution`` (bilinear, antialiased) and centre-crop a square."""
    import torch
    import torch.nn.functional as F

    t, h, w, _ = frames.shape
    if h == resolution and w == resolution:
        return frames
    scale = resolution / min(h, w)
    new_h, new_w = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
