"""``VPDDModel``: the video network and (after fine-tuning starts) the action network as one denoiser.

The denoiser maps a noisy token sequence ``x_t`` (B, N_v + N_a) in the unified vocabulary of
:class:`vpdd.diffusion.TokenLayout`, the timestep, the history tokens and a language feature to
``(video_logits (B, N_v, K_v), action_logits (B, N_a, K_a) or None)``: exactly what
:class:`vpdd.diffusion.MaskReplaceScheduler` consumes. ``None`` action logits mean "no action network"
(pre-training, algorithm.md §3.5: the scheduler treats them as all-zero logits). ``ModelSpec.action_net``
picks the action network: ``ActionNet`` (Meta-World, §4.2) or ``MultiViewActionNet`` (RLBench keyframes,
§4.3), which also receives the codebook embeddings of the history tokens.

What trains is decided by :meth:`VPDDModel.freeze` (the stage config's ``train`` list): a frozen part has
``requires_grad=False``, stays in eval mode (no dropout) and runs under ``torch.no_grad``, as the released
fine-tuning runs the Perceiver (algorithm.md §4.5).

:class:`ModelSpec` is everything needed to rebuild the network; it is stored in every checkpoint's
``config.json``. :func:`diffusion_loss` and :func:`sample_tokens` are the only two ways the training loop
and the policy use the scheduler (no diffusion maths here: the scheduler owns it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vpdd.diffusion import ACTION, MaskReplaceScheduler, TokenLayout
from vpdd.models.action_net import ActionNet
from vpdd.models.video_net import VideoNet, codebook_embed

PARTS = ("video", "action")
# action networks: "gpt2" = ActionNet (Meta-World, §4.2); "multiview" = MultiViewActionNet (RLBench, §4.3)
ACTION_NETS = ("gpt2", "multiview")


@dataclass
class ModelSpec:
    """The shape of a VPDD network: token layout, codebook width, language width and the two sub-configs."""

    layout: TokenLayout
    code_dim: int
    lang_dim: int
    chunk: int
    action_dim: int
    video: dict[str, Any] = field(default_factory=dict)  # VideoNet keyword arguments (model.video)
    action: dict[str, Any] | None = None  # ActionNet keyword arguments (model.action); None: no action net
    action_net: str = "gpt2"  # which action network class (ACTION_NETS)

    def __post_init__(self) -> None:
        if self.action_net not in ACTION_NETS:
            raise ValueError(f"action_net={self.action_net!r}: expected one of {list(ACTION_NETS)}")
        if self.chunk * self.action_dim != self.layout.n_action_tokens:
            raise ValueError(
                f"chunk x action dim = {self.chunk} x {self.action_dim} does not equal the layout's "
                f"{self.layout.n_action_tokens} action tokens"
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layout"] = self.layout.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        data["layout"] = TokenLayout.from_dict(data["layout"])
        return cls(**data)

    @classmethod
    def from_config(cls, model_cfg, layout: TokenLayout, code_dim: int, lang_dim: int, with_action: bool,
                    action_net: str = "gpt2", action_options: dict[str, Any] | None = None) -> ModelSpec:
        """``action_options`` are extra keyword arguments of the action network (the multi-view one's
        ``views`` and ``foresight``)."""
        return cls(
            layout=layout,
            code_dim=int(code_dim),
            lang_dim=int(lang_dim),
            chunk=model_cfg.actions.chunk,
            action_dim=model_cfg.actions.dim,
            video=dataclasses.asdict(model_cfg.video),
            action={**dataclasses.asdict(model_cfg.action), **(action_options or {})} if with_action else None,
            action_net=action_net,
        )


# Action networks by the name a ModelSpec (and so a checkpoint) stores. Packages above this one add theirs
# with register_action_net (vpdd.rlbench.network registers "multiview"), so models never imports upward.
ACTION_NETS: dict[str, Callable[..., nn.Module]] = {"gpt2": ActionNet}


def register_action_net(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``ModelSpec.action_net == name`` build ``factory(n_bins, chunk, dim, n_video, video_dim, lang_dim,
    code_dim=..., **spec.action)``."""
    ACTION_NETS[name] = factory


def build_action_net(spec: ModelSpec, video_dim: int) -> nn.Module:
    """The action network ``spec.action_net`` for ``spec``."""
    factory = ACTION_NETS.get(spec.action_net)
    if factory is None:
        raise ValueError(f"action network {spec.action_net!r} is not registered (known: {sorted(ACTION_NETS)}); "
                         "'multiview' (RLBench) registers on import of vpdd.rlbench.network, which "
                         "vpdd.rlbench.policy.RLBenchPolicy and the RLBench stages do")
    lay = spec.layout
    args = (lay.n_action_bins, spec.chunk, spec.action_dim, lay.n_video_tokens, video_dim, spec.lang_dim)
    return factory(*args, code_dim=spec.code_dim, **spec.action)


class VPDDModel(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        lay = spec.layout
        self.video = VideoNet(lay.n_video_codes, spec.code_dim, lay.n_video_tokens, spec.lang_dim, **spec.video)
        self.action: nn.Module | None = None
        if spec.action is not None:
            self.action = build_action_net(spec, self.video.dim)
        self.frozen: set[str] = set()

    @property
    def layout(self) -> TokenLayout:
        return self.spec.layout

    def freeze(self, parts: set[str] | list[str] | tuple[str, ...]) -> None:
        """Freeze the named parts ("video", "action"); the others train."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown model parts {sorted(unknown)}; expected a subset of {list(PARTS)}")
        self.frozen = set(parts)
        for name in PARTS:
            module = getattr(self, name)
            if module is None:
                continue
            for pname, p in module.named_parameters():
                fixed = name == "action" and pname in ("gpt.wpe.weight", "gpt.wte.weight")
                p.requires_grad_(name not in self.frozen and not fixed)
        self.train(self.training)

    def train(self, mode: bool = True) -> VPDDModel:
        super().train(mode)
        for name in self.frozen:
            module = getattr(self, name)
            if module is not None:
                module.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, history: torch.Tensor, lang: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lay = self.layout
        x_video, x_action = lay.split(x_t)
        if "video" in self.frozen:
            with torch.no_grad():
                video_logits, h = self.video(x_video, t, history, lang)
        else:
            video_logits, h = self.video(x_video, t, history, lang)
        if self.action is None:
            return video_logits, None
        extra = {}
        if getattr(self.action, "needs_history", False):  # the multi-view net can read the current views
            extra["history"] = codebook_embed(history, self.video.codebook)
        if "action" in self.frozen:
            with torch.no_grad():
                action_logits = self.action(lay.to_local(x_action, ACTION), t, lang, h, **extra)
        else:
            action_logits = self.action(lay.to_local(x_action, ACTION), t, lang, h, **extra)
        return video_logits, action_logits


Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def _float(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float()


def diffusion_loss(
    net: Net,
    scheduler: MaskReplaceScheduler,
    x0: torch.Tensor,
    history: torch.Tensor,
    lang: torch.Tensor,
    generator: torch.Generator | None = None,
    update_history: bool = True,
    video: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training loss: draw t, noise x0 (B, N) with the scheduler, run ``net``, score with the scheduler.

    ``net`` may be a DDP wrapper of :class:`VPDDModel`. Logits are cast to float32 before the loss. ``video``
    (B, N_v), if given, is the video part the network reads instead of the noised one (``finetune.foresight``
    = masked); the loss still scores the noised sequence."""
    t, pt = scheduler.sample_timesteps(x0.shape[0], generator)
    x_t = scheduler.add_noise(x0, t, generator)
    x_in = x_t if video is None else torch.cat([video, x_t[:, video.shape[1]:]], dim=1)
    with autocast(x0.device):
        video_logits, action_logits = net(x_in, t, history, lang)
    loss, info = scheduler.loss(_float(video_logits), _float(action_logits), x0, x_t, t, pt,
                                update_history=update_history)
    info["t_mean"] = t.float().mean()
    return loss, info


@torch.no_grad()
def sample_tokens(
    net: Net,
    scheduler: MaskReplaceScheduler,
    history: torch.Tensor,
    lang: torch.Tensor,
    generator: torch.Generator | None = None,
    stride: int | None = None,
    truncation_r: float | None = None,
    video: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoise [future video ; actions] from all-[MASK] given history tokens (B, N_v) and language (B, L).

    ``video`` (B, N_v) global indices, if given, is the video part the network reads at every step instead of
    the chain's own (the foresight probe hands it the true future, or all [MASK]); the chain still samples
    its video tokens, so the generator's draws are the same as without it."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor):
        if video is not None:
            x_t = torch.cat([video, x_t[:, video.shape[1]:]], dim=1)
        with autocast(x_t.device):
            video_logits, action_logits = net(x_t, t, history, lang)
        return _float(video_logits), _float(action_logits)

    return scheduler.sample(denoise, history.shape[0], generator, stride=stride, truncation_r=truncation_r)
