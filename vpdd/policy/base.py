"""``CheckpointPolicy``: what every VPDD policy shares, whatever its observations and actions.

:class:`~vpdd.policy.VPDDPolicy` (Meta-World, one camera, continuous actions) and
:class:`~vpdd.rlbench.policy.RLBenchPolicy` (several cameras, keyframe poses) differ in how they turn
observations into a token history and action tokens into actions. This base holds the rest: the loaded
checkpoint's parts, the validated sampling options, loading and saving the checkpoint directory, the lazily
built text encoder, one joint reverse diffusion, and the training loss of tokenised batches. The episode's
frame window, action queue and generator come from :class:`~vpdd.policy.episode.EpisodePolicy`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.models.checkpoint import LINEAGE_FILE, LoadedCheckpoint, load_vpdd_checkpoint, save_vpdd_checkpoint
from vpdd.models.model import diffusion_loss, sample_tokens
from vpdd.policy.episode import MAX_INSTRUCTION_CHARS, EpisodePolicy, PolicyError, check_instructions

__all__ = ["MAX_INSTRUCTION_CHARS", "CheckpointPolicy", "PolicyError", "check_instructions"]


class CheckpointPolicy(EpisodePolicy):
    """A policy over a loaded ``vpdd-policy``/``vpdd-pretrain`` checkpoint; subclasses add observations/actions.

    ``chunk``: actions per predicted chunk; ``execute_steps`` of them are executed before predicting again."""

    def __init__(self, loaded: LoadedCheckpoint, *, chunk: int, execute_steps: int = 1,
                 sampling_stride: int | None = None, truncation_r: float | None = None, seed: int = 0,
                 device: str | torch.device = "cpu"):
        tok = loaded.config["tokenizer"]["config"]
        super().__init__(chunk=chunk, execute_steps=execute_steps, window=int(tok["encode_window"]),
                         resolution=int(tok["resolution"]), seed=seed, device=device)
        self.loaded, self.path, self.config = loaded, loaded.path, copy.deepcopy(loaded.config)
        self.model, self.tokenizer, self.scheduler, self.table = (loaded.model, loaded.tokenizer, loaded.scheduler,
                                                                  loaded.table)
        self.layout = loaded.spec.layout
        self.grid = tuple(int(g) for g in tok["latent_shape"])
        if truncation_r is not None:
            from vpdd_kernels.sampling import check_truncation_r

            try:
                check_truncation_r(truncation_r)
            except ValueError as err:
                raise PolicyError(str(err)) from None
        steps = self.scheduler.num_timesteps
        if sampling_stride is not None and not (isinstance(sampling_stride, int) and 1 <= sampling_stride <= steps):
            raise PolicyError(f"sampling_stride={sampling_stride!r}: expected an integer in 1..{steps}")
        self.sampling_stride, self.truncation_r = sampling_stride, truncation_r
        self.table.set_encoder_factory(self._text_encoder)
        self.eval()

    # ------------------------------------------------------------------------------ loading/saving
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", kernel_impl: str = "auto",
                        **kwargs: Any):
        """Load a checkpoint directory. ``kernel_impl``: the ``kernel.impl`` setting (auto|triton|torch;
        ``VPDD_KERNEL_IMPL`` wins). Other keyword arguments go to the constructor."""
        return cls(load_vpdd_checkpoint(path, device=device, kernel_impl=kernel_impl), device=device, **kwargs)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the policy as a checkpoint directory (weights, config, lineage; no training state)."""
        config = copy.deepcopy(self.config)
        config["language"]["texts"] = list(self.table.texts)
        src = self.loaded.checkpoint
        meta = {"step": src.step, "metrics": src.meta.get("metrics", {}), "saved_from": str(src.path),
                "source_checkpoint_hash": src.meta.get("checkpoint_hash")}
        lineage_file = src.path / LINEAGE_FILE
        lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else None
        return save_vpdd_checkpoint(path, config=config, model_state=self.model.state_dict(),
                                    tokenizer_state=self.tokenizer.inference_state_dict(),
                                    text_vectors=self.table.vectors, meta=meta, lineage=lineage)

    def _text_encoder(self):
        """The checkpoint's text encoder, for instructions not in its table (refused if the weights differ)."""
        from vpdd.config.model import LanguageConfig
        from vpdd.models.language import build_text_encoder, encoder_identity

        lang = self.config["language"]
        cfg = LanguageConfig(**lang["config"])
        now = encoder_identity(cfg)
        if now.get("weights_sha256") != lang.get("weights_sha256") or now["dim"] != lang["dim"]:
            raise PolicyError(
                f"cannot embed a new instruction: the text encoder here ({now}) is not the one the policy was "
                f"trained with ({ {k: lang.get(k) for k in now} })"
            )
        return build_text_encoder(cfg)

    # ----------------------------------------------------------------------------- inference, loss
    @torch.no_grad()
    def _encode_windows(self, windows: np.ndarray) -> torch.Tensor:
        """uint8 frame windows (..., W, H, W, 3) -> VQ-VAE token grids (..., t, h, w)."""
        from vpdd.tokenizer.model import to_model_input

        return self.tokenizer.encode(to_model_input(torch.from_numpy(np.ascontiguousarray(windows)).to(self.device)))

    @torch.no_grad()
    def _sample(self, history: torch.Tensor, texts: list[str],
                video: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One joint reverse diffusion from all-[MASK] given (B, N_v) history tokens: (video, action) tokens.
        ``video``: what the network reads as the video part instead of the chain's own (``sample_tokens``)."""
        lang = self.table.lookup(texts).to(self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            x = sample_tokens(self.model, self.scheduler, history, lang, self.generator,
                              stride=self.sampling_stride, truncation_r=self.truncation_r, video=video)
        finally:
            self.model.train(was_training)
        return self.layout.split(x)

    def _loss(self, batch: dict[str, Any], history: torch.Tensor, target: torch.Tensor,
              bins: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The diffusion loss of (B, N_v) history/target tokens and (B, N_a) action bins, with ``batch['lang']``
        embeddings or ``batch['instruction']`` strings and an optional ``batch['generator']``."""
        n = history.shape[0]
        if "lang" in batch:
            lang = torch.as_tensor(batch["lang"]).to(self.device, torch.float32)
        else:
            lang = self.table.lookup(check_instructions(batch["instruction"], n)).to(self.device)
        x0 = torch.cat([target, self.layout.actions_to_tokens(bins)], dim=1)
        return diffusion_loss(self.model, self.scheduler, x0, history, lang, batch.get("generator"),
                              update_history=self.training)

    def _bins(self, batch: dict[str, Any], n: int) -> torch.Tensor | None:
        """``batch['action_bins']`` as (n, N_a) tokens' bins, or None when the batch has none."""
        if "action_bins" not in batch:
            return None
        return torch.as_tensor(batch["action_bins"]).to(self.device, torch.long).reshape(n, -1)
