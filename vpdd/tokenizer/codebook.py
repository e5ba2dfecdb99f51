"""The EMA vector-quantisation codebook of the video tokenizer (algorithm.md §2.2).

Design, as VPDD's released code has it:

* nearest code by squared L2 distance, ``||z||^2 - 2 z.E + ||E||^2``, then argmin;
* no codebook loss term: the codebook follows an exponential moving average (decay 0.99) of the encoder
  outputs assigned to each code, with Laplace smoothing of the counts;
* dead-code restart on every training step: codes whose smoothed count ``N`` is below 1 are replaced by
  random encoder outputs of the current batch (tiled with small noise when the batch holds fewer vectors
  than codes);
* the codebook is initialised from the first training batch (so no code starts far from the data);
* under ``torch.distributed`` the counts and sums are all-reduced, and the random vectors used for
  initialisation and restart are broadcast from rank 0, so every process keeps the same codebook.

:func:`nearest_code` never builds a ``(tokens x codes x dims)`` tensor: it works on ``(chunk x codes)``
distance blocks, with the chunk sized from a memory budget.

Randomness (initial pick, restart pick, tiling noise) comes from a ``torch.Generator`` the caller passes in
(the trainer seeds one per step), so a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Training-only buffers: saved with the training state, not with the inference weights.
EMA_BUFFERS = ("ema_count", "ema_sum", "initialized")


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, max_block_elems: int = 1 << 24) -> torch.Tensor:
    """Index of the nearest code (squared L2) for every row of ``z`` (N, D) in ``codebook`` (K, D).

    Distances are computed as ``||z||^2 - 2 z E^T + ||E||^2`` on blocks of at most ``max_block_elems``
    entries (rows x K), so memory stays O(chunk x K) and no (N, K, D) tensor ever exists.
    """
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"nearest_code: expected z (N, D) and codebook (K, D), got {tuple(z.shape)} and {tuple(codebook.shape)}"
        )
    n, k = z.shape[0], codebook.shape[0]
    e_sq = codebook.pow(2).sum(1)
    chunk = max(1, min(n, max_block_elems // max(k, 1)))
    out = torch.empty(n, dtype=torch.long, device=z.device)
    for start in range(0, n, chunk):
        zc = z[start : start + chunk]
        # ||z||^2 is constant per row and does not change the argmin, but it is kept so the block holds
        # true squared distances (useful for debugging and for ties to resolve like the reference).
        d = torch.addmm(e_sq.unsqueeze(0), zc, codebook.t(), beta=1.0, alpha=-2.0)
        d.add_(zc.pow(2).sum(1, keepdim=True))
        out[start : start + chunk] = d.argmin(1)
    return out


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class EMACodebook(nn.Module):
    """K codes of dimension D, trained by EMA; ``forward(z)`` quantises ``z`` of shape (B, D, *grid)."""

    def __init__(
        self,
        n_codes: int,
        dim: int,
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        eps: float = 1e-7,
        max_block_elems: int = 1 << 24,
    ):
        super().__init__()
        self.n_codes, self.dim = n_codes, dim
        self.decay, self.commitment_weight, self.eps = decay, commitment_weight, eps
        self.max_block_elems = max_block_elems
        self.register_buffer("embeddings", torch.randn(n_codes, dim))
        self.register_buffer("ema_count", torch.zeros(n_codes))
        self.register_buffer("ema_sum", self.embeddings.detach().clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    # -- random vectors drawn from the batch ------------------------------------------------------------
    def _random_rows(self, flat: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``n_codes`` rows picked at random from ``flat`` (tiled with noise if it is too short);
        identical on every process (rank 0's pick is broadcast)."""
        n = flat.shape[0]
        if n < self.n_codes:
            reps = math.ceil(self.n_codes / n)
            noise_std = 0.01 / math.sqrt(self.dim)
            tiled = flat.repeat(reps, 1)
            noise = torch.randn(tiled.shape, generator=generator, dtype=tiled.dtype).to(tiled.device)
            flat = tiled + noise * noise_std
        perm = torch.randperm(flat.shape[0], generator=generator).to(flat.device)
        rows = flat[perm[: self.n_codes]].contiguous()
        if _dist_ready():
            dist.broadcast(rows, 0)
        return rows

    @torch.no_grad()
    def _init_from_data(self, flat: torch.Tensor, generator: torch.Generator | None) -> None:
        rows = self._random_rows(flat, generator)
        self.embeddings.copy_(rows)
        self.ema_sum.copy_(rows)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor, generator: torch.Generator | None) -> None:
        counts = torch.bincount(codes, minlength=self.n_codes).to(flat.dtype)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat)
        if _dist_ready():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.n_codes * self.eps) * total
        self.embeddings.copy_(self.ema_sum / smoothed.unsqueeze(1))
        # Dead-code restart: codes with a smoothed count below 1 take a random encoder output.
        dead = self.ema_count < 1.0
        if bool(dead.any()):
            rows = self._random_rows(flat, generator)
            self.embeddings[dead] = rows[dead]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors for integer ``codes`` of any shape: returns (*codes.shape, D)."""
        return F.embedding(codes, self.embeddings)

    def quantize(self, flat: torch.Tensor) -> torch.Tensor:
        return nearest_code(flat, self.embeddings, self.max_block_elems)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Quantise ``z`` (B, D, *grid). Returns ``codes`` (B, *grid), ``quantized`` (straight-through,
        same shape as z), ``commitment_loss`` and ``perplexity``; in training mode also updates the EMA."""
        b, d, *grid = z.shape
        if d != self.dim:
            raise ValueError(f"codebook: expected {self.dim} channels, got {d}")
        flat = z.movedim(1, -1).reshape(-1, d)
        if self.training and not bool(self.initialized):
            self._init_from_data(flat.detach(), generator)
        codes = self.quantize(flat.detach())
        quant = F.embedding(codes, self.embeddings)
        commitment = self.commitment_weight * F.mse_loss(flat, quant.detach())
        if self.training:
            self._ema_update(flat.detach(), codes, generator)
        quant_st = flat + (quant - flat).detach()
        probs = torch.bincount(codes, minlength=self.n_codes).float() / codes.numel()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return {
            "codes": codes.view(b, *grid),
            "quantized": quant_st.view(b, *grid, d).movedim(-1, 1),
            "commitment_loss": commitment,
            "perplexity": perplexity,
        }
