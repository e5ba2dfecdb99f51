"""``BCNet``: a small CNN behaviour-cloning network, and the ``vpdd-bc`` checkpoint directory.

Design (the plain baseline of image-based BC, kept small on purpose):

* **Input**: the window of the last W frames (uint8, (B, W, H, W, 3)) stacked on the channel axis, scaled
  to [-0.5, 0.5]: the same frames VPDD's tokenizer encodes, without the tokenizer.
* **Encoder**: one 3x3 stride-2 convolution + ReLU per entry of ``channels``, then the flattened feature map
  (spatial layout kept: where things are matters for reaching) through a linear layer to ``hidden``.
* **Task**: a learned embedding (one row per fine-tuning task, in ``data.robot.tasks`` order) added to the
  image feature. The instruction names the task; a table of a few tasks needs no text encoder, and an
  instruction the policy was not trained on is refused instead of guessed.
* **Head**: a 2-layer MLP to ``chunk x D x n_bins`` logits: one class distribution per action token
  (step-major, as :meth:`~vpdd.models.actions.ActionDiscretizer.episode_chunks`), trained with
  cross-entropy and decoded with the argmax bin (:meth:`~vpdd.models.actions.ActionDiscretizer.decode_chunk`).

A checkpoint directory (:mod:`vpdd.runtime.checkpoint`) holds ``config.json`` (``kind: "vpdd-bc"``, the
network, the discretizer, tasks and instructions, window, resolution and the render settings of the
training frames under ``env``, the training config and demonstrations, the run's fingerprint), the
weights, ``lineage.json`` and, while training, the optimizer state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vpdd.runtime.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

KIND_BC = "vpdd-bc"
LINEAGE_FILE = "lineage.json"


@dataclass
class BCSpec:
    window: int
    resolution: int
    channels: list[int]
    hidden: int
    n_tasks: int
    chunk: int
    action_dim: int
    n_bins: int

    @property
    def n_tokens(self) -> int:
        return self.chunk * self.action_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BCSpec:
        return cls(**{k: (list(v) if k == "channels" else int(v)) for k, v in data.items()})


class BCNet(nn.Module):
    def __init__(self, spec: BCSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        c_in, size = 3 * spec.window, spec.resolution
        for c in spec.channels:
            layers += [nn.Conv2d(c_in, int(c), 3, stride=2, padding=1), nn.ReLU()]
            c_in, size = int(c), (size + 1) // 2
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * size * size, spec.hidden), nn.ReLU())
        self.task = nn.Embedding(spec.n_tasks, spec.hidden)
        self.head = nn.Sequential(nn.Linear(spec.hidden, spec.hidden), nn.ReLU(),
                                  nn.Linear(spec.hidden, spec.n_tokens * spec.n_bins))

    def forward(self, windows: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """float windows (B, 3W, H, W) in [-0.5, 0.5] and (B,) task rows -> logits (B, chunk * D, n_bins)."""
        h = self.encoder(windows) + self.task(task_ids)
        return self.head(h).reshape(len(windows), self.spec.n_tokens, self.spec.n_bins)


def to_input(windows: torch.Tensor) -> torch.Tensor:
    """uint8 windows (B, W, H, W, 3) -> float (B, 3W, H, W) in [-0.5, 0.5]."""
    b, w, h, wd, c = windows.shape
    x = windows.permute(0, 1, 4, 2, 3).reshape(b, w * c, h, wd)
    return x.float() / 255.0 - 0.5


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ's random shift: pad (B, C, H, W) by ``shift`` edge pixels, crop back at a random offset per sample."""
    if shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
    offs = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs)])


def save_bc_checkpoint(path: str | Path, *, config: dict[str, Any], weights: dict[str, torch.Tensor],
                       meta: dict[str, Any], training_state: dict[str, Any] | None = None,
                       lineage: dict[str, Any] | None = None) -> Path:
    extra = {LINEAGE_FILE: json.dumps(lineage, indent=2, sort_keys=True).encode()} if lineage else None
    return save_checkpoint(path, config={**config, "kind": KIND_BC}, weights=weights, training_state=training_state,
                           meta=meta, extra_files=extra)


def load_bc_checkpoint(path: str | Path, *, training_state: bool = False,
                       device: str | torch.device = "cpu") -> tuple[Checkpoint, BCNet]:
    """The checkpoint and its network (weights loaded, on ``device``); a clear error for another kind."""
    ckpt = load_checkpoint(path, training_state=training_state, map_location="cpu")
    kind = ckpt.config.get("kind")
    if kind != KIND_BC:
        raise CheckpointError(f"{path}: a {kind!r} checkpoint, not a behaviour-cloning policy ({KIND_BC!r}); "
                              "train one with `vpdd train bc`")
    net = BCNet(BCSpec.from_dict(ckpt.config["net"]))
    net.load_state_dict(ckpt.weights, strict=True)
    return ckpt, net.to(device)
