"""Side-by-side reconstruction videos (original | reconstruction) for a trained tokenizer.

A video is cut into consecutive, non-overlapping windows of ``encode_window`` frames (the last one padded
by repeating the final frame), each window is encoded and decoded, and the reconstructed frames are put to
the right of the originals. Videos are written as H.264 mp4 (PyAV, :mod:`vpdd.data.video`) or as GIF
(Pillow), under a temporary name and renamed. ``psnr.json`` lists the PSNR of each video.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.tokenizer import data as tdata
from vpdd.tokenizer.metrics import psnr
from vpdd.tokenizer.model import VQVAE, to_model_input, to_uint8
from vpdd.tokenizer.pretrained import load_tokenizer
from vpdd.utils.io import atomic_write_json

log = logging.getLogger(__name__)


@torch.no_grad()
def reconstruct_frames(
    model: VQVAE, frames: np.ndarray, window: int, batch_size: int = 32, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Reconstruction of uint8 frames (T, H, W, 3), window by window."""
    n = len(frames)
    n_win = -(-n // window)
    idx = np.minimum(np.arange(n_win * window), n - 1).reshape(n_win, window)
    out = []
    for start in range(0, n_win, batch_size):
        clips = torch.from_numpy(frames[idx[start : start + batch_size]]).to(device)
        out.append(to_uint8(model.decode(model.encode(to_model_input(clips)))).cpu().numpy())
    return np.concatenate(out).reshape(n_win * window, *frames.shape[1:])[:n]


def write_video(path: str | Path, frames: np.ndarray, fps: int = 20) -> Path:
    """Write uint8 frames (T, H, W, 3) as mp4 (H.264 via :func:`vpdd.data.video.write_video`) or as gif
    (Pillow); both atomically."""
    path = Path(path)
    if path.suffix != ".gif":
        from vpdd.data.video import write_video as write_mp4

        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420p: even sizes
        return write_mp4(path, frames, fps=fps)
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".gif", dir=path.parent)
    os.close(fd)
    try:
        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def reconstruct_videos(
    tokenizer_dir: str | Path,
    out: str | Path,
    *,
    robot: str | Path | None = None,
    corpus: str | Path | None = None,
    episodes: list[str] | None = None,
    n: int = 4,
    fmt: str = "mp4",
    fps: int = 20,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Reconstruct the first ``n`` videos of each given folder and every given episode file."""
    from vpdd.data.episodes import load_episode

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    model, cfg, _ = load_tokenizer(tokenizer_dir, dev)
    what = f"checkpoint {tokenizer_dir}"
    videos: list[tuple[str, np.ndarray]] = []
    if robot is not None:
        items = tdata.load_robot_items(robot)[:n]
        tdata.check_resolution(items, cfg.resolution, what, robot)
        videos += [(f"robot_{Path(i.key).with_suffix('').as_posix().replace('/', '_')}", i.frames) for i in items]
    if corpus is not None:
        items = tdata.load_corpus_items(corpus)[0][:n]
        tdata.check_resolution(items, cfg.resolution, what, corpus)
        videos += [(f"corpus_{i.key}", i.frames) for i in items]
    for ep_path in episodes or []:
        ep = load_episode(ep_path)
        item = tdata.VideoItem("robot", str(ep_path), ep.frames)
        tdata.check_resolution([item], cfg.resolution, what, ep_path)
        videos.append((f"episode_{Path(ep_path).stem}", ep.frames))
    if not videos:
        raise ValueError("nothing to reconstruct: pass --robot, --corpus or --episode")
    results = []
    for name, frames in videos:
        recon = reconstruct_frames(model, frames, cfg.encode_window, device=dev)
        value = float(psnr(torch.from_numpy(frames)[None], torch.from_numpy(recon)[None])[0])
        path = write_video(Path(out) / f"{name}.{fmt}", np.concatenate([frames, recon], axis=2), fps)
        results.append({"video": str(path), "psnr": value, "frames": int(len(frames))})
        log.info("%s: PSNR %.2f dB", path, value)
    atomic_write_json(Path(out) / "psnr.json", {"tokenizer": str(tokenizer_dir), "videos": results})
    return results
