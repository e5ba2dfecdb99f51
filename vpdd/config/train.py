"""Config groups ``pretrain`` and ``finetune``: one training loop, two stages (algorithm.md §7)."""

from __future__ import annotations

from dataclasses import dataclass

from vpdd.config.base import Check, Validated, in_range, positive


@dataclass
class StageConfig(Validated):
    steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2.0e-4
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 100
    log_every: int = 25
    checkpoint_every: int = 100
    future_offset: int = 20  # the video target is the clip this many steps ahead of the history clip
    seed: int = 0

    def checks(self) -> list[Check]:
        return [
            *positive(self, "steps", "batch_size", "grad_accum", "lr", "ema_every", "log_every",
                      "checkpoint_every", "future_offset"),
            in_range(self, "ema_decay", 0.0, 1.0),
            Check("ema_start", self.ema_start >= 0, "a value >= 0"),
        ]


@dataclass
class PretrainConfig(StageConfig):
    use_actionless: bool = True  # the actionless video corpus
    use_robot_video: bool = True  # robot videos, their actions ignored


@dataclass
class FinetuneConfig(StageConfig):
    demos_per_task: int = 10  # N robot demonstrations per fine-tuning task
    init_from_pretrained: bool = True  # False gives the no-pre-training ablation

    def checks(self) -> list[Check]:
        return [*super().checks(), *positive(self, "demos_per_task")]
