"""Config group ``data``: the raw robot demonstrations, the actionless video corpus, the actionless video
of the fine-tuning tasks (``task_video``) and the cross-domain stand-in for human video (``standin``).

``data.robot.source`` picks where the fine-tuning demonstrations come from (docs/data.md): ``metaworld``
(the scripted demonstrations in ``data/metaworld``, pinned by data.dvc) or ``lerobot`` (a LeRobot-format
dataset, ``data.robot.lerobot.path``, imported by the ``import_robot_data`` stage). ``episodes`` and
``imports`` follow from it through ``sources`` (conf/data/*.yaml interpolates them): set ``source``, not them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, distinct, in_range, one_of, positive
from vpdd.envs.tasks import CAMERAS, unknown_tasks

ROBOT_SOURCES = ("metaworld", "lerobot")


@dataclass
class LeRobotSourceConfig(Validated):
    path: str = ""  # a LeRobot dataset folder (v3.0 or v2.1), or a hub cache folder datasets--org--name
    camera: str = ""  # the camera feature to train on, e.g. observation.image; "": the dataset's only camera
    repo_id: str = ""  # recorded in lineage; "": read from a hub cache path, else none
    revision: str = ""  # likewise (a hub snapshot's commit)


@dataclass
class RobotSourceSpec(Validated):
    episodes: str = "data/metaworld"  # the vpdd episode store the stages read
    imports: list[str] = field(default_factory=list)  # import_robot_data stages dvc.yaml runs ([] or [lerobot])


def _rendered_task_checks(cfg) -> list[Check]:
    """The ``tasks`` rules of a rendered video set (``tasks``, ``videos_per_task``): known, distinct, and some
    when anything is to be rendered."""
    return [
        Check("tasks", not unknown_tasks(cfg.tasks), f"Meta-World v3 task names; unknown: {unknown_tasks(cfg.tasks)}"),
        Check("tasks", cfg.videos_per_task == 0 or len(cfg.tasks) > 0,
              "a non-empty list when videos_per_task > 0 (there is nothing to render otherwise)"),
        distinct(cfg, "tasks"),
    ]


def _default_sources() -> dict[str, RobotSourceSpec]:
    return {"metaworld": RobotSourceSpec("data/metaworld", []),
            "lerobot": RobotSourceSpec("build/robot/lerobot", ["lerobot"])}


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
    source: str = "metaworld"  # metaworld | lerobot
    lerobot: LeRobotSourceConfig = field(default_factory=LeRobotSourceConfig)
    sources: dict[str, RobotSourceSpec] = field(default_factory=_default_sources)
    episodes: str = "data/metaworld"  # derived: sources[source].episodes
    imports: list[str] = field(default_factory=list)  # derived: sources[source].imports

    def checks(self) -> list[Check]:
        spec = self.sources.get(self.source)
        return [
            one_of(self, "source", ROBOT_SOURCES),
            Check("sources", set(self.sources) == set(ROBOT_SOURCES), f"exactly the entries {list(ROBOT_SOURCES)}"),
            Check("episodes", spec is None or self.episodes == spec.episodes,
                  f"sources.{self.source}.episodes ({spec.episodes if spec else '?'}): it follows data.robot.source; "
                  "set the source, not this key"),
            Check("imports", spec is None or list(self.imports) == list(spec.imports),
                  f"sources.{self.source}.imports ({list(spec.imports) if spec else '?'}): it follows "
                  "data.robot.source; set the source, not this key"),
            Check("lerobot.path", self.source != "lerobot" or bool(self.lerobot.path),
                  "the LeRobot dataset folder to import (required when data.robot.source=lerobot)"),
            Check("tasks", len(self.tasks) > 0 and not unknown_tasks(self.tasks),
                  f"a non-empty list of Meta-World v3 task names; unknown: {unknown_tasks(self.tasks)}"),
            distinct(self, "tasks"),
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
            *_rendered_task_checks(self),
            Check("camera", self.camera in CAMERAS, f"one of {list(CAMERAS)}"),
            *positive(self, "render_resolution", "fps"),
            Check("videos_per_task", self.videos_per_task >= 0, "a value >= 0"),
            in_range(self, "captioned_fraction", 0.0, 1.0),
        ]


@dataclass
class TaskVideoConfig(Validated):
    # Actionless video of the fine-tuning tasks (docs/data.md): scripted episodes of data.robot.tasks seen from
    # the demonstrations' camera (env), on scenes disjoint from the demonstrations, the evaluation scenes and
    # the held-out clips of `vpdd eval video`, written without actions. Tokenizer training and pre-training read
    # it; fine-tuning cannot. episodes_per_task: 0 renders nothing (an empty set).
    episodes_per_task: int = 80
    seed: int = 2000  # base of the scene seeds; must differ from data.robot.seed and data.corpus.seed
    max_attempts_per_episode: int = 2  # failed scripted episodes are dropped

    def checks(self) -> list[Check]:
        return [
            Check("episodes_per_task", self.episodes_per_task >= 0, "a value >= 0"),
            *positive(self, "max_attempts_per_episode"),
        ]


DEMO_CAMERA = "corner2"  # env.camera of both presets: the stand-in video refuses it
STANDIN_ARM_STYLES = ("hidden", "recoloured")


@dataclass
class StandinConfig(Validated):
    # Cross-domain stand-in for human video (docs/data.md, vpdd/data/standin.py): scripted episodes of related
    # tasks outside the fine-tuning set, robot arm hidden or skin-toned, gripper skin-toned, other cameras,
    # lighting and colour drawn per video; mp4 + caption sidecars only, read by `vpdd data ingest-videos`.
    tasks: list[str] = field(
        default_factory=lambda: ["button-press-v3", "button-press-wall-v3", "drawer-open-v3", "handle-press-side-v3",
                                 "plate-slide-side-v3", "plate-slide-back-v3"]
    )
    videos_per_task: int = 8  # 0 renders nothing (an empty folder)
    seed: int = 3000  # base of the scene seeds; must differ from data.robot/corpus/task_video seeds
    render_resolution: int = 96  # even; ingest resizes to env.resolution
    crop: float = 1.0  # field-of-view fraction (1: the camera's own, wider than the demonstrations' crop)
    fps: int = 20
    captioned_fraction: float = 0.5  # this share of each task's videos gets a caption sidecar
    arm_style: str = "hidden"  # hidden: arm and pedestal invisible | recoloured: arm links skin-toned
    cameras: list[str] = field(default_factory=lambda: ["corner", "corner3", "topview", "behindGripper"])
    light_scale: list[float] = field(default_factory=lambda: [0.5, 1.5])  # [low, high] factor on the lights
    colour_jitter: float = 0.5  # 0: none; 1: brightness +-40 %, white balance +-25 %, hue +-40 degrees
    max_steps: int = 150
    steps_after_success: int = 5
    max_attempts_per_video: int = 2  # failed scripted episodes are dropped and the next scene tried

    def checks(self) -> list[Check]:
        bad_cams = [c for c in self.cameras if c not in CAMERAS or c == DEMO_CAMERA]
        return [
            *_rendered_task_checks(self),
            Check("videos_per_task", self.videos_per_task >= 0, "a value >= 0"),
            Check("cameras", not bad_cams and len(self.cameras) > 0,
                  f"a non-empty list of cameras from {[c for c in CAMERAS if c != DEMO_CAMERA]}: not the "
                  f"demonstrations' camera {DEMO_CAMERA!r}; refused: {bad_cams}"),
            distinct(self, "cameras"),
            one_of(self, "arm_style", STANDIN_ARM_STYLES),
            Check("render_resolution", self.render_resolution >= 2 and self.render_resolution % 2 == 0,
                  "an even size >= 2 (yuv420p video)"),
            Check("crop", 0.0 < self.crop <= 1.0, "a fraction in (0, 1]"),
            Check("light_scale", len(self.light_scale) == 2 and 0 < self.light_scale[0] <= self.light_scale[1],
                  "[low, high] with 0 < low <= high"),
            in_range(self, "colour_jitter", 0.0, 1.0),
            in_range(self, "captioned_fraction", 0.0, 1.0),
            *positive(self, "fps", "max_steps", "max_attempts_per_video"),
            Check("steps_after_success", self.steps_after_success >= -1, "-1 or a value >= 0"),
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
    task_video: TaskVideoConfig = field(default_factory=TaskVideoConfig)
    standin: StandinConfig = field(default_factory=StandinConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    workers: int = 2  # processes for collection

    def checks(self) -> list[Check]:
        overlap = sorted(set(self.robot.tasks) & set(self.corpus.tasks))
        standin_overlap = sorted(set(self.robot.tasks) & set(self.standin.tasks))
        return [
            *positive(self, "workers"),
            Check("corpus.tasks", not overlap, f"tasks outside the fine-tuning set; both lists hold {overlap}"),
            Check("task_video.seed", self.task_video.seed not in (self.robot.seed, self.corpus.seed),
                  f"a base seed other than data.robot.seed ({self.robot.seed}) and data.corpus.seed "
                  f"({self.corpus.seed}), so its scenes are not the demonstrations'"),
            Check("standin.tasks", not standin_overlap,
                  f"tasks outside the fine-tuning set data.robot.tasks (the stand-in must not show the "
                  f"fine-tuning tasks); both lists hold {standin_overlap}"),
            Check("standin.seed", self.standin.seed not in (self.robot.seed, self.corpus.seed, self.task_video.seed),
                  f"a base seed other than data.robot.seed ({self.robot.seed}), data.corpus.seed "
                  f"({self.corpus.seed}) and data.task_video.seed ({self.task_video.seed})"),
        ]
