"""Config group ``tokenizer``: the video VQ-VAE shared by actionless and robot video (algorithm.md §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, in_range, positive


@dataclass
class TokenizerConfig(Validated):
    resolution: int = 64  # frames are resized/centre-cropped to resolution x resolution
    clip_length: int = 4  # frames per training clip (the diffusion stage encodes 4-frame windows)
    n_codes: int = 256  # K_v, the video vocabulary
    embedding_dim: int = 64
    n_hiddens: int = 64
    n_res_layers: int = 2
    downsample: list[int] = field(default_factory=lambda: [4, 4, 4])  # (T, H, W) strides, powers of 2
    attn_heads: int = 2
    ema_decay: float = 0.99
    commitment_weight: float = 0.25
    lr: float = 3.0e-4
    batch_size: int = 16
    steps: int = 1500
    heldout_fraction: float = 0.1
    log_every: int = 50
    checkpoint_every: int = 500
    seed: int = 0

    def checks(self) -> list[Check]:
        ds = list(self.downsample)
        return [
            *positive(self, "resolution", "clip_length", "n_codes", "embedding_dim", "n_hiddens",
                      "attn_heads", "lr", "batch_size", "steps", "log_every", "checkpoint_every"),
            Check("n_res_layers", self.n_res_layers >= 0, "a value >= 0"),
            Check("downsample", len(ds) == 3 and all(d >= 1 and d & (d - 1) == 0 for d in ds),
                  "three powers of two (T, H, W)"),
            Check("resolution", len(ds) == 3 and ds[1] > 0 and self.resolution % max(ds[1], 1) == 0,
                  "a multiple of the spatial downsampling factor"),
            Check("clip_length", len(ds) == 3 and ds[0] > 0 and self.clip_length % max(ds[0], 1) == 0,
                  "a multiple of the temporal downsampling factor"),
            in_range(self, "ema_decay", 0.0, 1.0),
            Check("commitment_weight", self.commitment_weight >= 0, "a value >= 0"),
            in_range(self, "heldout_fraction", 0.0, 0.5),
        ]
