"""The default raw data the pipeline ships with, regenerated deterministically from the config.

``data/metaworld/``  scripted demonstrations of the fine-tuning tasks (``data.robot``), camera ``corner2``;
``data/videos/``     the actionless corpus: mp4 videos of other tasks from another camera (``data.corpus``),
                     standing in for human video; a caption sidecar for some of them.

``data.dvc`` pins both. This module only produces the files; checking them against the pin is the CLI's
job (``vpdd data fetch``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vpdd.config import VPDDConfig

log = logging.getLogger(__name__)

ROBOT_DIR = "metaworld"
VIDEOS_DIR = "videos"


def collect_spec(cfg: VPDDConfig, **overrides: Any):
    from vpdd.data.collect import CollectSpec

    r, e = cfg.data.robot, cfg.env
    fields = dict(
        tasks=list(r.tasks), demos_per_task=r.demos_per_task, max_steps=r.max_steps,
        steps_after_success=r.steps_after_success, max_attempts_per_demo=r.max_attempts_per_demo, seed=r.seed,
        camera=e.camera, resolution=e.resolution, flip=e.flip, crop=e.crop, fast_render=e.fast_render,
        render_backend=e.render_backend,
    )
    fields.update(overrides)
    return CollectSpec(**fields)


def generate_default_data(cfg: VPDDConfig, root: str | Path, progress: bool = True) -> dict[str, Any]:
    """Write the robot demonstrations and the actionless corpus videos under ``root``."""
    from vpdd.data.collect import collect_metaworld, render_actionless_corpus

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    robot = collect_metaworld(collect_spec(cfg), root / ROBOT_DIR, workers=cfg.data.workers, progress=progress)
    c = cfg.data.corpus
    corpus = {"videos": 0}
    if c.tasks and c.videos_per_task:
        corpus = render_actionless_corpus(
            list(c.tasks), c.videos_per_task, root / VIDEOS_DIR, camera=c.camera, resolution=c.render_resolution,
            fps=c.fps, captioned_fraction=c.captioned_fraction, seed=c.seed, max_steps=cfg.data.robot.max_steps,
            render_backend=cfg.env.render_backend, progress=progress,
        )
    else:
        log.warning("data.corpus lists no tasks: put actionless videos in %s yourself", root / VIDEOS_DIR)
    return {"robot_episodes": robot["episodes"], "robot_frames": robot["frames"], "corpus_videos": corpus["videos"]}
