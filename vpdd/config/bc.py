"""Config group ``bc``: the plain behaviour-cloning baseline (docs/evaluation.md, "The behaviour-cloning baseline").

A small CNN over the stacked window of the last ``tokenizer.encode_window`` frames, a learned embedding of
the task, and an MLP to per-token bin logits of a chunk of ``model.actions.chunk`` actions (cross-entropy on
the bins of the fine-tuning :class:`~vpdd.models.actions.ActionDiscretizer`). It trains on the
fine-tuning demonstrations (``finetune.demos_per_task`` of each task in ``data.robot.tasks``).

``channels``: output channels of the stride-2 3x3 convolutions (one layer each); ``hidden``: width of the
MLP; ``shift``: random-shift augmentation in pixels (pad by ``shift`` with the edge pixels, crop back at a
random offset, the same for every frame of a window; 0 turns it off); ``heldout_steps``: demonstration
steps (windows) kept out of training and scored at each evaluation (action-bin accuracy, decoded L1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, positive


@dataclass
class BCConfig(Validated):
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    hidden: int = 128
    shift: int = 4
    heldout_steps: int = 32
    seed: int = 0
    eval_every: int = 250
    log_every: int = 25
    checkpoint_every: int = 500

    def checks(self) -> list[Check]:
        return [
            *positive(self, "steps", "batch_size", "lr", "hidden", "eval_every", "log_every", "checkpoint_every"),
            Check("weight_decay", self.weight_decay >= 0, "a value >= 0"),
            Check("channels", len(self.channels) > 0 and all(int(c) > 0 for c in self.channels),
                  "a non-empty list of channel counts > 0 (one stride-2 convolution each)"),
            Check("shift", self.shift >= 0, "a value >= 0 (pixels; 0 turns the augmentation off)"),
            Check("heldout_steps", self.heldout_steps >= 0, "a value >= 0"),
        ]
