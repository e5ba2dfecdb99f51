"""The token layout of VPDD's unified discrete diffusion (algorithm.md §3.1).

One vocabulary serves both modalities::

    [0, K_v)            video codes (the VQ-VAE codebook)
    [K_v, K_v + K_a)    action bins (action value v is token K_v + v)
    K_v + K_a           [MASK], always the last class; C = K_v + K_a + 1

A sequence holds N_v video tokens followed by N_a action tokens. Video positions only ever take values in
``[0, K_v) ∪ {MASK}`` and action positions in ``[K_v, K_v + K_a) ∪ {MASK}``.

The fast path works per modality in a *local* vocabulary: codes ``[0, K_M)`` and MASK written as ``K_M``.
:meth:`TokenLayout.to_local` and :meth:`TokenLayout.from_local` convert between the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vpdd.config.schema import VPDDConfig

VIDEO = 0
ACTION = 1


@dataclass(frozen=True)
class TokenLayout:
    """Sizes of the unified vocabulary and of one token sequence."""

    n_video_codes: int  # K_v
    n_action_bins: int  # K_a
    n_video_tokens: int  # N_v
    n_action_tokens: int  # N_a

    def __post_init__(self) -> None:
        for name in ("n_video_codes", "n_action_bins", "n_video_tokens", "n_action_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"TokenLayout.{name}={getattr(self, name)!r}: expected a positive integer")

    # ------------------------------------------------------------------ sizes
    @property
    def num_classes(self) -> int:
        """C = K_v + K_a + 1."""
        return self.n_video_codes + self.n_action_bins + 1

    @property
    def mask_id(self) -> int:
        """The global index of [MASK] (the last class)."""
        return self.n_video_codes + self.n_action_bins

    @property
    def seq_len(self) -> int:
        """N = N_v + N_a."""
        return self.n_video_tokens + self.n_action_tokens

    @property
    def action_offset(self) -> int:
        """Global index of action bin 0 (= K_v)."""
        return self.n_video_codes

    def n_codes(self, modality: int) -> int:
        """K_M, the number of non-mask classes of a modality."""
        return self.n_video_codes if modality == VIDEO else self.n_action_bins

    def code_offset(self, modality: int) -> int:
        return 0 if modality == VIDEO else self.n_video_codes

    def positions(self, modality: int) -> slice:
        """The sequence positions of a modality."""
        if modality == VIDEO:
            return slice(0, self.n_video_tokens)
        return slice(self.n_video_tokens, self.seq_len)

    def modality(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N,) int64: 0 at video positions, 1 at action positions."""
        m = torch.zeros(self.seq_len, dtype=torch.long, device=device)
        m[self.n_video_tokens :] = ACTION
        return m

    # ------------------------------------------------------------ conversions
    def to_local(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        """Global indices of one modality's positions -> local indices (codes [0, K_M), MASK = K_M)."""
        k = self.n_codes(modality)
        return torch.where(x == self.mask_id, k, x - self.code_offset(modality))

    def from_local(self, x_local: torch.Tensor, modality: int) -> torch.Tensor:
        k = self.n_codes(modality)
        return torch.where(x_local == k, self.mask_id, x_local + self.code_offset(modality))

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) -> (video (B, N_v), action (B, N_a)); views, no copies."""
        return x[:, : self.n_video_tokens], x[:, self.n_video_tokens :]

    def all_masked(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The sampling chain's start state: every token [MASK]."""
        return torch.full((batch_size, self.seq_len), self.mask_id, dtype=torch.long, device=device)

    def actions_to_tokens(self, bins: torch.Tensor) -> torch.Tensor:
        """Action bin values in [0, K_a) -> global token indices."""
        return bins + self.action_offset

    def tokens_to_actions(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens - self.action_offset

    def is_valid(self, x: torch.Tensor) -> bool:
        """True when every position holds a class of its own modality or [MASK] (a host sync: tests only)."""
        v, a = self.split(x)
        ok_v = ((v >= 0) & (v < self.n_video_codes)) | (v == self.mask_id)
        ok_a = ((a >= self.n_video_codes) & (a < self.mask_id)) | (a == self.mask_id)
        return bool(ok_v.all() and ok_a.all())

    # ---------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenLayout:
        return cls(**{k: int(data[k]) for k in ("n_video_codes", "n_action_bins", "n_video_tokens", "n_action_tokens")})

    @classmethod
    def from_config(cls, cfg: VPDDConfig) -> TokenLayout:
        """Sizes from the root config: K_v = tokenizer.n_codes, K_a = model.actions.n_bins,
        N_a = chunk * dim, N_v = the token grid of one cached window (encode_window/dt * H/dh * W/dw)."""
        tok = cfg.tokenizer
        dt, dh, dw = (int(d) for d in tok.downsample)
        window = int(getattr(tok, "encode_window", tok.clip_length))
        n_video = (window // dt) * (tok.resolution // dh) * (tok.resolution // dw)
        act = cfg.model.actions
        return cls(
            n_video_codes=tok.n_codes,
            n_action_bins=act.n_bins,
            n_video_tokens=n_video,
            n_action_tokens=act.chunk * act.dim,
        )
