"""The one switch: VPDD_KERNEL_IMPL over kernel.impl, auto = Triton on CUDA; the scheduler calls through it."""

from __future__ import annotations

import pytest
import torch
from vpdd_kernels import dispatch, loss

import vpdd.diffusion.scheduler as scheduler_module
from vpdd.diffusion.scheduler import MaskReplaceScheduler

from ._problems import LAYOUT, problem


def test_resolve_and_env_override(monkeypatch):
    assert dispatch.resolve_impl("auto", "cpu") == "torch"
    assert dispatch.resolve_impl("torch", "cuda") == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert dispatch.resolve_impl("torch", "cpu") == "triton"
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="VPDD_KERNEL_IMPL='cuda'"):
        dispatch.resolve_impl("auto")
    monkeypatch.delenv(dispatch.ENV_VAR)
    assert dispatch.ops_for("torch").loss_terms is loss.loss_terms
    assert dispatch.ops("triton").impl == "triton"
    with pytest.raises(ValueError, match="kernel.impl"):
        MaskReplaceScheduler(LAYOUT, kernel_impl="fastest")


def test_triton_unavailable_is_a_clear_error(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("Triton can launch here")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        dispatch.ops("triton")


def test_scheduler_through_the_switch(device):
    """The scheduler's fast path with kernel_impl=triton agrees with kernel_impl=torch (loss, gradient,
    posterior; noising and sampling produce valid tokens from the right modality)."""
    zv, za, x0, _ = problem(13, device)
    tri = MaskReplaceScheduler(LAYOUT, kernel_impl="triton", device=device)
    ref = MaskReplaceScheduler(LAYOUT, kernel_impl="torch", device=device)
    g = torch.Generator(device=device).manual_seed(0)
    t = torch.tensor([4, 71], device=device)
    xt = tri.add_noise(x0, t, g)
    assert LAYOUT.is_valid(xt)
    pt = torch.full((2,), 0.01, device=device)
    grads = []
    for s in (tri, ref):
        a, b = zv.clone().requires_grad_(), za.clone().requires_grad_()
        loss, _ = s.loss(a, b, x0, xt, t, pt, update_history=False)
        loss.backward()
        grads.append((loss.detach(), a.grad, b.grad))
    for u, v in zip(*grads, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-7)
    for u, v in zip(tri.posterior_log_probs(zv, za, xt, t), ref.posterior_log_probs(zv, za, xt, t), strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=2e-5)
    x_prev = tri.step(zv, za, xt, t, generator=g)
    assert LAYOUT.is_valid(x_prev)


@pytest.mark.parametrize("kernel_impl", ["triton", "torch"])
def test_config_value_picks_what_runs(monkeypatch, device, kernel_impl):
    """``from_config(..., kernel_impl=...)`` decides which implementation the scheduler calls (spied at the
    launchers), ``kernel_impl_for`` reports it, and ``VPDD_KERNEL_IMPL`` overrides the config value."""
    from vpdd_kernels import loss_triton, posterior, posterior_triton

    from vpdd.config.diffusion import DiffusionConfig

    calls: list[str] = []

    def spy(module, name, tag):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: calls.append(tag) or real(*a, **k))

    spy(loss_triton, "loss_terms", "triton")
    spy(posterior_triton, "posterior_log_probs", "triton")
    spy(loss, "loss_terms", "torch")
    spy(posterior, "posterior_log_probs", "torch")
    sched = MaskReplaceScheduler.from_config(DiffusionConfig(), LAYOUT, device=device, kernel_impl=kernel_impl)
    again = MaskReplaceScheduler.from_dict(sched.to_dict(), device=device, kernel_impl=kernel_impl)
    assert sched.kernel_impl_for() == again.kernel_impl_for(device) == kernel_impl
    zv, za, x0, xt = problem(15, device)
    t = torch.tensor([3, 40], device=device)
    sched.loss(zv, za, x0, xt, t, torch.full((2,), 0.01, device=device), update_history=False)
    again.posterior_log_probs(zv, za, xt, t)
    assert calls == [kernel_impl] * 4  # two modalities, two operations
    other = "torch" if kernel_impl == "triton" else "triton"
    monkeypatch.setenv(dispatch.ENV_VAR, other)
    assert sched.kernel_impl_for() == other
    assert MaskReplaceScheduler(LAYOUT, kernel_impl="auto").kernel_impl_for("cpu") == other
    monkeypatch.delenv(dispatch.ENV_VAR)
    assert MaskReplaceScheduler(LAYOUT).kernel_impl_for("cpu") == "torch"


@pytest.mark.parametrize("kernel_impl", ["triton", "torch"])
def test_the_kernel_impl_config_reaches_training_loading_and_the_records(monkeypatch, tmp_path, artefacts, synthetic,
                                                                        kernel_impl):
    """``kernel.impl`` (not only the environment variable) picks what the training scheduler and a loaded
    policy's scheduler run: the pre-training steps call the chosen implementation (spied at the dispatch),
    the checkpoint's meta.json records it, and loading with the other value switches it."""
    from vpdd.models.checkpoint import load_vpdd_checkpoint
    from vpdd.policy import VPDDPolicy
    from vpdd.runtime.checkpoint import load_checkpoint
    from vpdd.train.loop import train_stage

    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so "triton" is a valid choice on this CPU
    asked: list[str] = []
    real_ops = dispatch.ops

    def spy(impl):  # record the implementation asked for, run the PyTorch one (the interpreter is slow)
        asked.append(impl)
        return real_ops("torch")

    monkeypatch.setattr(scheduler_module, "ops", spy)
    cfg = synthetic.config(**{"pretrain.steps": 2, "kernel.impl": kernel_impl})
    train_stage("pretrain", cfg, out=tmp_path / "pre", tokens=artefacts["tokens"], tokenizer=artefacts["tokenizer"],
                params_file=None, progress=False)
    assert asked and set(asked) == {kernel_impl}
    assert load_checkpoint(tmp_path / "pre").meta["kernel_impl"] == kernel_impl
    other = "torch" if kernel_impl == "triton" else "triton"
    assert load_vpdd_checkpoint(tmp_path / "pre", kernel_impl=other).scheduler.kernel_impl_for() == other
    assert VPDDPolicy.from_pretrained(tmp_path / "pre", kernel_impl=other).scheduler.kernel_impl_for() == other
