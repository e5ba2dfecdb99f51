"""Config group ``rlbench``: the RLBench path (PerAct data, multi-view tokens, keyframe actions; docs/rlbench.md).

The tokenizer, video network, action network sizes, language encoder and diffusion are the shared groups
(``tokenizer``, ``model.video``, ``model.action``, ``model.language``, ``diffusion``). This group holds what
differs for RLBench: the cameras (views per sequence), the fine-tuning tasks, the keyframe heuristic, the
action tokens (``translation_bins`` quantile bins per xyz axis, ``rotation_resolution``-degree Euler classes,
2 gripper classes, ``chunk`` keyframes per sample: K_a = translation_bins, N_a = 7 * chunk), the foresight
flag of the action network, its own pre-training / fine-tuning stage settings (sequences are ``len(cameras)``
times longer than Meta-World's), evaluation limits, and the synthetic PerAct-format data of
``vpdd rlbench generate``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, distinct, positive
from vpdd.config.train import FinetuneConfig, PretrainConfig

RLBENCH_CAMERAS = ("front", "left_shoulder", "right_shoulder", "wrist", "overhead")
# the synthetic task templates of vpdd.rlbench.synthetic (rendered block scenes, scripted waypoints)
SYNTHETIC_TASKS = ("pick_up_block", "slide_block_to_target", "push_button")
# The RLBench tasks vpdd knows: PerAct's 18 (the paper's fine-tuning set) and the synthetic templates. Another
# RLBench task is refused at load (a typo would otherwise only fail when the data folder is read); add
# its folder name here to use it.
PERACT_TASKS = (
    "open_drawer", "slide_block_to_color_target", "sweep_to_dustpan_of_size", "meat_off_grill", "turn_tap",
    "put_item_in_drawer", "close_jar", "reach_and_drag", "stack_blocks", "light_bulb_in", "put_money_in_safe",
    "place_wine_at_rack_location", "put_groceries_in_cupboard", "place_shape_in_shape_sorter", "push_buttons",
    "insert_onto_square_peg", "stack_cups", "place_cups",
)
RLBENCH_TASKS = PERACT_TASKS + SYNTHETIC_TASKS
_TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _bad_names(names: list[str]) -> list[str]:
    return [n for n in names if not _TASK_NAME.match(str(n))]


@dataclass
class RLBenchGenerateConfig(Validated):
    """``vpdd rlbench generate``: a small deterministic dataset in PerAct's format (no simulator)."""

    tasks: list[str] = field(default_factory=lambda: list(SYNTHETIC_TASKS))
    variations: int = 2  # per task (block / button colours); episodes cycle through them
    episodes_per_task: int = 4
    segment_steps: int = 6  # frames of arm motion between two waypoints (varies by +-2 per segment)
    pause_steps: int = 2  # frames the arm rests at a waypoint (a keyframe)
    seed: int = 0

    def checks(self) -> list[Check]:
        unknown = [t for t in self.tasks if t not in SYNTHETIC_TASKS]
        return [
            Check("tasks", len(self.tasks) > 0 and not unknown and len(set(self.tasks)) == len(self.tasks),
                  f"distinct synthetic task names from {list(SYNTHETIC_TASKS)}; unknown: {unknown}"),
            *positive(self, "variations", "episodes_per_task", "pause_steps"),
            Check("segment_steps", self.segment_steps >= 3, "a value >= 3"),
        ]


def _rlbench_pretrain() -> PretrainConfig:
    return PretrainConfig(use_actionless=False, use_robot_video=True, future_offset=10)


def _rlbench_finetune() -> FinetuneConfig:
    return FinetuneConfig(future_offset=10, demos_per_task=3)


@dataclass
class RLBenchConfig(Validated):
    cameras: list[str] = field(default_factory=lambda: ["front", "left_shoulder", "right_shoulder", "wrist"])
    tasks: list[str] = field(default_factory=lambda: list(SYNTHETIC_TASKS))  # fine-tuning tasks
    image_size: int = 128  # camera images of PerAct's data / the simulator; the model sees tokenizer.resolution
    translation_bins: int = 360  # quantile bins per xyz axis = K_a (rotation and gripper classes share it)
    rotation_resolution: float = 1.0  # degrees per Euler class (360 classes per axis)
    chunk: int = 4  # keyframes predicted per sample
    stopping_delta: float = 0.1  # keyframes: the arm stopped when every |joint velocity| <= this
    stop_buffer: int = 4  # keyframes: frames after a stop that cannot be stops
    # the action network reads the video network's predicted-future features (the paper); false: the
    # current views' token embeddings (the released code's behaviour, predicted video unused)
    foresight: bool = True
    # not in the paper: average the foresight features over pool x pool patches of each view's token grid
    # (GPT-2 attention cost is quadratic in the sequence; 1 = every video token, as the paper)
    foresight_pool: int = 1
    eval_episodes: int = 25  # per task (PerAct's protocol)
    max_eval_steps: int = 25  # keyframe actions per evaluation episode (PerAct's limit)
    eval_sampling_stride: int = 1  # reverse-diffusion stride when acting
    generate: RLBenchGenerateConfig = field(default_factory=RLBenchGenerateConfig)
    pretrain: PretrainConfig = field(default_factory=_rlbench_pretrain)
    finetune: FinetuneConfig = field(default_factory=_rlbench_finetune)

    def checks(self) -> list[Check]:
        unknown = [c for c in self.cameras if c not in RLBENCH_CAMERAS]
        n_rot = 360.0 / self.rotation_resolution if self.rotation_resolution > 0 else float("inf")
        return [
            Check("cameras", len(self.cameras) > 0 and not unknown and len(set(self.cameras)) == len(self.cameras),
                  f"distinct camera names from {list(RLBENCH_CAMERAS)}; unknown: {unknown}"),
            Check("tasks", len(self.tasks) > 0 and not _bad_names(self.tasks),
                  f"a non-empty list of RLBench task folder names (snake_case); bad: {_bad_names(self.tasks)}"),
            Check("tasks", not [t for t in self.tasks if t not in RLBENCH_TASKS],
                  f"RLBench task names from vpdd.config.rlbench.RLBENCH_TASKS; unknown: "
                  f"{[t for t in self.tasks if t not in RLBENCH_TASKS]}"),
            distinct(self, "tasks"),
            *positive(self, "image_size", "chunk", "stopping_delta", "foresight_pool", "eval_episodes",
                      "max_eval_steps", "eval_sampling_stride"),
            Check("translation_bins", self.translation_bins >= 2, "a value >= 2"),
            Check("rotation_resolution", self.rotation_resolution > 0 and abs(n_rot - round(n_rot)) < 1e-9
                  and round(n_rot) <= self.translation_bins,
                  f"a divisor of 360 degrees giving at most translation_bins ({self.translation_bins}) classes"),
            Check("stop_buffer", self.stop_buffer >= 0, "a value >= 0"),
            Check("pretrain.use_actionless", not self.pretrain.use_actionless,
                  "false: RLBench pre-training predicts all views in one sequence; single-view corpus clips "
                  "do not fill it"),
            Check("pretrain.use_robot_video", self.pretrain.use_robot_video, "true (the only RLBench video source)"),
        ]

    @property
    def action_dim(self) -> int:
        return 7  # x, y, z, rx, ry, rz, gripper open
