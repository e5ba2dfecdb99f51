"""Tiny seeded problems shared by the kernel tests (awkward sizes: K = 37 and 5, N = 5 and 3)."""

from __future__ import annotations

import torch

from vpdd.diffusion.layout import TokenLayout
from vpdd.diffusion.reference import ReferenceDiffusion
from vpdd.diffusion.schedule import ScheduleTables

LAYOUT = TokenLayout(n_video_codes=37, n_action_bins=5, n_video_tokens=5, n_action_tokens=3)
B = 2


def tables(replace: float = 0.0) -> ScheduleTables:
    """The paper's schedule, or one with ``replace`` extra replace mass (att_T/ctt_T lowered)."""
    lay = LAYOUT
    if replace == 0.0:
        return ScheduleTables.build(100, lay.n_video_codes, lay.n_action_bins)
    return ScheduleTables.build(
        100, lay.n_video_codes, lay.n_action_bins, 0.99999 - replace, 0.000009, 0.000009, 0.99999 - replace
    )


def reference(tab: ScheduleTables, device: str = "cpu") -> ReferenceDiffusion:
    return ReferenceDiffusion(tab, LAYOUT, device)


def problem(seed: int, device: str = "cpu", scale: float = 3.0):
    """(video logits, action logits, x0 global, x_t global) with masked, kept and replaced tokens."""
    lay = LAYOUT
    g = torch.Generator().manual_seed(seed)
    zv = scale * torch.randn(B, lay.n_video_tokens, lay.n_video_codes, generator=g)
    za = scale * torch.randn(B, lay.n_action_tokens, lay.n_action_bins, generator=g)
    kv, ka = lay.n_video_codes, lay.n_action_bins
    x0 = torch.cat(
        [
            torch.randint(0, kv, (B, lay.n_video_tokens), generator=g),
            torch.randint(kv, kv + ka, (B, lay.n_action_tokens), generator=g),
        ],
        dim=1,
    )
    xt = x0.clone()
    xt[0, :2] = lay.mask_id  # masked
    xt[1, 0] = (x0[1, 0] + 3) % kv  # replaced video token
    xt[1, lay.n_video_tokens] = lay.mask_id  # masked action token
    xt[0, lay.n_video_tokens + 1] = kv + (x0[0, lay.n_video_tokens + 1] - kv + 1) % ka  # replaced action token
    return tuple(x.to(device) for x in (zv, za, x0, xt))


def local(x: torch.Tensor, m: int) -> torch.Tensor:
    return LAYOUT.to_local(x[:, LAYOUT.positions(m)], m)


def guarded(x: torch.Tensor, fill: float = float("nan"), pad: int = 3) -> torch.Tensor:
    """``x`` as a strided view inside a larger buffer filled with ``fill`` (catches out-of-bounds reads)."""
    big = torch.full(tuple(s + 2 * pad for s in x.shape), fill, dtype=x.dtype, device=x.device)
    view = big[tuple(slice(pad, pad + s) for s in x.shape)]
    view.copy_(x)
    return view
