"""Reconstruction and codebook metrics of the video tokenizer, and the reconstruction grid image.

* PSNR: per clip, ``10 log10(1 / MSE)`` on frames scaled to [0, 1] after rounding the reconstruction to
  uint8 (what a viewer sees), averaged over clips.
* SSIM: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
  per frame and channel ("valid" windows only), averaged.
* Codebook usage: the fraction of the K codes that occur at least once in the tokens, and the perplexity
  ``exp(H)`` of the code histogram (K when all codes are used equally, 1 when one code is used).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(original: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per-clip PSNR in dB for uint8 tensors (B, T, H, W, 3)."""
    a = original.float().div(255.0).flatten(1)
    b = recon.float().div(255.0).flatten(1)
    mse = (a - b).pow(2).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(original: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per-clip mean SSIM for uint8 tensors (B, T, H, W, 3)."""
    b, t, h, w, c = original.shape
    x = original.float().div(255.0).permute(0, 1, 4, 2, 3).reshape(b * t * c, 1, h, w)
    y = recon.float().div(255.0).permute(0, 1, 4, 2, 3).reshape(b * t * c, 1, h, w)
    size = min(11, h, w)
    win = _gaussian_window(size).view(1, 1, size, size)
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.view(b, -1).mean(1)


def code_usage(codes: torch.Tensor | np.ndarray, n_codes: int) -> dict[str, float]:
    """Fraction of codes used and perplexity of the code histogram."""
    flat = torch.as_tensor(np.asarray(codes) if isinstance(codes, np.ndarray) else codes).reshape(-1).long()
    counts = torch.bincount(flat, minlength=n_codes).double()
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    return {"usage": float((counts > 0).double().mean().item()), "perplexity": math.exp(entropy)}


def recon_grid(original: np.ndarray, recon: np.ndarray, pad: int = 2) -> np.ndarray:
    """An RGB image: for each clip, a row of its frames with the reconstruction's row below it.

    ``original`` and ``recon`` are uint8 (B, T, H, W, 3). Clips are separated by ``pad`` white pixels.
    """
    b, t, h, w, _ = original.shape
    rows = []
    for i in range(b):
        for clip in (original[i], recon[i]):
            row = np.full((h, t * (w + pad) - pad, 3), 255, np.uint8)
            for j in range(t):
                row[:, j * (w + pad) : j * (w + pad) + w] = clip[j]
            rows.append(row)
    gap = np.full((pad, rows[0].shape[1], 3), 255, np.uint8)
    out = []
    for k, row in enumerate(rows):
        out.append(row)
        if k < len(rows) - 1:
            out.append(gap if k % 2 == 0 else np.concatenate([gap, gap, gap]))
    return np.concatenate(out)


def captioned_recon_grid(original: np.ndarray, recon: np.ndarray, pad: int = 2) -> np.ndarray:
    """:func:`recon_grid` with its caption: a title line and, per row, ``truth`` or ``recon``."""
    from vpdd.utils.figures import caption_grid

    grid = recon_grid(original, recon, pad)
    h, t = original.shape[2], original.shape[1]
    rows, y = [], 0
    for _ in range(original.shape[0]):
        rows += [(y, y + h, "truth"), (y + h + pad, y + 2 * h + pad, "recon")]
        y += 2 * h + pad + 3 * pad
    return caption_grid(grid, f"held-out clips, frames t = 0..{t - 1} ->",
                        rows=rows)
