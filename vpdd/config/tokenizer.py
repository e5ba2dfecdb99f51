"""Config group ``tokenizer``: the video VQ-VAE shared by actionless and robot video (algorithm.md §2).

Architecture keys (resolution .. commitment_weight) fix the network and are stored in every checkpoint's
``config.json``; a checkpoint is only resumed or used for encoding when they match. ``batch_size`` is per
process (the paper trains 32 per GPU on 4 GPUs). ``encode_window`` is the number of frames behind one token
grid of the cache (4 = one latent frame with (4, 4, 4) downsampling); the training ``clip_length`` may be
longer (8 in the paper) because the network is fully convolutional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, in_range, positive


@dataclass
class TokenizerConfig(Validated):
    resolution: int = 64  # frames are resized/centre-cropped to resolution x resolution
    clip_length: int = 4  # frames per training clip
    encode_window: int = 4  # frames per cached token grid (window ending at each step; §6 of algorithm.md)
    n_codes: int = 256  # K_v, the video vocabulary
    embedding_dim: int = 64
    n_hiddens: int = 64
    n_res_layers: int = 2
    downsample: list[int] = field(default_factory=lambda: [4, 4, 4])  # (T, H, W) strides, powers of 2
    attn_heads: int = 2
    ema_decay: float = 0.99
    commitment_weight: float = 0.25
    lr: float = 3.0e-4
    batch_size: int = 16  # clips per process and step
    steps: int = 1500
    corpus_fraction: float = 0.5  # share of each batch drawn from the actionless corpus (when present)
    heldout_fraction: float = 0.1  # share of episodes/videos held out for PSNR/SSIM/usage
    eval_clips: int = 64  # held-out clips scored at each evaluation
    eval_every: int = 500  # steps between held-out evaluations (and at the end)
    log_every: int = 50
    checkpoint_every: int = 500
    explode_factor: float = 50.0  # stop when the loss exceeds this multiple of its running mean
    encode_batch_size: int = 64  # windows per forward pass when building the token cache
    seed: int = 0

    def checks(self) -> list[Check]:
        ds = list(self.downsample)
        return [
            *positive(
                self,
                "resolution",
                "clip_length",
                "encode_window",
                "n_codes",
                "embedding_dim",
                "n_hiddens",
                "attn_heads",
                "lr",
                "batch_size",
                "steps",
                "eval_clips",
                "eval_every",
                "log_every",
                "checkpoint_every",
                "explode_factor",
                "encode_batch_size",
            ),
            Check("n_res_layers", self.n_res_layers >= 0, "a value >= 0"),
            Check(
                "n_hiddens",
                self.n_hiddens % max(self.attn_heads, 1) == 0 and self.n_hiddens % 2 == 0,
                "an even multiple of attn_heads",
            ),
            Check("n_codes", self.n_codes <= 65535, "at most 65535 (the token cache stores uint16)"),
            Check(
                "downsample",
                len(ds) == 3 and all(d >= 1 and d & (d - 1) == 0 for d in ds),
                "three powers of two (T, H, W)",
            ),
            Check(
                "resolution",
                len(ds) == 3 and ds[1] > 0 and self.resolution % max(ds[1], 1) == 0,
                "a multiple of the spatial downsampling factor",
            ),
            Check(
                "clip_length",
                len(ds) == 3 and ds[0] > 0 and self.clip_length % max(ds[0], 1) == 0,
                "a multiple of the temporal downsampling factor",
            ),
            Check(
                "encode_window",
                len(ds) == 3 and ds[0] > 0 and self.encode_window % max(ds[0], 1) == 0,
                "a multiple of the temporal downsampling factor",
            ),
            in_range(self, "ema_decay", 0.0, 1.0),
            Check("commitment_weight", self.commitment_weight >= 0, "a value >= 0"),
            in_range(self, "corpus_fraction", 0.0, 1.0),
            in_range(self, "heldout_fraction", 0.0, 0.5),
        ]
