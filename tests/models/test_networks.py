"""The video network (Perceiver IO), the action network (GPT-2) and their combination: shapes, the
[MASK] -> zero embedding, causality, freezing, and the paper preset's sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vpdd.config.model import ModelConfig
from vpdd.diffusion import MaskReplaceScheduler, TokenLayout
from vpdd.models import ModelSpec, VPDDModel, diffusion_loss, sample_tokens
from vpdd.models.video_net import codebook_embed

LAYOUT = TokenLayout(n_video_codes=32, n_action_bins=12, n_video_tokens=16, n_action_tokens=8)


def small_model(with_action: bool = True, action_embedding: str = "ordinal") -> VPDDModel:
    torch.manual_seed(0)
    model = VPDDModel(small_spec(with_action, action_embedding=action_embedding))
    model.video.set_codebook(torch.randn(32, 6))
    return model


def small_spec(with_action: bool = True, lang_dim: int = 10, action_embedding: str = "ordinal") -> ModelSpec:
    cfg = ModelConfig()
    cfg.video = dataclasses.replace(cfg.video, dim=16, depth=1, num_latents=8, dim_head=8, dropout=0.0)
    cfg.action = dataclasses.replace(cfg.action, n_layer=2, n_head=2, n_embd=24, n_inner=32, dropout=0.0,
                                     action_embedding=action_embedding)
    cfg.actions = dataclasses.replace(cfg.actions, n_bins=12, chunk=2, dim=4)
    return ModelSpec.from_config(cfg, LAYOUT, code_dim=6, lang_dim=lang_dim, with_action=with_action)


def inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 32, (batch, 16), generator=g)
    action = torch.randint(32, 44, (batch, 8), generator=g)
    x = torch.cat([video, action], 1)
    return x, torch.randint(0, 100, (batch,), generator=g), torch.randint(0, 32, (batch, 16), generator=g), \
        torch.randn(batch, 10, generator=g)


def test_codebook_embedding_maps_mask_and_action_tokens_to_zero():
    cb = torch.randn(32, 6)
    codes = torch.tensor([[0, 31, 32, 43, LAYOUT.mask_id]])
    emb = codebook_embed(codes, cb)
    assert torch.equal(emb[0, 0], cb[0]) and torch.equal(emb[0, 1], cb[31])
    assert torch.count_nonzero(emb[0, 2:]) == 0


def test_forward_shapes_and_pretraining_has_no_action_logits():
    model = small_model(with_action=False)
    x, t, hist, lang = inputs()
    video, action = model(x, t, hist, lang)
    assert video.shape == (3, 16, 32) and action is None
    full = small_model()
    video, action = full(x, t, hist, lang)
    assert video.shape == (3, 16, 32) and action.shape == (3, 8, 12)


def test_history_and_language_condition_the_video_prediction():
    model = small_model(with_action=False).eval()
    with torch.no_grad():
        model.video.pos_emb.normal_()  # zero-initialised: make positions distinct for this check
    x, t, hist, lang = inputs()
    base, _ = model(x, t, hist, lang)
    other_hist = (hist + 1) % 32
    assert not torch.allclose(model(x, t, other_hist, lang)[0], base)
    assert not torch.allclose(model(x, t, hist, lang + 1)[0], base)
    assert not torch.allclose(model(x, (t + 7) % 100, hist, lang)[0], base)


def test_action_network_is_causal_over_action_tokens():
    model = small_model().eval()
    x, t, hist, lang = inputs(batch=1)
    _, base = model(x, t, hist, lang)
    x2 = x.clone()
    x2[0, 16 + 5] = LAYOUT.mask_id  # change action token 5 only
    _, changed = model(x2, t, hist, lang)
    assert torch.allclose(changed[0, :5], base[0, :5], atol=1e-6), "earlier action positions must not see later ones"
    assert not torch.allclose(changed[0, 5:], base[0, 5:])
    # GPT-2's own position table is zero and frozen (the learned pos_emb plays its role)
    assert torch.count_nonzero(model.action.gpt.wpe.weight) == 0 and not model.action.gpt.wpe.weight.requires_grad


def test_freezing_the_video_network_routes_gradients_to_the_action_network_only():
    model = small_model()
    model.freeze(["video"])
    model.train()
    assert not model.video.training and model.action.training  # frozen parts stay in eval mode
    sched = MaskReplaceScheduler(LAYOUT, num_timesteps=10)
    x, _, hist, lang = inputs()
    loss, info = diffusion_loss(model, sched, x, hist, lang, torch.Generator().manual_seed(1))
    loss.backward()
    assert all(p.grad is None for p in model.video.parameters())
    grads = [p.grad for p in model.action.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert torch.isfinite(loss) and set(info) >= {"kl_video", "kl_action", "aux"}


def test_sampling_returns_a_valid_sequence():
    model = small_model().eval()
    sched = MaskReplaceScheduler(LAYOUT, num_timesteps=10)
    _, _, hist, lang = inputs()
    out = sample_tokens(model, sched, hist, lang, torch.Generator().manual_seed(0), stride=3)
    assert out.shape == (3, LAYOUT.seq_len) and LAYOUT.is_valid(out)
    assert not (out == LAYOUT.mask_id).any()  # the chain ends at t = -1: nothing left masked
    again = sample_tokens(model, sched, hist, lang, torch.Generator().manual_seed(0), stride=3)
    assert torch.equal(out, again)


def test_ordinal_mask_gives_mask_its_own_vector_and_starts_as_the_ordinal_network():
    """"ordinal" embeds [MASK] (1.0) next to the top bin (11/12); "ordinal_mask" starts as the same network
    (the same answers, masked tokens too) with [MASK] a parameter of its own that moves without the bins."""
    ordinal, masked = small_model(), small_model(action_embedding="ordinal_mask")
    extra = set(masked.state_dict()) - set(ordinal.state_dict())
    assert extra == {"action.mask_embed"}
    assert all(torch.equal(v, masked.state_dict()[k]) for k, v in ordinal.state_dict().items())
    k = LAYOUT.n_action_bins
    top_mask = ordinal.action.embed_action_tokens(torch.tensor([[k - 1], [k]]))
    neighbours = ordinal.action.embed_action_tokens(torch.tensor([[k - 2], [k - 1]]))
    # the released embedding puts [MASK] as close to the top bin as two neighbouring bins are to each other
    assert (top_mask[0] - top_mask[1]).norm() < 1.5 * (neighbours[0] - neighbours[1]).norm()
    x, t, hist, lang = inputs()
    x[:, 16::3] = LAYOUT.mask_id
    for m in (ordinal, masked):
        m.eval()
    assert torch.allclose(ordinal(x, t, hist, lang)[1], masked(x, t, hist, lang)[1], atol=1e-6)
    masked.train()
    masked(x, t, hist, lang)[1].square().sum().backward()
    assert masked.action.mask_embed.grad.abs().sum() > 0
    bins = torch.arange(k)[:, None]
    before = masked.action.embed_action_tokens(bins).detach()
    with torch.no_grad():
        masked.action.mask_embed.add_(1.0)
    assert torch.equal(masked.action.embed_action_tokens(bins), before)
    assert not torch.allclose(masked.action.embed_action_tokens(torch.tensor([[k]]))[0, 0], top_mask[1, 0])


def test_table_embedding_has_a_row_per_bin_and_mask_and_bad_names_are_refused():
    model = small_model(action_embedding="table").eval()
    assert model.action.embed_action.weight.shape == (LAYOUT.n_action_bins + 1, 24)
    x, t, hist, lang = inputs()
    assert model(x, t, hist, lang)[1].shape == (3, 8, LAYOUT.n_action_bins)
    with pytest.raises(ValueError, match="action_embedding='onehot'"):
        VPDDModel(small_spec(action_embedding="onehot"))


def test_model_spec_round_trips():
    spec = small_spec()
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="action tokens"):
        ModelSpec(LAYOUT, 6, 10, chunk=3, action_dim=4)
    with pytest.raises(ValueError, match="codebook shape"):
        small_model().video.set_codebook(torch.zeros(31, 6))


def test_paper_sizes_match_the_released_networks():
    """algorithm.md §4: Perceiver ~9.2 M parameters (VQ-VAE excluded), GPT-2 action model ~6.4 M with unused
    modules (ours has none of those)."""
    from vpdd.config import config_from_dict

    cfg = config_from_dict({"model": {"video": {"dim": 256, "depth": 6, "num_latents": 2048},
                                      "action": {"n_layer": 6, "n_head": 2, "n_embd": 256, "n_inner": 1024}}})
    layout = TokenLayout(2048, 48, 576, 16)
    model = VPDDModel(ModelSpec.from_config(cfg.model, layout, code_dim=256, lang_dim=1024, with_action=True))
    video = sum(p.numel() for n, p in model.video.named_parameters())
    action = sum(p.numel() for p in model.action.parameters())
    assert 8.0e6 < video < 10.5e6, video
    assert 4.0e6 < action < 6.5e6, action
    assert model.video.pos_emb.shape == (1, 2 + 2 * 576, 256) and model.video.latents.shape == (2048, 256)
    assert model.action.pos_emb.shape == (1, 2 + 576 + 16, 256)
