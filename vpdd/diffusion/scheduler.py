"""``MaskReplaceScheduler``: VPDD's unified mask-and-replace discrete diffusion as one object.

The scheduler has no learned parameters. It owns the schedule tables, the token layout and the only
training state of the process (``Lt_history``/``Lt_count`` for importance-sampled timesteps), and it is
the only place the train and sample loops touch diffusion maths:

    t, pt = sched.sample_timesteps(B, generator)                 # §3.7
    x_t = sched.add_noise(x0, t, generator)                       # q_sample, §3.4
    video_logits, action_logits = net(x_t, t, ...)
    loss, info = sched.loss(video_logits, action_logits, x0, x_t, t, pt)   # §3.5, updates Lt_history
    x0_hat = sched.sample(denoise, batch_size, generator)         # §3.6, denoise(x_t, t) -> logits

Its constructor arguments round-trip through :meth:`to_dict`/:meth:`from_dict` (store them beside a
checkpoint), and :meth:`state_dict`/:meth:`load_state_dict` carry the importance-sampling history so a run
resumes exactly. ``impl`` picks the maths: ``"fast"`` (the per-token closed forms on index state of
``vpdd_kernels``) or ``"reference"`` (:mod:`vpdd.diffusion.reference`, the released code's maths). Under
``impl="fast"`` every call goes through the one switch, :meth:`kernels`: ``kernel_impl`` (the
``kernel.impl`` config, overridden by ``VPDD_KERNEL_IMPL``: auto|triton|torch) picks, per call and per
tensor device, the fused Triton kernels or their PyTorch references; ``auto`` runs Triton on CUDA tensors,
and :meth:`kernel_impl_for` says which one runs. It is a runtime choice, not part of :meth:`to_dict`.
Both take and return (B, N) global token indices and logits in (B, N, K) layout; ``action_logits=None``
means all-zero action logits (pre-training).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from vpdd_kernels.dispatch import KernelOps, ops, requested_impl, resolve_impl
from vpdd_kernels.sampling import check_truncation_r

from vpdd.diffusion.layout import ACTION, VIDEO, TokenLayout
from vpdd.diffusion.reference import ReferenceDiffusion
from vpdd.diffusion.schedule import ScheduleTables, combine_loss

if TYPE_CHECKING:
    from vpdd.config.diffusion import DiffusionConfig

log = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
IMPLS = ("fast", "reference")
_CONFIG_KEYS = ("num_timesteps", "att_1", "att_T", "ctt_1", "ctt_T", "aux_loss_weight", "adaptive_aux_loss")
_CONFIG_KEYS += ("time_sampling", "truncation_r", "sampling_stride", "impl")


class MaskReplaceScheduler:
    """The discrete diffusion process of VPDD over a :class:`TokenLayout` (see the module docstring)."""

    def __init__(
        self,
        layout: TokenLayout,
        num_timesteps: int = 100,
        att_1: float = 0.99999,
        att_T: float = 0.000009,
        ctt_1: float = 0.000009,
        ctt_T: float = 0.99999,
        aux_loss_weight: float = 5.0e-4,
        adaptive_aux_loss: bool = True,
        time_sampling: str = "importance",
        truncation_r: float = 0.88,
        sampling_stride: int = 1,
        impl: str = "fast",
        device: torch.device | str | None = None,
        kernel_impl: str = "auto",
    ):
        if impl not in IMPLS:
            raise ValueError(f"impl={impl!r}: expected one of {list(IMPLS)}")
        if time_sampling not in ("importance", "uniform"):
            raise ValueError(f"time_sampling={time_sampling!r}: expected 'importance' or 'uniform'")
        if not 1 <= sampling_stride <= num_timesteps:
            raise ValueError(f"sampling_stride={sampling_stride}: expected 1..num_timesteps ({num_timesteps})")
        self.layout = layout
        self.num_timesteps = int(num_timesteps)
        self.att_1, self.att_T, self.ctt_1, self.ctt_T = float(att_1), float(att_T), float(ctt_1), float(ctt_T)
        self.aux_loss_weight = float(aux_loss_weight)
        self.adaptive_aux_loss = bool(adaptive_aux_loss)
        self.time_sampling = time_sampling
        check_truncation_r(truncation_r)  # (0, 1], 1.0 = off: r <= 0 could never accept a draw
        self.truncation_r = float(truncation_r)
        self.sampling_stride = int(sampling_stride)
        self.impl = impl
        self.kernel_impl = kernel_impl
        requested_impl(kernel_impl)  # validate early (raises with the key and value)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        rates = (self.att_1, self.att_T, self.ctt_1, self.ctt_T)
        self.tables = ScheduleTables.build(self.num_timesteps, layout.n_video_codes, layout.n_action_bins, *rates)
        if (self.tables.cum_replace_total[:-1] <= 0).any():
            raise ValueError("the replace mass 1 - att - ctt must be > 0 at every step (the posterior divides by it)")
        self.reference = ReferenceDiffusion(self.tables, layout, self.device)
        self.Lt_history = torch.zeros(self.num_timesteps, device=self.device)
        self.Lt_count = torch.zeros(self.num_timesteps, device=self.device)

    # ---------------------------------------------------------------- config and state
    @property
    def mask_id(self) -> int:
        return self.layout.mask_id

    def to_dict(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable); ``from_dict(to_dict())`` rebuilds the scheduler."""
        return {"layout": self.layout.to_dict(), **{k: getattr(self, k) for k in _CONFIG_KEYS}}

    def kernel_impl_for(self, device: torch.device | str | None = None) -> str:
        """``"triton"`` or ``"torch"``: what runs the fast path for tensors on ``device`` (the scheduler's
        by default), from ``kernel_impl`` and the ``VPDD_KERNEL_IMPL`` environment variable (which wins)."""
        return resolve_impl(self.kernel_impl, torch.device(device if device is not None else self.device).type)

    def kernels(self, like: torch.Tensor) -> KernelOps:
        """The fast-path functions (Triton or PyTorch) for tensors on ``like``'s device (the one switch)."""
        return ops(self.kernel_impl_for(like.device))

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], device: torch.device | str | None = None, kernel_impl: str = "auto"
    ) -> MaskReplaceScheduler:
        unknown = set(data) - {"layout", *_CONFIG_KEYS}
        if unknown:
            raise ValueError(f"scheduler config: unknown keys {sorted(unknown)}")
        kwargs = {k: data[k] for k in _CONFIG_KEYS if k in data}
        return cls(TokenLayout.from_dict(data["layout"]), device=device, kernel_impl=kernel_impl, **kwargs)

    @classmethod
    def from_config(
        cls,
        cfg: DiffusionConfig,
        layout: TokenLayout,
        device: torch.device | str | None = None,
        kernel_impl: str = "auto",
    ) -> MaskReplaceScheduler:
        """``cfg``: the root config's ``diffusion`` group; ``kernel_impl``: its ``kernel.impl`` (auto|triton|torch)."""
        return cls(layout, device=device, kernel_impl=kernel_impl, **{k: getattr(cfg, k) for k in _CONFIG_KEYS})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"Lt_history": self.Lt_history.clone(), "Lt_count": self.Lt_count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in ("Lt_history", "Lt_count"):
            value = state[key]
            if value.shape != (self.num_timesteps,):
                raise ValueError(f"scheduler state {key}: shape {tuple(value.shape)}, expected ({self.num_timesteps},)")
            getattr(self, key).copy_(value)

    def to(self, device: torch.device | str) -> MaskReplaceScheduler:
        self.device = torch.device(device)
        self.Lt_history, self.Lt_count = self.Lt_history.to(device), self.Lt_count.to(device)
        self.reference = ReferenceDiffusion(self.tables, self.layout, self.device)
        return self

    # ----------------------------------------------------------------------- training
    def sample_timesteps(
        self, batch_size: int, generator: torch.Generator | None = None, method: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, pt): uniform until every t has been seen more than 10 times, then p(t) ∝ sqrt(E[L_t²])."""
        method = method or self.time_sampling
        dev = self.Lt_history.device
        if method == "importance" and bool((self.Lt_count > 10).all()):
            lt_sqrt = torch.sqrt(self.Lt_history + 1e-10) + 0.0001
            lt_sqrt[0] = lt_sqrt[1]
            pt_all = lt_sqrt / lt_sqrt.sum()
            t = torch.multinomial(pt_all, num_samples=batch_size, replacement=True, generator=generator)
            return t, pt_all.gather(0, t)
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=dev)
        return t, torch.full((batch_size,), 1.0 / self.num_timesteps, device=dev)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """q_sample: x0 (B, N) clean global indices -> x_t (B, N)."""
        if self.impl == "reference":
            return self.reference.q_sample(x0, t, generator)
        return self._per_modality(
            x0,
            lambda m, local: self.kernels(x0).q_sample(
                local, self.tables.coefficients(t, t - 1, m), self.layout.n_codes(m), generator
            ),
        )

    def _per_modality(self, x: torch.Tensor, op: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Global indices (B, N): ``op(m, local indices of x in modality m)`` for the video, then the actions."""
        out = torch.empty_like(x)
        for m in (VIDEO, ACTION):
            pos = self.layout.positions(m)
            out[:, pos] = self.layout.from_local(op(m, self.layout.to_local(x[:, pos], m)), m)
        return out

    def _action_logits(self, video_logits: torch.Tensor, action_logits: torch.Tensor | None) -> torch.Tensor:
        if action_logits is not None:
            return action_logits
        lay = self.layout
        return video_logits.new_zeros(video_logits.shape[0], lay.n_action_tokens, lay.n_action_bins)

    def loss_terms(
        self,
        video_logits: torch.Tensor,
        action_logits: torch.Tensor | None,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-token kl, dec_nll and aux (each (B, N)), differentiable w.r.t. the logits."""
        if self.impl == "reference":
            return self.reference.loss_terms(video_logits, action_logits, x0, x_t, t)
        logits = (video_logits, self._action_logits(video_logits, action_logits))
        parts = []
        for m in (VIDEO, ACTION):
            pos = self.layout.positions(m)
            coef = self.tables.coefficients(t, t - 1, m)
            parts.append(
                self.kernels(logits[m]).loss_terms(
                    logits[m],
                    self.layout.to_local(x0[:, pos], m),
                    self.layout.to_local(x_t[:, pos], m),
                    coef,
                    self.layout.n_codes(1 - m),
                )
            )
        return {name: torch.cat([parts[0][n], parts[1][n]], dim=1) for n, name in enumerate(("kl", "nll", "aux"))}

    def loss(
        self,
        video_logits: torch.Tensor,
        action_logits: torch.Tensor | None,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        pt: torch.Tensor,
        update_history: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The released code's VB loss (scalar) and detached diagnostics; updates ``Lt_history``."""
        terms = self.loss_terms(video_logits, action_logits, x0, x_t, t)
        kl, nll, aux = (terms[k].sum(1) for k in ("kl", "nll", "aux"))
        loss, kl_loss = combine_loss(
            kl,
            nll,
            aux,
            t,
            pt.to(kl.dtype),
            self.num_timesteps,
            self.aux_loss_weight,
            self.adaptive_aux_loss,
            self.layout.seq_len,
        )
        if update_history:
            self._update_history(t, kl_loss.detach())
        n = t.shape[0] * self.layout.seq_len
        v, a = self.layout.split(terms["kl"].detach())
        info = {
            "kl_loss": kl_loss.detach().sum() / n,
            "aux": aux.detach().sum() / n,
            "kl_video": v.sum() / n,
            "kl_action": a.sum() / n,
            "kl_per_token": terms["kl"].detach(),
        }
        return loss, info

    def _update_history(self, t: torch.Tensor, kl_loss: torch.Tensor) -> None:
        """Lt_history[t] ← 0.9·Lt_history[t] + 0.1·L², Lt_count[t] += 1; with repeated t the last sample wins
        (what a sequential scatter does), made deterministic."""
        t = t.to(self.Lt_history.device)
        new = 0.1 * kl_loss.float().pow(2).to(self.Lt_history.device) + 0.9 * self.Lt_history.gather(0, t)
        order = torch.argsort(t * t.shape[0] + torch.arange(t.shape[0], device=t.device))
        ts = t[order]
        last = torch.ones_like(ts, dtype=torch.bool)
        last[:-1] = ts[1:] != ts[:-1]
        self.Lt_history[ts[last]] = new[order][last]
        self.Lt_count.scatter_add_(0, t, torch.ones_like(new))

    # ----------------------------------------------------------------------- sampling
    def posterior_log_probs(
        self,
        video_logits: torch.Tensor,
        action_logits: torch.Tensor | None,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor | None = None,
        truncation_r: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p_θ(x_{t_prev} | x_t) per modality: video (B, N_v, K_v+1) and action (B, N_a, K_a+1), MASK
        last, clamped to [-70, 0] (no truncation unless ``truncation_r`` is given)."""
        t_prev = t - 1 if t_prev is None else t_prev
        action_logits = self._action_logits(video_logits, action_logits)
        if self.impl == "reference":
            full = self.reference.posterior_log_probs(video_logits, action_logits, x_t, t, t_prev, truncation_r)
            out = []
            for m in (VIDEO, ACTION):
                off, k = self.layout.code_offset(m), self.layout.n_codes(m)
                cls = list(range(off, off + k)) + [self.mask_id]
                out.append(full[:, cls, self.layout.positions(m)].permute(0, 2, 1).contiguous())
            return out[0], out[1]
        logits = (video_logits, action_logits)
        return tuple(  # type: ignore[return-value]
            self.kernels(logits[m]).posterior_log_probs(
                logits[m],
                self.layout.to_local(x_t[:, self.layout.positions(m)], m),
                self.tables.coefficients(t, t_prev, m),
                truncation_r,
            )
            for m in (VIDEO, ACTION)
        )

    def step(
        self,
        video_logits: torch.Tensor,
        action_logits: torch.Tensor | None,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        truncation_r: float | None = None,
    ) -> torch.Tensor:
        """One reverse step x_t -> x_{t_prev} (global indices, t_prev defaults to t - 1).

        ``truncation_r``: None uses the scheduler's; a value >= 1 disables truncation."""
        r = check_truncation_r(self.truncation_r if truncation_r is None else truncation_r)
        t_prev = t - 1 if t_prev is None else t_prev
        action_logits = self._action_logits(video_logits, action_logits)
        if self.impl == "reference":
            return self.reference.reverse_step(video_logits, action_logits, x_t, t, t_prev, r, generator)
        logits = (video_logits, action_logits)
        return self._per_modality(
            x_t,
            lambda m, local: self.kernels(logits[m]).reverse_step(
                logits[m], local, self.tables.coefficients(t, t_prev, m), r, generator
            ),
        )

    def timesteps(self, stride: int | None = None) -> list[tuple[int, int]]:
        """(t, t_prev) pairs of the reverse chain: T-1, T-1-s, ...; the last one jumps to -1 (clean)."""
        s = self.sampling_stride if stride is None else int(stride)
        if not 1 <= s <= self.num_timesteps:
            raise ValueError(f"stride={s}: expected 1..{self.num_timesteps}")
        return [(t, max(t - s, -1)) for t in range(self.num_timesteps - 1, -1, -s)]

    @torch.no_grad()
    def sample(
        self,
        denoise: Denoiser,
        batch_size: int,
        generator: torch.Generator | None = None,
        stride: int | None = None,
        truncation_r: float | None = None,
        x_init: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the reverse chain from all-[MASK] (or ``x_init`` at t = T-1) and return x0 (B, N).

        ``denoise(x_t, t)`` returns (video_logits (B, N_v, K_v), action_logits (B, N_a, K_a) or None); it
        is called once per step, T/stride times. ``stride``/``truncation_r`` default to the scheduler's."""
        x = self.layout.all_masked(batch_size, self.device) if x_init is None else x_init
        for t, t_prev in self.timesteps(stride):
            tt = torch.full((batch_size,), t, dtype=torch.long, device=x.device)
            video_logits, action_logits = denoise(x, tt)
            x = self.step(video_logits, action_logits, x, tt, torch.full_like(tt, t_prev), generator, truncation_r)
        return x
