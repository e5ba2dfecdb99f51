"""Config group ``diffusion``: the unified mask-and-replace discrete diffusion (algorithm.md §3).

The fields are the constructor arguments of :class:`vpdd.diffusion.MaskReplaceScheduler`
(``MaskReplaceScheduler.from_config(cfg.diffusion, TokenLayout.from_config(cfg))``); the token layout
sizes come from the tokenizer and model groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpdd.config.base import Check, Validated, in_range, one_of, positive


@dataclass
class DiffusionConfig(Validated):
    num_timesteps: int = 100  # T
    # Linear cumulative schedules (VQ-Diffusion's alpha_schedule):
    # keep rate att_1 -> att_T, mask rate ctt_1 -> ctt_T; 1 - att - ctt is the replace mass.
    att_1: float = 0.99999
    att_T: float = 0.000009
    ctt_1: float = 0.000009
    ctt_T: float = 0.99999
    aux_loss_weight: float = 5.0e-4  # lambda
    adaptive_aux_loss: bool = True  # w(t) = (1 - t/T) + 1
    time_sampling: str = "importance"  # importance | uniform
    # top-r nucleus truncation at sampling time (0.86-0.88 in the code), in (0, 1]; 1.0 disables it ("off")
    truncation_r: float = 0.88
    sampling_stride: int = 1  # reverse steps skip this many timesteps (1 = every step, as in the paper)
    # fast | reference: which PyTorch implementation the scheduler uses off-GPU (vpdd.diffusion; the
    # reference is the released code's maths on (B, C, N) log tensors, 30-200x slower: for checks only)
    impl: str = "fast"

    def checks(self) -> list[Check]:
        return [
            *positive(self, "num_timesteps", "sampling_stride"),
            in_range(self, "att_1", 0.0, 1.0),
            in_range(self, "att_T", 0.0, 1.0),
            in_range(self, "ctt_1", 0.0, 1.0),
            in_range(self, "ctt_T", 0.0, 1.0),
            Check("att_T", self.att_T < self.att_1, "att_T < att_1 (the keep rate decreases)"),
            Check("ctt_T", self.ctt_T > self.ctt_1, "ctt_T > ctt_1 (the mask rate increases)"),
            Check(
                "ctt_T",
                self.att_1 + self.ctt_1 <= 1.0 and self.att_T + self.ctt_T <= 1.0,
                "att + ctt <= 1 at both ends",
            ),
            Check(
                "ctt_1",
                self.att_1 + self.ctt_1 < 1.0 and self.att_T + self.ctt_T < 1.0,
                "att + ctt < 1 at both ends: a positive replace mass (the posterior divides by it)",
            ),
            Check("aux_loss_weight", self.aux_loss_weight >= 0, "a value >= 0"),
            one_of(self, "time_sampling", ("importance", "uniform")),
            Check("truncation_r", 0.0 < self.truncation_r <= 1.0,
                  "a value in (0, 1] (1.0 = off): r <= 0 keeps no class, so sampling could never draw"),
            Check("sampling_stride", self.sampling_stride <= self.num_timesteps, "at most num_timesteps"),
            one_of(self, "impl", ("fast", "reference")),
        ]
