"""The RLBench action network: a causal GPT-2 over [t, prompt, video features, keyframe action tokens]
(algorithm.md §4.3, ``MultiviewFinetuneModel``), with the paper's foresight conditioning.

* **Action tokens.** ``nn.Embedding(K_a + 1, d)`` on the local token (bins [0, K_a), [MASK] = K_a), as the
  released RLBench model (the Meta-World network embeds an ordinal scalar instead).
* **Video features** (``foresight``):

  - ``True`` (default, the paper): the video network's decoder features ``h`` at the N_v noisy-future
    positions of all views, detached, through ``Linear(d_v, d)`` (identity when the widths agree): the
    actions are guided by the predicted future video. With ``history_input`` (the shared
    ``model.action`` switch of the Meta-World network) the current views' codebook embeddings are added
    position by position (``Linear(D_code, d)``), "h optionally combined with per-view features" of
    algorithm.md §4.3. ``pool`` > 1 (not in the paper; the tiny preset)
    averages them over ``pool x pool`` patches of each view's token grid first: GPT-2's attention cost grows
    with the square of the sequence, and 4 views of 16x16 tokens made fine-tuning 14x slower on a CPU.
  - ``False`` (the released code's behaviour): the predicted video is *not* used. The features come from the
    current (history) tokens of the views: their frozen-codebook embeddings, concatenated over the views at
    each grid position (the released 4 x 256 = 1024-d feature) and mapped by ``Linear -> Mish -> Linear ->
    Mish -> Linear``: one token per grid position. The released code concatenates [wrist, left, right,
    wrist] (front missing, wrist twice); here every view of the layout enters once, in camera order.

* **Sequence.** ``[t, prompt, video features, actions]`` with VPDD's multiplicative conditioning
  (``S <- prompt * S; S <- t * S + pos; LN``), a causal ``GPT2Model`` (:func:`gpt2_backbone`).
* **Heads.** The last N_a outputs as (B, chunk, 7, d): ``trans`` (``Linear -> Mish -> Linear``) on x, y, z,
  ``rot`` (same) on the three Euler classes, a single ``Linear`` for the gripper; each gives K_a logits.

Not included (they need inputs the token-only diffusion interface does not carry): the released model's
324 RGB patch tokens of the current images and its proprioception token (gripper open + finger joints).
"""

from __future__ import annotations

import torch
from torch import nn

from vpdd.models.action_net import GPT2ActionTrunk, head, mlp3
from vpdd.models.model import register_action_net

POSE_DIMS = 7  # x, y, z, rx, ry, rz, gripper open


class MultiViewActionNet(GPT2ActionTrunk):
    needs_history = True  # VPDDModel passes the history's codebook embeddings

    def __init__(
        self,
        n_bins: int,
        chunk: int,
        action_dim: int,
        n_video_tokens: int,
        video_dim: int,
        lang_dim: int,
        *,
        code_dim: int,
        views: int,
        foresight: bool = True,
        grid: list[int] | tuple[int, ...] | None = None,
        pool: int = 1,
        history_input: bool = False,
        n_layer: int = 6,
        n_head: int = 2,
        n_embd: int = 256,
        n_inner: int = 1024,
        dropout: float = 0.1,
        action_embedding: str = "table",
    ):
        super().__init__()
        if action_embedding != "table":
            raise ValueError(f"MultiViewActionNet(action_embedding={action_embedding!r}): its action tokens are an "
                             "embedding table ('table'); the ordinal embeddings are ActionNet's (Meta-World)")
        if action_dim != POSE_DIMS:
            raise ValueError(f"MultiViewActionNet: action_dim={action_dim}, expected {POSE_DIMS} (xyz, Euler, open)")
        if views < 1 or n_video_tokens % views:
            raise ValueError(f"MultiViewActionNet: {n_video_tokens} video tokens do not split into {views} views")
        self.n_bins, self.chunk, self.action_dim = n_bins, chunk, action_dim
        self.n_action_tokens = chunk * action_dim
        self.n_video_tokens, self.views, self.foresight = n_video_tokens, views, bool(foresight)
        self.grid_tokens = n_video_tokens // views
        self.grid = tuple(int(g) for g in grid) if grid is not None else (1, self.grid_tokens, 1)
        self.pool = int(pool)
        t_, h_, w_ = self.grid
        if t_ * h_ * w_ != self.grid_tokens:
            raise ValueError(f"MultiViewActionNet: grid {self.grid} does not hold {self.grid_tokens} tokens per view")
        if self.pool < 1 or h_ % self.pool or w_ % self.pool:
            raise ValueError(f"MultiViewActionNet: pool={pool} must divide the view grid {self.grid[1:]}")
        d = n_embd
        self.embed_action = nn.Embedding(n_bins + 1, d)
        if self.foresight:
            self.embed_video = nn.Identity() if video_dim == d else nn.Linear(video_dim, d)
            self.embed_history = nn.Linear(code_dim, d) if history_input else None
            n_feat = views * t_ * (h_ // self.pool) * (w_ // self.pool)
        else:
            self.embed_video = mlp3(views * code_dim, d)
            self.embed_history = None  # the features are the current views already
            n_feat = self.grid_tokens
        seq_len = 2 + n_feat + self.n_action_tokens
        self._build_trunk(lang_dim, d, seq_len, n_layer, n_head, n_inner, dropout)
        self.head_trans, self.head_rot = head(d, n_bins), head(d, n_bins)
        self.head_grip = nn.Linear(d, n_bins)

    def video_features(self, h: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The video part of the sequence: foresight ``h`` (B, N_v, d_v) or the current views' codebook
        embeddings ``history`` (B, N_v, D_code), depending on ``foresight``."""
        b = h.shape[0]
        if self.foresight:
            feat = self.embed_video(h.detach())
            if self.embed_history is not None:
                if history is None:
                    raise ValueError("MultiViewActionNet(history_input=True) adds the current views: pass history")
                feat = feat + self.embed_history(history.detach().to(feat.dtype))
            if self.pool > 1:  # averaging commutes with the affine maps above
                t_, h_, w_ = self.grid
                x = feat.reshape(b * self.views * t_, h_, w_, -1).permute(0, 3, 1, 2)
                x = nn.functional.avg_pool2d(x, self.pool)
                feat = x.permute(0, 2, 3, 1).reshape(b, -1, x.shape[1])
            return feat
        per_view = history.detach().reshape(b, self.views, self.grid_tokens, -1)
        return self.embed_video(per_view.permute(0, 2, 1, 3).reshape(b, self.grid_tokens, -1))

    def forward(
        self, x_action: torch.Tensor, t: torch.Tensor, lang: torch.Tensor, h: torch.Tensor,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_action (B, N_a) local tokens, t (B,), lang (B, L), h (B, N_v, d_v), history (B, N_v, D_code)
        codebook embeddings of the current views -> action logits (B, N_a, K_a)."""
        b = x_action.shape[0]
        if x_action.shape[1] != self.n_action_tokens or h.shape[1] != self.n_video_tokens:
            raise ValueError(
                f"MultiViewActionNet: expected {self.n_action_tokens} action tokens and {self.n_video_tokens} video "
                f"features, got {x_action.shape[1]} and {h.shape[1]}"
            )
        if not self.foresight and history is None:
            raise ValueError("MultiViewActionNet(foresight=False) reads the current views: pass history")
        acts = self.embed_action(x_action.clamp(0, self.n_bins))
        out = self._trunk(t, lang, self.video_features(h, history), acts)
        logits = torch.cat([self.head_trans(out[:, :, 0:3]), self.head_rot(out[:, :, 3:6]),
                            self.head_grip(out[:, :, 6:7])], dim=2)
        return logits.reshape(b, self.n_action_tokens, self.n_bins)


register_action_net("multiview", MultiViewActionNet)
