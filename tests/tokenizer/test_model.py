"""VQ-VAE shapes and the EMA codebook: nearest-code search, EMA update, dead-code restart, init."""

from __future__ import annotations

import pytest
import torch

from vpdd.tokenizer.codebook import EMACodebook, nearest_code
from vpdd.tokenizer.model import VQVAE, VQVAEArch, to_model_input, to_uint8


def test_tiny_shapes_and_loss():
    arch = VQVAEArch(resolution=16, n_codes=32, embedding_dim=8, n_hiddens=16, n_res_layers=1)
    model = VQVAE(arch)
    x = torch.rand(3, 3, 8, 16, 16) - 0.5
    loss, info = model(x, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert info["codes"].shape == (3, 2, 4, 4) and info["x_hat"].shape == x.shape
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())  # straight-through reaches the encoder
    model.eval()
    codes = model.encode(x[:, :, :4])
    assert codes.shape == (3, 1, 4, 4) and codes.dtype == torch.long and int(codes.max()) < 32
    assert model.decode(codes).shape == (3, 3, 4, 16, 16)
    assert arch.latent_shape(4) == (1, 4, 4)


def test_uneven_downsampling():
    arch = VQVAEArch(resolution=16, n_codes=16, embedding_dim=8, n_hiddens=8, n_res_layers=1, downsample=(1, 4, 2))
    model = VQVAE(arch).eval()
    codes = model.encode(torch.zeros(2, 3, 3, 16, 16))
    assert codes.shape == (2, 3, 4, 8)
    assert model.decode(codes).shape == (2, 3, 3, 16, 16)


def test_paper_preset_size():
    arch = VQVAEArch(resolution=96, n_codes=2048, embedding_dim=256, n_hiddens=256, n_res_layers=6)
    model = VQVAE(arch)
    n = sum(p.numel() for p in model.parameters())
    assert 29e6 < n < 33e6  # algorithm.md §2.1: about 31 M
    assert arch.latent_shape(4) == (1, 24, 24) and arch.latent_shape(8) == (2, 24, 24)
    assert model.codebook.embeddings.shape == (2048, 256)


def test_input_checks_name_both_sides():
    model = VQVAE(VQVAEArch(resolution=16, n_codes=8, embedding_dim=4, n_hiddens=8, n_res_layers=0))
    with pytest.raises(ValueError, match="built for 16x16 frames, got 32x32"):
        model.encode(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="clip length 6 is not a multiple"):
        model.encode(torch.zeros(1, 3, 6, 16, 16))


def test_uint8_round_trip():
    frames = torch.randint(0, 256, (2, 4, 8, 8, 3), dtype=torch.uint8)
    x = to_model_input(frames)
    assert x.shape == (2, 3, 4, 8, 8) and float(x.min()) >= -0.5 and float(x.max()) <= 0.5
    assert torch.equal(to_uint8(x), frames)


@pytest.mark.parametrize("n,k,d,block", [(1000, 77, 13, 500), (37, 5, 3, 1), (256, 256, 8, 10**9)])
def test_chunked_nearest_code_equals_brute_force(n, k, d, block):
    gen = torch.Generator().manual_seed(n + k)
    z, e = torch.randn(n, d, generator=gen), torch.randn(k, d, generator=gen)
    got = nearest_code(z, e, max_block_elems=block)
    brute = ((z.double()[:, None, :] - e.double()[None]) ** 2).sum(-1)
    assert torch.equal(got, brute.argmin(1))
    # and the chosen distance is the minimum (robust to exact ties)
    assert torch.allclose(brute.gather(1, got[:, None]).squeeze(1), brute.min(1).values)


def test_nearest_code_never_builds_the_3d_tensor(monkeypatch):
    """Peak block size is bounded by max_block_elems (rows x codes), not N x K x D."""
    seen = []
    real_addmm = torch.addmm

    def spy(*args, **kwargs):
        out = real_addmm(*args, **kwargs)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(torch, "addmm", spy)
    nearest_code(torch.randn(5000, 16), torch.randn(64, 16), max_block_elems=64 * 100)
    assert seen and max(seen) <= 64 * 100 and len(seen) == 50


def test_codebook_init_from_data_and_ema_update():
    cb = EMACodebook(n_codes=4, dim=2, decay=0.9)
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.1, 0.0], [0.9, 1.0]])
    gen = torch.Generator().manual_seed(0)
    cb.train()
    out = cb(z.T.reshape(1, 2, 6), generator=gen)  # (B=1, D=2, grid=6)
    # initialised from the batch: every code is one of the input vectors
    init_rows = cb.ema_sum.clone()  # after init, ema_sum = rows, count = 1; then one EMA step happened
    assert bool(cb.initialized)
    codes = out["codes"].reshape(-1)
    # recompute the EMA step by hand from the initial codebook (= the rows the init picked)
    counts = torch.bincount(codes, minlength=4).float()
    assert torch.allclose(cb.ema_count, 0.9 * torch.ones(4) + 0.1 * counts)
    sums = torch.zeros(4, 2).index_add_(0, codes, z)
    first = (init_rows - 0.1 * sums) / 0.9  # undo the update to get the initial rows
    assert all(any(torch.allclose(r, v, atol=1e-6) for v in z) for r in first)
    total = cb.ema_count.sum()
    smoothed = (cb.ema_count + 1e-7) / (total + 4e-7) * total
    expected = cb.ema_sum / smoothed[:, None]
    alive = cb.ema_count >= 1
    assert torch.allclose(cb.embeddings[alive], expected[alive], atol=1e-6)
    # straight-through output equals the selected code vectors (from before the update)
    assert torch.allclose(out["quantized"].reshape(2, 6).T, first[codes], atol=1e-6)


def test_dead_codes_restart_from_encoder_outputs():
    cb = EMACodebook(n_codes=8, dim=3, decay=0.99)
    with torch.no_grad():
        cb.embeddings.copy_(torch.cat([torch.zeros(1, 3), torch.full((7, 3), 100.0)]))
        cb.ema_sum.copy_(cb.embeddings)
        cb.ema_count.copy_(torch.tensor([1.0] + [0.5] * 7))  # 7 codes already below the restart threshold
        cb.initialized.fill_(True)
    z = torch.randn(1, 3, 50, generator=torch.Generator().manual_seed(1)) * 0.1
    cb.train()
    out = cb(z, generator=torch.Generator().manual_seed(2))
    assert int(out["codes"].unique().numel()) == 1  # everything went to code 0
    flat = z[0].T
    for row in cb.embeddings[1:]:  # the dead codes now hold actual encoder outputs
        assert (flat - row).abs().sum(1).min() < 1e-6
    # with fewer vectors than codes the batch is tiled with small noise
    cb2 = EMACodebook(n_codes=16, dim=3)
    cb2.train()
    cb2(torch.randn(1, 3, 5), generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(cb2.embeddings).all() and cb2.embeddings.unique(dim=0).shape[0] == 16


def test_eval_mode_leaves_the_codebook_alone():
    cb = EMACodebook(n_codes=8, dim=3)
    cb.train()
    cb(torch.randn(2, 3, 10))
    before = {k: v.clone() for k, v in cb.state_dict().items()}
    cb.eval()
    cb(torch.randn(2, 3, 10))
    assert all(torch.equal(before[k], v) for k, v in cb.state_dict().items())
