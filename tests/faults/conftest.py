"""Fault injection (issue 17): every case asserts the clear error or the recovery, fast (seconds each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def moving_frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` uint8 frames (size x size) of a square moving over noise: a valid little video."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        x = (2 * t) % (size - 8)
        frames[t, 8:16, x : x + 8] = 255
    return frames


@pytest.fixture
def video_dir(tmp_path: Path) -> Path:
    from vpdd.data.video import write_video

    src = tmp_path / "videos"
    write_video(src / "good.mp4", moving_frames(16))
    return src


def run_cli(*argv: str) -> tuple[int, str]:
    """``vpdd ARGV`` in-process: (exit code, stderr text)."""
    import contextlib
    import io

    from vpdd.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()
