"""The mask-and-replace noise schedule as pure functions and lookup tables (algorithm.md §3.2).

With T steps and t in {0..T-1} the released code (VQ-Diffusion's ``alpha_schedule``) uses linear cumulative
rates, computed in float64:

    ā_t = att_1 + t/(T-1)·(att_T - att_1)          cumulative keep rate
    γ̄_t = ctt_1 + t/(T-1)·(ctt_T - ctt_1)          cumulative mask rate
    β̄_t^M = (1 - ā_t - γ̄_t) / K_M                  cumulative replace mass per class of modality M

and one extra index t = T holding the identity (ā = 1, γ̄ = 0, β̄ = 0), used when t-1 = -1 wraps round.

A transition from step s to step t > s composes in closed form, because mask-and-replace kernels are closed
under composition (the keep rates multiply, the no-mask rates multiply, the replace mass is what is left):

    α_{s→t} = ā_t / ā_s ,   γ_{s→t} = 1 - (1-γ̄_t)/(1-γ̄_s) ,   β_{s→t}^M = (1 - α_{s→t} - γ_{s→t}) / K_M

with s = -1 meaning the identity entry. For s = t-1 these are exactly the code's one-step ``at, ct, bt``
(the same float64 arithmetic), which is what strided sampling relies on: with stride s the reverse step
jumps t → t-s using the (t-s → t) transition and the cumulative rates at t-s.

:class:`ScheduleTables` holds the float64 tables and hands out per-sample :class:`StepCoefficients`, the
only schedule input the kernels (``vpdd_kernels``, which defines the type) need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from vpdd_kernels import StepCoefficients


def cumulative_keep_rates(num_timesteps: int, att_1: float, att_T: float) -> np.ndarray:
    """ā_t for t = 0..T-1, then the identity entry ā_T = 1 (float64, length T+1)."""
    t = np.arange(0, num_timesteps)
    att = t / max(num_timesteps - 1, 1) * (att_T - att_1) + att_1
    return np.concatenate((att, [1.0]))


def cumulative_mask_rates(num_timesteps: int, ctt_1: float, ctt_T: float) -> np.ndarray:
    """γ̄_t for t = 0..T-1, then the identity entry γ̄_T = 0 (float64, length T+1)."""
    t = np.arange(0, num_timesteps)
    ctt = t / max(num_timesteps - 1, 1) * (ctt_T - ctt_1) + ctt_1
    return np.concatenate((ctt, [0.0]))


def transition_rates(
    cum_keep: np.ndarray, cum_mask: np.ndarray, t: np.ndarray, t_prev: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(α, γ, 1-α-γ) of the transition t_prev → t; t_prev = -1 means "from the clean data"."""
    t_prev = np.where(t_prev < 0, len(cum_keep) - 1, t_prev)
    keep = cum_keep[t] / cum_keep[t_prev]
    mask = 1 - (1 - cum_mask[t]) / (1 - cum_mask[t_prev])
    return keep, mask, 1 - keep - mask


def one_step_rates(cum_keep: np.ndarray, cum_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(α_t, γ_t, 1-α_t-γ_t) for t = 0..T-1: the paper's one-step transition."""
    t = np.arange(len(cum_keep) - 1)
    return transition_rates(cum_keep, cum_mask, t, t - 1)


def log_1_min_a(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a) + 1e-40), as the released code computes it."""
    return torch.log(1 - a.exp() + 1e-40)


@dataclass
class ScheduleTables:
    """The schedule of one diffusion: float64 rate tables plus the float32 log buffers of the released code.

    ``cum_keep``/``cum_mask`` have length T+1 (identity at index T); the one-step tables have length T.
    """

    num_timesteps: int
    n_video_codes: int
    n_action_bins: int
    cum_keep: np.ndarray
    cum_mask: np.ndarray
    _on_device: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        num_timesteps: int,
        n_video_codes: int,
        n_action_bins: int,
        att_1: float = 0.99999,
        att_T: float = 0.000009,
        ctt_1: float = 0.000009,
        ctt_T: float = 0.99999,
    ) -> ScheduleTables:
        return cls(
            num_timesteps,
            n_video_codes,
            n_action_bins,
            cumulative_keep_rates(num_timesteps, att_1, att_T),
            cumulative_mask_rates(num_timesteps, ctt_1, ctt_T),
        )

    # ----------------------------------------------------------------- float64 values
    @property
    def cum_replace_total(self) -> np.ndarray:
        """1 - ā - γ̄ (length T+1; 0 at the identity entry)."""
        out = 1 - self.cum_keep - self.cum_mask
        out[-1] = 0.0
        return out

    def n_codes(self, modality: int) -> int:
        return self.n_video_codes if modality == 0 else self.n_action_bins

    def log_tables(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """The float32 log buffers of the released code (``log_at, log_bt_obs, ...``), keyed by those names.

        Cumulative tables have length T+1, one-step tables length T.
        """
        keep, mask, rep = one_step_rates(self.cum_keep, self.cum_mask)
        f64 = {"at": keep, "ct": mask, "cumprod_at": self.cum_keep, "cumprod_ct": self.cum_mask}
        out = {f"log_{k}": torch.log(torch.tensor(v, dtype=torch.float64)) for k, v in f64.items()}
        with np.errstate(divide="ignore"):
            for tag, k in (("obs", self.n_video_codes), ("act", self.n_action_bins)):
                out[f"log_bt_{tag}"] = torch.log(torch.tensor(rep / k, dtype=torch.float64))
                out[f"log_cumprod_bt_{tag}"] = torch.log(torch.tensor(self.cum_replace_total / k, dtype=torch.float64))
        out["log_1_min_ct"] = log_1_min_a(out["log_ct"])
        out["log_1_min_cumprod_ct"] = log_1_min_a(out["log_cumprod_ct"])
        return {k: v.to(device=device, dtype=dtype) for k, v in out.items()}

    def transition_log_tables(
        self, t: torch.Tensor, t_prev: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """Float32 logs of the (t_prev → t) transition per sample, named like the one-step buffers.

        For t_prev = t-1 the values equal ``log_tables()``'s one-step entries bit for bit.
        """
        tn, pn = t.cpu().numpy(), t_prev.cpu().numpy()
        keep, mask, rep = transition_rates(self.cum_keep, self.cum_mask, tn, pn)
        f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        out = {
            "log_at": torch.log(f64(keep)),
            "log_ct": torch.log(f64(mask)),
            "log_bt_obs": torch.log(f64(rep / self.n_video_codes)),
            "log_bt_act": torch.log(f64(rep / self.n_action_bins)),
        }
        out["log_1_min_ct"] = log_1_min_a(out["log_ct"])
        return {k: v.to(device=t.device, dtype=dtype) for k, v in out.items()}

    def coefficients(self, t: torch.Tensor, t_prev: torch.Tensor, modality: int) -> StepCoefficients:
        """Per-sample float64 coefficients of one modality for the step t_prev → t (t_prev = -1 allowed).

        Computed on ``t``'s device from cached float64 tables (no host synchronisation), with the same
        float64 arithmetic as :func:`transition_rates`."""
        key = str(t.device)
        if key not in self._on_device:
            tabs = np.stack([self.cum_keep, self.cum_mask, self.cum_replace_total])
            self._on_device[key] = torch.tensor(tabs, dtype=torch.float64, device=t.device)
        cum_keep, cum_mask, total = self._on_device[key]
        k, ko = self.n_codes(modality), self.n_codes(1 - modality)
        prev = torch.where(t_prev < 0, self.num_timesteps, t_prev)
        keep = cum_keep[t] / cum_keep[prev]
        mask = 1 - (1 - cum_mask[t]) / (1 - cum_mask[prev])
        rep = 1 - keep - mask
        return StepCoefficients(
            cum_keep[t],
            total[t] / k,
            cum_mask[t],
            keep,
            rep / k,
            mask,
            cum_keep[prev],
            total[prev] / k,
            cum_mask[prev],
            total[t] / ko,
            rep / ko,
            total[prev] / ko,
        )


def aux_loss_weights(t: torch.Tensor, num_timesteps: int, adaptive: bool) -> torch.Tensor:
    """w(t) = (1 - t/T) + 1 when adaptive (2 → 1.01), else 1 (algorithm.md §3.5)."""
    if not adaptive:
        return torch.ones_like(t, dtype=torch.float32)
    return (1 - t.float() / num_timesteps) + 1.0


def combine_loss(
    kl: torch.Tensor,
    nll: torch.Tensor,
    aux: torch.Tensor,
    t: torch.Tensor,
    pt: torch.Tensor,
    num_timesteps: int,
    aux_weight: float,
    adaptive: bool,
    n_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VB loss of the released code from per-sample sums over tokens (each (B,)).

    Returns (loss, kl_loss) where kl_loss_b = dec_nll_b if t_b = 0 else kl_b (the term whose square feeds
    ``Lt_history``), and loss = Σ_b [kl_loss_b + w(t_b)·λ·(t_b = 0 ? dec_nll_b : aux_b)] / pt_b / (B·N).
    """
    is_first = (t == 0).to(kl.dtype)
    kl_loss = is_first * nll + (1 - is_first) * kl
    aux_loss = is_first * nll + (1 - is_first) * aux
    w = aux_loss_weights(t, num_timesteps, adaptive).to(kl.dtype)
    per_sample = kl_loss / pt + w * aux_weight * aux_loss / pt
    return per_sample.sum() / (kl.shape[0] * n_tokens), kl_loss
