"""Building blocks shared by the video network and the action network (algorithm.md §4).

* :class:`SinusoidalPosEmb`: ``[sin, cos](t * exp(-log(1e4) * i / (half - 1)))`` of a diffusion timestep;
* :func:`time_mlp` / :func:`prompt_mlp`: the timestep and language conditioning vectors
  (``SinusoidalPosEmb(d) -> Linear(d, 4d) -> Mish -> Linear(4d, d)`` and
  ``LN(L) -> Linear(L, d) -> Mish -> Linear(d, d)``);
* :func:`condition`: VPDD's multiplicative (FiLM-scale-only) conditioning of a token sequence,
  ``S <- prompt * S; S <- t * S + pos; LN(S)``;
* :class:`Attention`, :class:`FeedForward` (GEGLU, mult 4) and :class:`PreNorm`: the Perceiver IO pieces
  (single-head attention of width ``dim_head`` by default, no q/kv bias, an output projection).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb: dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        arg = t.float()[:, None] * freq[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


def time_mlp(dim: int) -> nn.Sequential:
    """Timestep (B,) -> (B, dim)."""
    return nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


def prompt_mlp(lang_dim: int, dim: int) -> nn.Sequential:
    """Language feature (B, lang_dim) -> (B, dim)."""
    return nn.Sequential(nn.LayerNorm(lang_dim), nn.Linear(lang_dim, dim), nn.Mish(), nn.Linear(dim, dim))


def condition(
    seq: torch.Tensor, prompt: torch.Tensor, temb: torch.Tensor, pos: torch.Tensor, norm: nn.LayerNorm
) -> torch.Tensor:
    """``LN(t * (prompt * seq) + pos)`` with ``prompt``/``temb`` (B, d) broadcast over the sequence."""
    seq = prompt[:, None, :] * seq
    seq = temb[:, None, :] * seq + pos[:, : seq.shape[1]]
    return norm(seq)


class Attention(nn.Module):
    """Multi-head (cross-)attention: queries from ``x``, keys/values from ``context`` (``x`` when None)."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 1, dim_head: int = 32,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim or query_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (u.view(b, u.shape[1], self.heads, -1).transpose(1, 2) for u in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class FeedForward(nn.Sequential):
    """``Linear(d, 2 * mult * d) -> GEGLU -> Linear(mult * d, d)``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__(nn.Linear(dim, 2 * mult * dim), GEGLU(), nn.Linear(mult * dim, dim))


class PreNorm(nn.Module):
    """LayerNorm on the input (and on the context, for cross-attention) before ``fn``."""

    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.norm_context is not None:
            return self.fn(x, context=self.norm_context(context))
        return self.fn(x)
