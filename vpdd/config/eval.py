"""Config group ``eval``: closed-loop evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, distinct, positive
from vpdd.envs.tasks import unknown_tasks


@dataclass
class EvalConfig(Validated):
    tasks: list[str] = field(default_factory=list)  # empty: the fine-tuning tasks (data.robot.tasks)
    episodes_per_task: int = 5
    seeds: list[int] = field(default_factory=lambda: [0])
    max_steps: int = 200  # the paper's evaluation episode limit
    n_envs: int = 4  # environments stepped as one batch
    execute_steps: int = 1  # actions executed from each predicted chunk (the paper executes 1)
    sampling_stride: int = 1  # reverse-diffusion stride at evaluation time
    # top-r truncation of each reverse step's x0 prediction when acting; None: the checkpoint's
    # diffusion.truncation_r (0.88). A tiny r keeps only the most probable class: greedy decoding.
    truncation_r: float | None = None
    videos_per_task: int = 1

    def checks(self) -> list[Check]:
        return [
            Check("tasks", not unknown_tasks(self.tasks),
                  f"Meta-World v3 task names; unknown: {unknown_tasks(self.tasks)}"),
            distinct(self, "tasks"),
            *positive(self, "episodes_per_task", "max_steps", "n_envs", "execute_steps", "sampling_stride"),
            Check("seeds", len(self.seeds) > 0, "at least one seed"),
            Check("videos_per_task", self.videos_per_task >= 0, "a value >= 0"),
            Check("truncation_r", self.truncation_r is None
                  or (isinstance(self.truncation_r, (int, float)) and 0.0 < self.truncation_r <= 1.0),
                  "null (the checkpoint's diffusion.truncation_r) or a number in (0, 1]"),
        ]
