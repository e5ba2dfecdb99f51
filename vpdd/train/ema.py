"""Exponential moving average of the trainable weights (algorithm.md §7).

The released trainer (jannerm/diffuser's) keeps an EMA copy of the model: every ``every`` optimizer steps
it either copies the weights (while ``step < start``) or blends them, ``ema <- decay * ema + (1 - decay)
* w``. The EMA weights are what a checkpoint's ``model.safetensors`` holds and what inference and the
next stage use (Meta-World fine-tuning starts from the pre-trained EMA). Only parameters that train are
tracked; frozen ones are equal to the model's by construction.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, every: int = 1, start: int = 0):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay {decay}: expected a value in [0, 1]")
        self.decay, self.every, self.start = float(decay), max(int(every), 1), int(start)
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based count of steps taken)."""
        if step % self.every:
            return
        params = dict(model.named_parameters())
        if step < self.start:
            for name, shadow in self.shadow.items():
                shadow.copy_(params[name].detach())
            return
        for name, shadow in self.shadow.items():
            shadow.lerp_(params[name].detach().to(shadow.dtype), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"EMA state lacks {missing[:5]}")
        with torch.no_grad():
            for k, v in self.shadow.items():
                v.copy_(state[k])

    def averaged_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the tracked parameters replaced by their averages."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, v in self.shadow.items():
            state[k] = v.detach().clone()
        return state
