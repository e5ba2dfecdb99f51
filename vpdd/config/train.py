"""Config groups ``pretrain`` and ``finetune``: one training loop, two stages (algorithm.md §6.4, §7).

``train`` names the parts of the network that learn (``video``: the Perceiver p_θ1; ``action``: the GPT-2
p_θ2); everything else is frozen. Pre-training trains the video network on actionless sequences (its
action logits are the scheduler's all-zero logits); fine-tuning freezes it and trains the action network,
as the released code does. ``batch_size`` is sequences per micro-batch and per process; an optimizer step
sums ``grad_accum`` micro-batches. Sampling-based evaluation at the end of a stage uses ``eval_samples``
sequences and a reverse-diffusion stride of ``eval_stride``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, in_range, positive

PARTS = ("video", "action")
FORESIGHT = ("noised_truth", "masked")  # finetune.foresight


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
    train: list[str] = field(default_factory=lambda: ["video"])  # parts that learn; the rest is frozen
    eval_samples: int = 8  # sequences sampled at the end of the stage (video / action accuracy, image grid)
    eval_stride: int = 10  # reverse-diffusion stride of that evaluation
    seed: int = 0
    # The weight of the x0 cross-entropy term for this stage (None: diffusion.aux_loss_weight). The released
    # code's 5e-4 gives the action network almost no direct signal; short CPU runs need a larger one.
    aux_loss_weight: float | None = None

    def checks(self) -> list[Check]:
        return [
            Check("aux_loss_weight", self.aux_loss_weight is None or self.aux_loss_weight >= 0,
                  "null (use diffusion.aux_loss_weight) or a value >= 0"),
            *positive(self, "steps", "batch_size", "grad_accum", "lr", "ema_every", "log_every",
                      "checkpoint_every", "future_offset", "eval_stride"),
            in_range(self, "ema_decay", 0.0, 1.0),
            Check("ema_start", self.ema_start >= 0, "a value >= 0"),
            Check("eval_samples", self.eval_samples >= 0, "a value >= 0"),
            Check("train", len(self.train) > 0 and set(self.train) <= set(PARTS),
                  f"a non-empty subset of {list(PARTS)}"),
        ]


@dataclass
class PretrainConfig(StageConfig):
    use_actionless: bool = True  # the actionless video corpus
    use_robot_video: bool = True  # robot videos, their actions ignored
    corpus_fraction: float = 0.5  # share of each micro-batch drawn from the corpus when both sources are used
    corpus_pair_offset: int = 2  # corpus history clip j - offset, target clip j (the released code's 2)

    def checks(self) -> list[Check]:
        return [
            *super().checks(),
            Check("use_robot_video", self.use_actionless or self.use_robot_video,
                  "use_actionless or use_robot_video to be true (pre-training needs video)"),
            Check("train", list(self.train) == ["video"],
                  "['video'] (pre-training has no actions to train an action network on)"),
            in_range(self, "corpus_fraction", 0.0, 1.0),
            *positive(self, "corpus_pair_offset"),
        ]


@dataclass
class FinetuneConfig(StageConfig):
    train: list[str] = field(default_factory=lambda: ["action"])
    demos_per_task: int = 10  # N robot demonstrations per fine-tuning task
    init_from_pretrained: bool = True  # False gives the no-pre-training ablation
    # What the network reads as the future video while the action network learns, and so when it acts:
    # "noised_truth" (the released code: the true future noised to the step's t, while closed loop hands it
    # its own samples) or "masked" (all [MASK] in training and sampling: the video network's features of the
    # current observation only, the same at training and test time). docs/training.md.
    foresight: str = "noised_truth"
    # Random shift augmentation of the token grids, at most this many tokens in y and x (0: none; the history
    # and target of a sequence move together): vpdd.train.datasets.
    token_shift: int = 0

    def checks(self) -> list[Check]:
        return [
            *super().checks(),
            *positive(self, "demos_per_task"),
            Check("token_shift", self.token_shift >= 0, "a value >= 0 (tokens)"),
            Check("foresight", self.foresight in FORESIGHT, f"one of {list(FORESIGHT)}"),
            Check("train", "action" in self.train, "a list containing 'action' (fine-tuning trains the policy)"),
        ]
