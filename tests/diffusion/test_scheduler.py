"""The scheduler object: config round trips, importance sampling state, layout, the config group."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from vpdd.config import compose, config_from_dict
from vpdd.config.base import validate_tree
from vpdd.config.diffusion import DiffusionConfig
from vpdd.diffusion import MaskReplaceScheduler, TokenLayout


def test_to_dict_round_trips_through_json(small_layout):
    sched = MaskReplaceScheduler(small_layout, num_timesteps=40, truncation_r=0.7, sampling_stride=4, impl="reference")
    data = json.loads(json.dumps(sched.to_dict()))
    again = MaskReplaceScheduler.from_dict(data)
    assert again.to_dict() == sched.to_dict()
    assert again.layout == small_layout and again.impl == "reference"
    with pytest.raises(ValueError, match="unknown keys"):
        MaskReplaceScheduler.from_dict({**data, "beta": 1})


@pytest.mark.parametrize("preset, sizes", [("tiny", (256, 48, 256, 16)), ("paper", (2048, 48, 576, 16))])
def test_from_config_uses_the_tokenizer_and_action_sizes(repo_root, preset, sizes):
    cfg = config_from_dict(compose([f"preset={preset}"], conf_dir=repo_root / "conf"))
    layout = TokenLayout.from_config(cfg)
    assert (
        layout.n_video_codes,
        layout.n_action_bins,
        layout.n_video_tokens,
        layout.n_action_tokens,
    ) == sizes
    assert layout.num_classes == sizes[0] + sizes[1] + 1 and layout.mask_id == sizes[0] + sizes[1]
    sched = MaskReplaceScheduler.from_config(cfg.diffusion, layout)
    assert sched.num_timesteps == cfg.diffusion.num_timesteps and sched.truncation_r == cfg.diffusion.truncation_r


def test_default_yaml_is_in_sync_with_the_schema(repo_root):
    data = yaml.safe_load((repo_root / "conf" / "diffusion" / "default.yaml").read_text())
    assert data == dataclasses.asdict(DiffusionConfig())
    assert validate_tree(DiffusionConfig()) == []


@pytest.mark.parametrize(
    "field, value, key",
    [
        ("att_1", 0.999991, "ctt_1"),  # no replace mass left
        ("impl", "triton", "impl"),
        ("sampling_stride", 101, "sampling_stride"),
    ],
)
def test_config_rejects_bad_values(field, value, key):
    problems = validate_tree(dataclasses.replace(DiffusionConfig(), **{field: value}))
    assert any(p.startswith(f"{key}=") for p in problems), problems


def test_importance_sampling_resumes_exactly(small_layout):
    sched = MaskReplaceScheduler(small_layout, num_timesteps=10)
    t, pt = sched.sample_timesteps(8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(pt, torch.full((8,), 0.1))  # uniform until every t was seen > 10 times
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        t = torch.randint(0, 10, (8,), generator=gen)
        sched._update_history(t, torch.rand(8, generator=gen) * (t + 1))
    assert bool((sched.Lt_count > 10).all())
    restored = MaskReplaceScheduler(small_layout, num_timesteps=10)
    restored.load_state_dict(sched.state_dict())
    a = sched.sample_timesteps(64, torch.Generator().manual_seed(3))
    b = restored.sample_timesteps(64, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[1], torch.full_like(a[1], 0.1))  # importance weights are in use
    p_all = torch.sqrt(sched.Lt_history + 1e-10) + 1e-4
    p_all[0] = p_all[1]
    torch.testing.assert_close(a[1], (p_all / p_all.sum())[a[0]])


def test_history_update_matches_a_sequential_scatter(small_layout):
    sched = MaskReplaceScheduler(small_layout, num_timesteps=5)
    sched.Lt_history[:] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    t = torch.tensor([2, 0, 2, 4])
    kl = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sched._update_history(t, kl)
    want = torch.tensor([0.9 * 1 + 0.1 * 4, 2.0, 0.9 * 3 + 0.1 * 9, 4.0, 0.9 * 5 + 0.1 * 16])
    torch.testing.assert_close(sched.Lt_history, want)  # for t = 2 the later sample wins
    torch.testing.assert_close(sched.Lt_count, torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0]))


def test_loss_updates_history_and_reports_diagnostics(small_layout):
    sched = MaskReplaceScheduler(small_layout)
    x0 = torch.tensor([[0, 5, 11, 3, 3, 7, 12, 16, 14]] * 4)
    t = torch.tensor([0, 10, 50, 99])
    x_t = sched.add_noise(x0, t, torch.Generator().manual_seed(0))
    video = torch.randn(4, 6, 12, requires_grad=True)
    loss, info = sched.loss(video, None, x0, x_t, t, torch.full((4,), 0.01))
    loss.backward()
    assert torch.isfinite(loss) and video.grad is not None and video.grad.abs().sum() > 0
    assert info["kl_per_token"].shape == (4, small_layout.seq_len)
    assert sched.Lt_count[t].tolist() == [1.0] * 4 and (sched.Lt_history[t] > 0).all()


def test_scheduler_rejects_bad_arguments(small_layout):
    with pytest.raises(ValueError, match="impl"):
        MaskReplaceScheduler(small_layout, impl="triton")
    with pytest.raises(ValueError, match="replace mass"):
        MaskReplaceScheduler(small_layout, att_1=0.99999, ctt_1=0.00001)
    with pytest.raises(ValueError, match="n_video_codes"):
        TokenLayout(0, 4, 3, 2)
    with pytest.raises(ValueError, match="shape"):
        MaskReplaceScheduler(small_layout, num_timesteps=5).load_state_dict(
            {"Lt_history": torch.zeros(4), "Lt_count": torch.zeros(4)}
        )


def test_layout_local_global_conversion(small_layout):
    x = torch.tensor([[0, 11, small_layout.mask_id, 3, 4, 5, 12, small_layout.mask_id, 16]])
    v, a = small_layout.split(x)
    for m, part in ((0, v), (1, a)):
        local = small_layout.to_local(part, m)
        assert int(local.max()) <= small_layout.n_codes(m)
        assert torch.equal(small_layout.from_local(local, m), part)
    assert small_layout.is_valid(x)
    assert not small_layout.is_valid(torch.tensor([[12, 0, 0, 0, 0, 0, 12, 12, 12]]))  # action code at a video slot
