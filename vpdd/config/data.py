"""Config group ``data``: the raw robot demonstrations and the actionless video corpus."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, in_range, positive
from vpdd.envs.tasks import CAMERAS, unknown_tasks


@dataclass
class RobotDataConfig(Validated):
    # The fine-tuning task set: scripted-expert demonstrations with actions.
    tasks: list[str] = field(
        default_factory=lambda: ["button-press-topdown-v3", "drawer-close-v3", "plate-slide-v3", "handle-press-v3"]
    )
    demos_per_task: int = 10
    max_steps: int = 150  # episode limit while collecting
    steps_after_success: int = 10  # keep recording this many steps after the first success; -1: until max_steps
    max_attempts_per_demo: int = 3  # failed scripted episodes are dropped; give up after this many tries per demo
    seed: int = 0

    def checks(self) -> list[Check]:
        return [
            Check("tasks", len(self.tasks) > 0 and not unknown_tasks(self.tasks),
                  f"a non-empty list of Meta-World v3 task names; unknown: {unknown_tasks(self.tasks)}"),
            *positive(self, "demos_per_task", "max_steps", "max_attempts_per_demo"),
            Check("steps_after_success", self.steps_after_success >= -1, "-1 or a value >= 0"),
        ]


@dataclass
class CorpusConfig(Validated):
    # The default actionless corpus stands in for human video: Meta-World videos of tasks outside the
    # fine-tuning set, seen from another camera, actions discarded, written as mp4 files.
    tasks: list[str] = field(
        default_factory=lambda: ["button-press-v3", "drawer-open-v3", "handle-pull-v3", "door-close-v3",
                                 "window-close-v3", "faucet-open-v3"]
    )
    videos_per_task: int = 4
    camera: str = "corner3"
    render_resolution: int = 96  # videos are rendered larger than the model resolution; ingest resizes
    captioned_fraction: float = 0.5  # this share of videos gets a sidecar caption; the rest use the default
    fps: int = 20
    seed: int = 1000

    def checks(self) -> list[Check]:
        return [
            Check("tasks", not unknown_tasks(self.tasks),
                  f"Meta-World v3 task names; unknown: {unknown_tasks(self.tasks)}"),
            Check("camera", self.camera in CAMERAS, f"one of {list(CAMERAS)}"),
            *positive(self, "render_resolution", "fps"),
            Check("videos_per_task", self.videos_per_task >= 0, "a value >= 0"),
            in_range(self, "captioned_fraction", 0.0, 1.0),
        ]


@dataclass
class IngestConfig(Validated):
    clip_length: int = 8  # frames per clip
    clip_stride: int = 8  # frames between clip starts (8: non-overlapping, as in the paper)
    frame_step: int = 1  # keep every n-th decoded frame
    min_frames: int = 8  # videos shorter than this are rejected as bad input
    default_caption: str = "There are observations about human hands interacting with objects"

    def checks(self) -> list[Check]:
        return positive(self, "clip_length", "clip_stride", "frame_step", "min_frames")


@dataclass
class DataConfig(Validated):
    root: str = "data"  # pinned by data.dvc
    robot: RobotDataConfig = field(default_factory=RobotDataConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    workers: int = 2  # processes for collection

    def checks(self) -> list[Check]:
        overlap = sorted(set(self.robot.tasks) & set(self.corpus.tasks))
        return [
            *positive(self, "workers"),
            Check("corpus.tasks", not overlap, f"tasks outside the fine-tuning set; both lists hold {overlap}"),
        ]
