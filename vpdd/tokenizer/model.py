"""The video tokenizer network: a VideoGPT-style 3-D convolutional VQ-VAE (algorithm.md §2.1).

Input is a clip ``(B, 3, T, H, W)`` in ``[-0.5, 0.5]``; the encoder downsamples (T, H, W) by
``downsample`` (powers of two, one stride-2 ``k=4`` convolution per halving, ReLU between them), then a
``k=3`` convolution and a stack of ``n_res_layers`` attention residual blocks. A ``k=1`` convolution maps
to the codebook dimension; the :class:`~vpdd.tokenizer.codebook.EMACodebook` quantises; a ``k=1``
convolution maps back, and the decoder mirrors the encoder with transposed convolutions (no output
activation). With the paper preset (96x96, (4,4,4), 256 hidden channels, 6 residual blocks) a 4-frame clip
becomes a 1x24x24 grid of codes and the network has about 31 M parameters.

Residual block: BN-ReLU-Conv(k3, C->C/2, no bias)-BN-ReLU-Conv(k1, C/2->C)-BN-ReLU-AxialBlock, added to the
input. The axial block sums three multi-head self-attentions, each along one axis (W, H, T) with the other
two folded into the batch; no causal mask. Convolutions use "same" padding (output size = ceil(in/stride)),
so any clip whose T, H, W are multiples of the downsampling factors round-trips exactly.

Loss (``forward``): ``MSE(x_hat, x) / 0.06`` (VideoGPT's data-variance constant) plus the codebook's
commitment term ``0.25 * MSE(z, sg(e))``; there is no codebook loss, the codebook learns by EMA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vpdd.tokenizer.codebook import EMA_BUFFERS, EMACodebook

DATA_VARIANCE = 0.06


@dataclass(frozen=True)
class VQVAEArch:
    """Everything that fixes the network's shape (the architecture part of the tokenizer config)."""

    resolution: int = 64
    n_codes: int = 256
    embedding_dim: int = 64
    n_hiddens: int = 64
    n_res_layers: int = 2
    downsample: tuple[int, int, int] = (4, 4, 4)
    attn_heads: int = 2
    ema_decay: float = 0.99
    commitment_weight: float = 0.25

    @classmethod
    def from_config(cls, cfg) -> VQVAEArch:
        return cls(
            resolution=cfg.resolution,
            n_codes=cfg.n_codes,
            embedding_dim=cfg.embedding_dim,
            n_hiddens=cfg.n_hiddens,
            n_res_layers=cfg.n_res_layers,
            downsample=tuple(int(d) for d in cfg.downsample),
            attn_heads=cfg.attn_heads,
            ema_decay=cfg.ema_decay,
            commitment_weight=cfg.commitment_weight,
        )

    def latent_shape(self, clip_length: int) -> tuple[int, int, int]:
        t, h, w = self.downsample
        return (math.ceil(clip_length / t), math.ceil(self.resolution / h), math.ceil(self.resolution / w))


def _same_pad(kernel: int, stride: int) -> tuple[int, int]:
    total = kernel - stride
    return (total // 2 + total % 2, total // 2)


class SamePadConv3d(nn.Module):
    """Conv3d whose output size is ceil(input / stride) on every axis."""

    def __init__(self, cin: int, cout: int, kernel: int, stride=1, bias: bool = True):
        super().__init__()
        strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        pads = [_same_pad(kernel, s) for s in strides]
        # F.pad wants the last axis first: (W_lo, W_hi, H_lo, H_hi, T_lo, T_hi)
        self.pad = tuple(p for pair in reversed(pads) for p in pair)
        self.conv = nn.Conv3d(cin, cout, kernel, stride=strides, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class SamePadConvTranspose3d(nn.Module):
    """ConvTranspose3d whose output size is input * stride on every axis."""

    def __init__(self, cin: int, cout: int, kernel: int, stride=1):
        super().__init__()
        strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        pads = [_same_pad(kernel, s) for s in strides]
        self.pad = tuple(p for pair in reversed(pads) for p in pair)
        self.conv = nn.ConvTranspose3d(cin, cout, kernel, stride=strides, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class AxialAttention(nn.Module):
    """Multi-head self-attention along one axis of a (B, C, T, H, W) tensor."""

    def __init__(self, channels: int, heads: int, axis: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"axial attention: {channels} channels do not split into {heads} heads")
        self.heads, self.axis = heads, axis  # axis: 2 = T, 3 = H, 4 = W
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        seq = x.movedim(1, -1).movedim(self.axis - 1, -2)  # (B, ..., L, C)
        lead = seq.shape[:-2]
        length = seq.shape[-2]
        q, k, v = self.qkv(seq.reshape(-1, length, c)).chunk(3, dim=-1)
        split = lambda t: t.view(t.shape[0], length, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(split(q), split(k), split(v))
        y = self.out(y.transpose(1, 2).reshape(-1, length, c))
        return y.view(*lead, length, c).movedim(-2, self.axis - 1).movedim(-1, 1)


class AxialBlock(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.attn = nn.ModuleList(AxialAttention(channels, heads, axis) for axis in (4, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(a(x) for a in self.attn)


class AttentionResidualBlock(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm3d(channels),
            nn.ReLU(),
            SamePadConv3d(channels, channels // 2, 3, bias=False),
            nn.BatchNorm3d(channels // 2),
            nn.ReLU(),
            SamePadConv3d(channels // 2, channels, 1, bias=False),
            nn.BatchNorm3d(channels),
            nn.ReLU(),
            AxialBlock(channels, heads),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _res_stack(channels: int, layers: int, heads: int) -> nn.Sequential:
    return nn.Sequential(
        *(AttentionResidualBlock(channels, heads) for _ in range(layers)), nn.BatchNorm3d(channels), nn.ReLU()
    )


def _stride_schedule(downsample: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """One (t, h, w) stride per resampling layer: 2 on an axis while it still needs halving, else 1."""
    halvings = [int(math.log2(d)) for d in downsample]
    return [tuple(2 if i < h else 1 for h in halvings) for i in range(max(halvings))]


class Encoder(nn.Module):
    def __init__(self, arch: VQVAEArch):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for stride in _stride_schedule(arch.downsample):
            layers += [SamePadConv3d(cin, arch.n_hiddens, 4, stride=stride), nn.ReLU()]
            cin = arch.n_hiddens
        self.down = nn.Sequential(*layers)
        self.conv_last = SamePadConv3d(cin, arch.n_hiddens, 3)
        self.res = _res_stack(arch.n_hiddens, arch.n_res_layers, arch.attn_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(self.conv_last(self.down(x)))


class Decoder(nn.Module):
    def __init__(self, arch: VQVAEArch):
        super().__init__()
        self.res = _res_stack(arch.n_hiddens, arch.n_res_layers, arch.attn_heads)
        strides = _stride_schedule(arch.downsample)
        layers: list[nn.Module] = []
        for i, stride in enumerate(strides):
            last = i == len(strides) - 1
            layers.append(SamePadConvTranspose3d(arch.n_hiddens, 3 if last else arch.n_hiddens, 4, stride=stride))
            if not last:
                layers.append(nn.ReLU())
        if not strides:  # no resampling at all: still end on 3 channels
            layers.append(SamePadConv3d(arch.n_hiddens, 3, 3))
        self.up = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.res(h))


class VQVAE(nn.Module):
    """Encoder -> EMA codebook -> decoder. ``forward(x)`` returns ``(loss, info)``."""

    def __init__(self, arch: VQVAEArch):
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch)
        self.pre_vq = SamePadConv3d(arch.n_hiddens, arch.embedding_dim, 1)
        self.codebook = EMACodebook(arch.n_codes, arch.embedding_dim, arch.ema_decay, arch.commitment_weight)
        self.post_vq = SamePadConv3d(arch.embedding_dim, arch.n_hiddens, 1)
        self.decoder = Decoder(arch)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"VQVAE: expected clips (B, 3, T, H, W), got {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if h != self.arch.resolution or w != self.arch.resolution:
            raise ValueError(
                f"VQVAE: the tokenizer was built for {self.arch.resolution}x{self.arch.resolution} frames, got {h}x{w}"
            )
        if t % self.arch.downsample[0]:
            raise ValueError(
                f"VQVAE: clip length {t} is not a multiple of the temporal downsampling "
                f"factor {self.arch.downsample[0]}"
            )

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        self.check_input(x)
        z = self.pre_vq(self.encoder(x))
        vq = self.codebook(z, generator)
        x_hat = self.decoder(self.post_vq(vq["quantized"]))
        recon = F.mse_loss(x_hat, x) / DATA_VARIANCE
        loss = recon + vq["commitment_loss"]
        info = {
            "recon_loss": recon.detach(),
            "commitment_loss": vq["commitment_loss"].detach(),
            "perplexity": vq["perplexity"],
            "codes": vq["codes"],
            "x_hat": x_hat.detach(),
        }
        return loss, info

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (B, t, h, w) for clips (B, 3, T, H, W) in [-0.5, 0.5]; never updates the codebook."""
        self.check_input(x)
        z = self.pre_vq(self.encoder(x))
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])
        return self.codebook.quantize(flat).view(z.shape[0], *z.shape[2:])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Clips (B, 3, T, H, W) for codes (B, t, h, w)."""
        emb = self.codebook.lookup(codes).movedim(-1, 1)
        return self.decoder(self.post_vq(emb))

    # -- the weights that define the model vs the training-only EMA buffers --------------------------
    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        skip = {f"codebook.{name}" for name in EMA_BUFFERS}
        return {k: v for k, v in self.state_dict().items() if k not in skip}

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self.codebook, name).detach().clone() for name in EMA_BUFFERS}

    def load_inference_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.inference_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"tokenizer weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.load_state_dict(state, strict=False)
        with torch.no_grad():  # a loaded model is initialised: further training must not re-init
            cb = self.codebook
            cb.initialized.fill_(True)
            cb.ema_count.fill_(1.0)
            cb.ema_sum.copy_(cb.embeddings)


def to_model_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (B, T, H, W, 3) -> float clips (B, 3, T, H, W) in [-0.5, 0.5] (algorithm.md §2.4)."""
    return frames.permute(0, 4, 1, 2, 3).float().div(255.0).sub(0.5)


def to_uint8(clips: torch.Tensor) -> torch.Tensor:
    """Float clips (B, 3, T, H, W) in [-0.5, 0.5] -> uint8 frames (B, T, H, W, 3)."""
    return clips.add(0.5).mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1)
