"""The RLBench action network: the foresight flag decides whether it reads the predicted video (the paper) or the
current views (the released code); VPDDModel builds it from the spec and hands it the history embeddings."""

from __future__ import annotations

import pytest
import torch

from vpdd.diffusion import TokenLayout
from vpdd.models.model import ModelSpec, VPDDModel
from vpdd.rlbench.network import MultiViewActionNet

V, G, D_CODE, D_VIDEO = 4, 16, 8, 12  # 4 views of a 1x4x4 grid


def _net(foresight: bool, pool: int = 1, history_input: bool = False) -> MultiViewActionNet:
    torch.manual_seed(0)
    net = MultiViewActionNet(360, 4, 7, V * G, D_VIDEO, 10, code_dim=D_CODE, views=V, foresight=foresight,
                             grid=[1, 4, 4], pool=pool, history_input=history_input, n_layer=1, n_head=2,
                             n_embd=16, n_inner=32, dropout=0.0)
    return net.eval()


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 361, (2, 28), generator=g)
    t = torch.randint(0, 100, (2,), generator=g)
    lang = torch.randn(2, 10, generator=g)
    h = torch.randn(2, V * G, D_VIDEO, generator=g)
    history = torch.randn(2, V * G, D_CODE, generator=g)
    return x, t, lang, h, history


@torch.no_grad()
def test_foresight_reads_the_predicted_video_and_not_the_current_views():
    net = _net(True)
    x, t, lang, h, hist = _inputs()
    out = net(x, t, lang, h, hist)
    assert out.shape == (2, 28, 360)
    assert not torch.allclose(net(x, t, lang, h + torch.randn_like(h), hist), out)
    assert torch.equal(net(x, t, lang, h, hist + torch.randn_like(hist)), out)
    assert torch.equal(net(x, t, lang, h, None), out)  # the history is not needed at all
    assert net.pos_emb.shape[1] == 2 + V * G + 28  # every video token of every view is in the sequence


@torch.no_grad()
def test_without_foresight_it_reads_the_current_views_and_ignores_the_prediction():
    net = _net(False)
    x, t, lang, h, hist = _inputs()
    out = net(x, t, lang, h, hist)
    assert torch.equal(net(x, t, lang, h + torch.randn_like(h), hist), out)
    assert not torch.allclose(net(x, t, lang, h, hist + torch.randn_like(hist)), out)
    one_view = hist.clone()
    one_view[:, 3 * G :] += 1.0  # only the wrist view changes: it still reaches the output
    assert not torch.allclose(net(x, t, lang, h, one_view), out)
    assert net.pos_emb.shape[1] == 2 + G + 28  # one token per grid position, views concatenated per channel
    with pytest.raises(ValueError, match="pass history"):
        net(x, t, lang, h, None)


@torch.no_grad()
def test_foresight_with_history_input_reads_both():
    net = _net(True, history_input=True)
    x, t, lang, h, hist = _inputs()
    out = net(x, t, lang, h, hist)
    assert not torch.allclose(net(x, t, lang, h + torch.randn_like(h), hist), out)
    assert not torch.allclose(net(x, t, lang, h, hist + torch.randn_like(hist)), out)
    assert net.pos_emb.shape[1] == 2 + V * G + 28  # added per position: the sequence does not grow
    with pytest.raises(ValueError, match="pass history"):
        net(x, t, lang, h, None)


@torch.no_grad()
def test_pooling_shortens_the_foresight_sequence():
    net = _net(True, pool=2)
    x, t, lang, h, hist = _inputs()
    assert net.pos_emb.shape[1] == 2 + V * 4 + 28
    out = net(x, t, lang, h, hist)
    assert out.shape == (2, 28, 360)
    # averaging a 2x2 patch: permuting within a patch does not change the output
    hp = h.reshape(2, V, 4, 4, D_VIDEO).clone()
    hp[:, :, 0, 0], hp[:, :, 0, 1] = hp[:, :, 0, 1].clone(), hp[:, :, 0, 0].clone()
    assert torch.allclose(net(x, t, lang, hp.reshape(2, V * G, D_VIDEO), hist), out, atol=1e-6)
    with pytest.raises(ValueError, match="must divide"):
        _net(True, pool=3)


def test_the_model_spec_builds_the_multiview_net_and_passes_the_history():
    layout = TokenLayout(32, 360, V * G, 28)
    video = {"dim": D_VIDEO, "depth": 1, "num_latents": 4, "heads": 1, "dim_head": 8, "ff_mult": 2, "dropout": 0.0}
    action = {"n_layer": 1, "n_head": 2, "n_embd": 16, "n_inner": 32, "dropout": 0.0}
    for foresight in (True, False):
        spec = ModelSpec(layout, D_CODE, 10, 4, 7, video, {**action, "views": V, "foresight": foresight,
                                                           "grid": [1, 4, 4], "pool": 1}, action_net="multiview")
        again = ModelSpec.from_dict(spec.to_dict())
        assert again == spec and again.action_net == "multiview"
        torch.manual_seed(0)
        model = VPDDModel(again).eval()
        model.video.set_codebook(torch.randn(32, D_CODE))
        assert isinstance(model.action, MultiViewActionNet) and model.action.foresight is foresight
        seen = {}
        model.action.register_forward_hook(lambda m, args, kwargs, out, seen=seen: seen.update(kwargs),
                                           with_kwargs=True)
        x = torch.full((2, layout.seq_len), layout.mask_id)
        history = torch.randint(0, 32, (2, V * G))
        with torch.no_grad():
            _, logits = model(x, torch.tensor([3, 50]), history, torch.randn(2, 10))
        assert logits.shape == (2, 28, 360)
        assert torch.equal(seen["history"], torch.nn.functional.embedding(history, model.video.codebook))
    with pytest.raises(ValueError, match="action_net"):
        ModelSpec(layout, D_CODE, 10, 4, 7, video, action, action_net="lstm")
    old = spec.to_dict()
    del old["action_net"]  # checkpoints written before the field existed load as the Meta-World net
    assert ModelSpec.from_dict({**old, "action": action}).action_net == "gpt2"
