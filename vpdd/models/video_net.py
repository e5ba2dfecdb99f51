"""The video network p_θ1: a Perceiver IO that predicts the future clip's tokens (algorithm.md §4.1).

Design (as in VPDD's released ``pretrainModel``, sizes from ``model.video``):

* **Inputs.** History tokens (the clip ending at step s) and the noisy future tokens x_t^v (the clip at
  min(s + 20, T - 1)), both looked up in the *frozen* VQ-VAE codebook (a buffer copied from the tokenizer
  checkpoint). [MASK] and every index >= K_v embed to the zero vector: there is no learned [MASK]
  embedding, a masked position is just the bias of ``embed_traj``.
* **Embeddings.** ``embed_traj = Linear(D_code, d)``; ``embed_history = LN -> Linear(D_code, 2d) -> Mish
  -> Linear(2d, d)``; the language feature through ``prompt_mlp`` and the timestep through ``time_mlp``.
* **Sequence.** ``S = [t, prompt, history (N_v), noisy future (N_v)]``, conditioned multiplicatively:
  ``S <- prompt * S; S <- t * S + pos; LN``. ``pos`` is a learned (1, 2 + 2 N_v, d) tensor, zero-initialised.
* **Perceiver IO.** Learned latents (num_latents, d), randn init. Encoder cross-attention (PreNorm on
  queries and context) + residual, GEGLU feed-forward + residual; ``depth`` blocks of self-attention and
  feed-forward with residuals; decoder cross-attention with S as queries and the latents as context, with
  no residual and no feed-forward. Attention dropout ``dropout`` in the encoder and latent blocks, none in
  the decoder.
* **Outputs.** ``h`` = the decoder output at the N_v noisy-future positions (the "foresight" features the
  action network reads) and ``logits_v = Linear(d, K_v)(h)``.

Deviations from the released code: the positional table is exactly as long as the sequence (the code
allocates 4610 rows and uses the first 1154). ``history_skip`` (off in the paper preset, on in the tiny
one) adds the conditioned history embedding of position i to the decoder output at future position i: a
direct path that lets a small network trained for minutes copy the static parts of the scene (and hand
the current observation to the action network through h) instead of learning that routing through the
latents, which the paper's 2048-latent network learns over 1e6 steps.
"""

from __future__ import annotations

import torch
from torch import nn

from vpdd.models.layers import Attention, FeedForward, PreNorm, condition, prompt_mlp, time_mlp


def codebook_embed(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, N) global token indices -> (B, N, D_code); indices outside [0, K_v) (actions, [MASK]) -> 0."""
    k = codebook.shape[0]
    valid = (codes >= 0) & (codes < k)
    emb = nn.functional.embedding(codes.clamp(0, k - 1), codebook)
    return emb * valid.unsqueeze(-1).to(emb.dtype)


class VideoNet(nn.Module):
    def __init__(
        self,
        n_codes: int,
        code_dim: int,
        n_tokens: int,
        lang_dim: int,
        dim: int = 256,
        depth: int = 6,
        num_latents: int = 2048,
        heads: int = 1,
        dim_head: int = 32,
        ff_mult: int = 4,
        dropout: float = 0.1,
        history_skip: bool = False,
    ):
        super().__init__()
        self.n_codes, self.n_tokens, self.dim = n_codes, n_tokens, dim
        self.history_skip = history_skip
        self.register_buffer("codebook", torch.zeros(n_codes, code_dim))
        self.embed_traj = nn.Linear(code_dim, dim)
        self.embed_history = nn.Sequential(
            nn.LayerNorm(code_dim), nn.Linear(code_dim, 2 * dim), nn.Mish(), nn.Linear(2 * dim, dim)
        )
        self.prompt_embed = prompt_mlp(lang_dim, dim)
        self.time_embed = time_mlp(dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, 2 + 2 * n_tokens, dim))
        self.in_norm = nn.LayerNorm(dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.encoder_attn = PreNorm(dim, Attention(dim, dim, heads, dim_head, dropout), context_dim=dim)
        self.encoder_ff = PreNorm(dim, FeedForward(dim, ff_mult))
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [PreNorm(dim, Attention(dim, None, heads, dim_head, dropout)), PreNorm(dim, FeedForward(dim, ff_mult))]
            )
            for _ in range(depth)
        )
        self.decoder_attn = PreNorm(dim, Attention(dim, dim, heads, dim_head, 0.0), context_dim=dim)
        self.to_logits = nn.Linear(dim, n_codes)

    @torch.no_grad()
    def set_codebook(self, codebook: torch.Tensor) -> None:
        if tuple(codebook.shape) != tuple(self.codebook.shape):
            raise ValueError(
                f"codebook shape {tuple(codebook.shape)} does not fit the video network "
                f"({tuple(self.codebook.shape)}: n_codes x code dim)"
            )
        self.codebook.copy_(codebook)

    def forward(
        self, x_video: torch.Tensor, t: torch.Tensor, history: torch.Tensor, lang: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_video (B, N_v) noisy future tokens, t (B,), history (B, N_v) codes, lang (B, L) ->
        (video logits (B, N_v, K_v), foresight features h (B, N_v, d))."""
        if x_video.shape[1] != self.n_tokens or history.shape[1] != self.n_tokens:
            raise ValueError(
                f"VideoNet: expected {self.n_tokens} video tokens, got {x_video.shape[1]} (noisy) and "
                f"{history.shape[1]} (history)"
            )
        cb = self.codebook
        traj = self.embed_traj(codebook_embed(x_video, cb))
        hist = self.embed_history(codebook_embed(history, cb))
        prompt = self.prompt_embed(lang)
        temb = self.time_embed(t)
        seq = torch.cat([temb[:, None], prompt[:, None], hist, traj], dim=1)
        seq = condition(seq, prompt, temb, self.pos_emb, self.in_norm)
        x = self.latents.unsqueeze(0).expand(seq.shape[0], -1, -1)
        x = self.encoder_attn(x, context=seq) + x
        x = self.encoder_ff(x) + x
        for attn, ff in self.blocks:
            x = attn(x) + x
            x = ff(x) + x
        y = self.decoder_attn(seq, context=x)
        h = y[:, -self.n_tokens :]
        if self.history_skip:  # not in the paper: position i of the future also sees history position i
            h = h + seq[:, 2 : 2 + self.n_tokens]
        return self.to_logits(h), h
