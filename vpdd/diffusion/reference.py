"""The oracle: VPDD's discrete-diffusion maths exactly as the released code computes it (algorithm.md §3).

Every tensor is a (B, C, N) log tensor over the whole unified vocabulary, with the code's constants kept:
one-hots are ``log(clamp(onehot, 1e-30))`` (= -69.0776 off the hot class), ``log_1_min_a`` adds 1e-40, the
prediction is a float64 ``log_softmax`` over the C-1 non-mask classes of logits padded with -1e4 outside the
token's modality, with a MASK row of -70 and a clamp to [-70, 0]; the posterior is clamped to [-70, 0];
sampling is a Gumbel-argmax over C with the other modality's classes set to -1e4.

This module is slow and memory hungry on purpose (dozens of (B, C, N) temporaries). It is the test oracle
for :mod:`vpdd_kernels` and the "reference" implementation behind the scheduler. Indices (B, N) are
the interface at both ends, as for the kernels. The only generalisation over the released code is
``t_prev`` (strided sampling, see :mod:`vpdd.diffusion.schedule`); ``t_prev = t - 1`` is the paper's chain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from vpdd_kernels import EPS, LOG_FLOOR, kept_sorted

from vpdd.diffusion.layout import TokenLayout
from vpdd.diffusion.schedule import ScheduleTables

PAD_LOGIT = -1.0e4  # logits of the other modality's classes


def index_to_log_onehot(x: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, N) indices -> (B, C, N) log one-hot with zeros clamped to 1e-30."""
    onehot = F.one_hot(x, num_classes).permute(0, 2, 1).to(dtype)
    return torch.log(onehot.clamp(min=EPS))


def log_onehot_to_index(log_x: torch.Tensor) -> torch.Tensor:
    return log_x.argmax(1)


def log_add_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    maximum = torch.max(a, b)
    return maximum + torch.log(torch.exp(a - maximum) + torch.exp(b - maximum))


def _extract(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample scalar -> (B, 1, 1)."""
    return table.gather(-1, t).reshape(t.shape[0], 1, 1)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1, 1)


def multinomial_kl(log_prob1: torch.Tensor, log_prob2: torch.Tensor) -> torch.Tensor:
    return (log_prob1.exp() * (log_prob1 - log_prob2)).sum(dim=1)


def log_categorical(log_x_start: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    return (log_x_start.exp() * log_prob).sum(dim=1)


class ReferenceDiffusion:
    """The released code's functions bound to one schedule and token layout.

    ``dtype=torch.float64`` runs the same formulas in double precision (buffers and prediction included):
    not what the code does, but the yardstick for how far the float32 oracle itself is from exact.
    """

    def __init__(
        self,
        tables: ScheduleTables,
        layout: TokenLayout,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.tables = tables
        self.layout = layout
        self.T = tables.num_timesteps
        self.dtype = dtype
        self.buf = tables.log_tables(device, dtype)

    def _step(self, t: torch.Tensor, t_prev: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.tables.transition_log_tables(t, t_prev, self.dtype)

    # -------------------------------------------------------------- transitions
    def q_pred(self, log_x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log(Q̄_t · x): the t-step marginal; t = -1 wraps to the identity entry T."""
        t = (t + (self.T + 1)) % (self.T + 1)
        kv, cm = self.layout.n_video_codes, self.layout.mask_id
        at = _extract(self.buf["log_cumprod_at"], t)
        bt_v = _extract(self.buf["log_cumprod_bt_obs"], t)
        bt_a = _extract(self.buf["log_cumprod_bt_act"], t)
        ct = _extract(self.buf["log_cumprod_ct"], t)
        one_min_ct = _extract(self.buf["log_1_min_cumprod_ct"], t)
        return torch.cat(
            [
                log_add_exp(log_x[:, :kv, :] + at, bt_v),
                log_add_exp(log_x[:, kv:cm, :] + at, bt_a),
                log_add_exp(log_x[:, cm:, :] + one_min_ct, ct),
            ],
            dim=1,
        )

    def q_pred_one_timestep(self, log_x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        """log(Q_{t_prev→t} · x); for t_prev = t-1 the paper's one-step transition."""
        step = self._step(t, t_prev)
        kv, cm = self.layout.n_video_codes, self.layout.mask_id
        at, ct = _per_sample(step["log_at"]), _per_sample(step["log_ct"])
        return torch.cat(
            [
                log_add_exp(log_x[:, :kv, :] + at, _per_sample(step["log_bt_obs"])),
                log_add_exp(log_x[:, kv:cm, :] + at, _per_sample(step["log_bt_act"])),
                log_add_exp(log_x[:, cm:, :] + _per_sample(step["log_1_min_ct"]), ct),
            ],
            dim=1,
        )

    def q_posterior(
        self,
        log_x_start: torch.Tensor,
        log_x_t: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log E_{x0 ~ exp(log_x_start)} q(x_{t_prev} | x_t, x0), unnormalised, clamped to [-70, 0]."""
        if t_prev is None:
            t_prev = t - 1
        b, c, n = log_x_start.shape
        x_t = log_onehot_to_index(log_x_t)
        mask = (x_t == c - 1).unsqueeze(1)
        log_one_vector = torch.zeros(b, 1, 1, dtype=log_x_t.dtype, device=log_x_t.device)
        log_zero_vector = torch.log(log_one_vector + EPS).expand(-1, -1, n)

        log_qt = self.q_pred(log_x_t, t)[:, :-1, :]
        ct_cumprod_vector = _extract(self.buf["log_cumprod_ct"], t).expand(-1, c - 1, -1)
        log_qt = (~mask) * log_qt + mask * ct_cumprod_vector

        log_qt_one_timestep = self.q_pred_one_timestep(log_x_t, t, t_prev)
        log_qt_one_timestep = torch.cat((log_qt_one_timestep[:, :-1, :], log_zero_vector), dim=1)
        log_ct = _per_sample(self._step(t, t_prev)["log_ct"])
        ct_vector = torch.cat((log_ct.expand(-1, c - 1, -1), log_one_vector), dim=1)
        log_qt_one_timestep = (~mask) * log_qt_one_timestep + mask * ct_vector

        q = log_x_start[:, :-1, :] - log_qt
        q = torch.cat((q, log_zero_vector), dim=1)
        q_log_sum_exp = torch.logsumexp(q, dim=1, keepdim=True)
        q = q - q_log_sum_exp
        out = self.q_pred(q, t_prev) + log_qt_one_timestep + q_log_sum_exp
        return torch.clamp(out, LOG_FLOOR, 0)

    # --------------------------------------------------------------- prediction
    def predict_start(self, video_logits: torch.Tensor, action_logits: torch.Tensor | None) -> torch.Tensor:
        """Network logits -> (B, C, N) log p̂(x0 | x_t) (float64 log_softmax, MASK row -70, clamp)."""
        lay = self.layout
        b = video_logits.shape[0]
        if action_logits is None:
            action_logits = video_logits.new_zeros(b, lay.n_action_tokens, lay.n_action_bins)
        video = F.pad(video_logits, (0, lay.n_action_bins), value=PAD_LOGIT)
        action = F.pad(action_logits, (lay.n_video_codes, 0), value=PAD_LOGIT)
        logits = torch.cat([video, action], dim=1).permute(0, 2, 1)  # (B, C-1, N)
        log_pred = F.log_softmax(logits.double(), dim=1).to(self.dtype)
        mask_row = torch.full((b, 1, lay.seq_len), LOG_FLOOR, dtype=log_pred.dtype, device=log_pred.device)
        return torch.clamp(torch.cat((log_pred, mask_row), dim=1), LOG_FLOOR, 0)

    @staticmethod
    def truncate(log_probs: torch.Tensor, truncation_r: float) -> torch.Tensor:
        """VQ-Diffusion's top-r: keep a class iff the mass ranked above it is < r (top-1 always); the rest
        become -70; no renormalisation. Ties are kept together (the mass *strictly* above decides), where
        the released code's unstable sort would keep an order-dependent part of a tied group."""
        sorted_lp, indices = torch.sort(log_probs, 1, descending=True)
        b, c, n = log_probs.shape
        rows = sorted_lp.exp().permute(0, 2, 1).reshape(b * n, c)
        keep = kept_sorted(rows, truncation_r).reshape(b, n, c).permute(0, 2, 1)
        keep = keep.gather(1, indices.argsort(1)).float()
        return keep * log_probs + (1 - keep) * LOG_FLOOR

    def modality_masked(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Set the other modality's classes to -1e4 (a copy; the code does this in place)."""
        lay = self.layout
        out = log_probs.clone()
        out[:, lay.n_video_codes : lay.mask_id, : lay.n_video_tokens] = PAD_LOGIT
        out[:, : lay.n_video_codes, lay.n_video_tokens :] = PAD_LOGIT
        return out

    def sample_categorical(self, log_probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Modality-masked Gumbel-argmax over C -> (B, N) indices."""
        logits = self.modality_masked(log_probs)
        u = torch.rand(logits.shape, generator=generator, device=logits.device)
        gumbel = -torch.log(-torch.log(u + EPS) + EPS)
        return (gumbel + logits).argmax(dim=1)

    # -------------------------------------------------------------- operations
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Forward noising x0 -> x_t (indices)."""
        log_x0 = index_to_log_onehot(x0, self.layout.num_classes, self.dtype)
        return self.sample_categorical(self.q_pred(log_x0, t), generator)

    def posterior_log_probs(
        self,
        video_logits: torch.Tensor,
        action_logits: torch.Tensor | None,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor | None = None,
        truncation_r: float | None = None,
    ) -> torch.Tensor:
        """(B, C, N) log p_θ(x_{t_prev} | x_t) as the sampler computes it."""
        log_x0 = self.predict_start(video_logits, action_logits)
        if truncation_r is not None and truncation_r < 1:
            log_x0 = self.truncate(log_x0, truncation_r)
        return self.q_posterior(log_x0, index_to_log_onehot(x_t, self.layout.num_classes, self.dtype), t, t_prev)

    def sampling_probs(self, *args, **kwargs) -> torch.Tensor:
        """(B, C, N) the exact distribution :meth:`reverse_step` draws from (for tests)."""
        return torch.softmax(self.modality_masked(self.posterior_log_probs(*args, **kwargs)).double(), dim=1)

    def reverse_step(
        self,
        video_logits: torch.Tensor,
        action_logits: torch.Tensor | None,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor | None = None,
        truncation_r: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One reverse step x_t -> x_{t_prev} (indices)."""
        log_p = self.posterior_log_probs(video_logits, action_logits, x_t, t, t_prev, truncation_r)
        return self.sample_categorical(log_p, generator)

    def loss_terms(
        self,
        video_logits: torch.Tensor,
        action_logits: torch.Tensor | None,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-token terms of ``p_losses``: kl (true ‖ model posterior), dec_nll, aux KL; each (B, N)."""
        c = self.layout.num_classes
        log_x0 = index_to_log_onehot(x0, c, self.dtype)
        log_xt = index_to_log_onehot(x_t, c, self.dtype)
        log_x0_recon = self.predict_start(video_logits, action_logits)
        log_model = self.q_posterior(log_x0_recon, log_xt, t)
        log_true = self.q_posterior(log_x0, log_xt, t)
        return {
            "kl": multinomial_kl(log_true, log_model),
            "nll": -log_categorical(log_x0, log_model),
            "aux": multinomial_kl(log_x0[:, :-1, :], log_x0_recon[:, :-1, :]),
        }
