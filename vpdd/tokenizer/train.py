"""Training of the video tokenizer: the VQ-VAE stage on the one training skeleton (:mod:`vpdd.runtime.skeleton`).

:func:`train_tokenizer` trains the VQ-VAE on a mix of robot episodes and actionless corpus videos
(:mod:`vpdd.tokenizer.data`); this module supplies the data, the model, one step, the held-out evaluation and
what a checkpoint holds, the skeleton the loop, resume, stop flag and logging. ``out`` is a complete
checkpoint directory at all times (:mod:`vpdd.runtime.checkpoint`):

* batches and the codebook's random draws depend only on ``(seed, rank, step)``, and the optimizer, EMA
  buffers, BatchNorm statistics, global RNG states and loss monitor are restored, so a resumed run ends in
  the same state as an uninterrupted one (bit for bit on the same machine and thread count);
* a non-finite loss, a loss above ``explode_factor`` times its running mean, or non-finite weights stop the
  run with :class:`~vpdd.runtime.guard.TrainingDiverged`; nothing is saved after the last good checkpoint;
* under torchrun every process trains on its own batches, DDP averages gradients, the codebook all-reduces
  its EMA statistics, and a checksum confirms the ranks agree at each checkpoint;
* rank 0 logs with DVCLive and writes the held-out reconstruction grid to ``live_dir/recon_grid.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.config.tokenizer import TokenizerConfig
from vpdd.data.episodes import DataFormatError
from vpdd.lineage import data_md5 as data_version
from vpdd.lineage import index_digest
from vpdd.runtime import distributed as dist_utils
from vpdd.runtime.checkpoint import load_checkpoint, save_checkpoint
from vpdd.runtime.fingerprint import code_digest
from vpdd.runtime.live import log_metrics
from vpdd.runtime.seeding import rng_state, set_rng_state
from vpdd.runtime.skeleton import Loop, Meter, Trainer, TrainResult
from vpdd.tokenizer import data as tdata
from vpdd.tokenizer.metrics import captioned_recon_grid, code_usage, psnr, ssim
from vpdd.tokenizer.model import VQVAE, to_model_input, to_uint8
from vpdd.tokenizer.pretrained import (
    RESUMABLE_KEYS,
    build_model,
    config_dict,
    config_from_checkpoint,
    differing_keys,
)
from vpdd.utils.io import atomic_write_png

log = logging.getLogger(__name__)

LOSS_EMA = 0.95  # smoothing of the loss monitor
LOSS_WARMUP = 10  # steps before the explosion test starts


def run_fingerprint(cfg: TokenizerConfig, robot, corpus, task_video=None) -> dict[str, Any]:
    """What makes two runs the same run: fixed config keys, data index digests, code digest."""
    fixed = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_KEYS}
    out = {
        "config": fixed,
        "robot": None if robot is None else index_digest(robot),
        "corpus": None if corpus is None else index_digest(corpus),
        "code": code_digest("tokenizer", "runtime"),
    }
    if task_video is not None:  # only when used, so runs without it keep their fingerprint
        out["task_video"] = index_digest(task_video)
    return out


def fingerprint_changes(saved_cfg: TokenizerConfig, saved: dict, cfg: TokenizerConfig, now: dict) -> list[str]:
    """Human-readable differences between a checkpoint's run and this one (empty: the same run)."""
    fixed = [k for k in saved_cfg.__dataclass_fields__ if k not in RESUMABLE_KEYS]
    diff = differing_keys(saved_cfg, cfg, fixed)
    for key, what in (("robot", "robot data index"), ("corpus", "corpus index"), ("code", "tokenizer code"),
                      ("task_video", "task video index")):
        if saved.get(key) != now.get(key):
            diff.append(f"{what} changed")
    return diff


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, 104729, step]).generate_state(1)[0])


@torch.no_grad()
def evaluate(model: VQVAE, clips: np.ndarray, batch_size: int, device: torch.device) -> tuple[dict, np.ndarray]:
    """Held-out metrics for uint8 clips (N, L, H, W, 3), and the uint8 reconstructions."""
    was_training = model.training
    model.eval()
    recons, codes, ps, ss = [], [], [], []
    for start in range(0, len(clips), batch_size):
        orig = torch.from_numpy(clips[start : start + batch_size])
        c = model.encode(to_model_input(orig.to(device)))
        r = to_uint8(model.decode(c)).cpu()
        recons.append(r.numpy())
        codes.append(c.cpu())
        ps.append(psnr(orig, r))
        ss.append(ssim(orig, r))
    model.train(was_training)
    usage = code_usage(torch.cat(codes), model.arch.n_codes)
    metrics = {
        "psnr": float(torch.cat(ps).mean()),
        "ssim": float(torch.cat(ss).mean()),
        "usage": usage["usage"],
        "perplexity": usage["perplexity"],
    }
    return metrics, np.concatenate(recons)


def train_tokenizer(
    cfg: TokenizerConfig,
    out: str | Path,
    robot: str | Path | None = None,
    corpus: str | Path | None = None,
    live_dir: str | Path | None = None,
    *,
    task_video: str | Path | None = None,
    resume: bool | str = "strict",
    device: str = "auto",
    data_dvc: str | Path | None = "data.dvc",
    step_hook: Callable[[int], None] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train (or resume training) the tokenizer; ``out`` ends as a complete checkpoint directory.

    ``resume``: ``"strict"`` (or True) continues a checkpoint in ``out`` of the same run and refuses one of a
    different run; ``"auto"`` starts over instead of refusing (what the DVC stage uses: its output persists);
    ``"never"`` (or False) always starts over. A run is the same when its fingerprint matches: every config
    key except the schedule/bookkeeping ones (``steps``, ``log_every``, ...), the digests of the data
    indexes and the tokenizer code (:func:`run_fingerprint`). ``step_hook(step)`` runs after each optimizer
    step (tests use it to inject a stop).
    """
    out = Path(out)
    mode = {True: "strict", False: "never"}[resume] if isinstance(resume, bool) else resume
    trainer = Trainer("tokenizer", out, resume=mode, device=device, live_dir=live_dir, progress=progress)
    info, dev = trainer.info, trainer.device
    if dev.type == "cpu":
        torch.set_flush_denormal(True)

    # -- data --------------------------------------------------------------------------------------------
    items: list[tdata.VideoItem] = []
    if robot is not None:
        robot_items = tdata.load_robot_items(robot)
        tdata.check_resolution(robot_items, cfg.resolution, "params tokenizer.resolution", robot)
        items += robot_items
    if task_video is not None:
        video_items = tdata.load_task_video_items(task_video)
        tdata.check_resolution(video_items, cfg.resolution, "params tokenizer.resolution", task_video)
        items = tdata.merge_robot_items(items, video_items, task_video)
    if corpus is not None:
        corpus_items, _ = tdata.load_corpus_items(corpus)
        tdata.check_resolution(corpus_items, cfg.resolution, "params tokenizer.resolution", corpus)
        items += corpus_items
    if not items:
        raise DataFormatError("tokenizer training needs a robot episode folder and/or an ingested corpus")
    train_items, heldout = tdata.split_heldout(items, cfg.heldout_fraction, cfg.seed)
    sampler = tdata.ClipSampler(train_items, cfg.clip_length, cfg.corpus_fraction, cfg.seed)
    eval_set = tdata.eval_clips(heldout, cfg.eval_clips, cfg.clip_length, cfg.seed)
    if info.is_main:
        counts = {s: sum(1 for i in train_items if i.source == s) for s in tdata.SOURCES}
        held = {s: sum(1 for i in heldout if i.source == s) for s in tdata.SOURCES}
        log.info("tokenizer data: train %s videos, held out %s, %d frames in memory (%.0f MB)", counts, held,
                 sum(len(i) for i in items), sum(i.frames.nbytes for i in items) / 2**20)

    # -- model, optimizer, resume -----------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    loss_ema = None
    fingerprint = run_fingerprint(cfg, robot, corpus, task_video)
    ckpt = None

    def changes() -> list[str]:
        nonlocal ckpt
        ckpt = load_checkpoint(out, training_state=True, map_location=dev)
        saved_cfg = config_from_checkpoint(ckpt.config, out)
        return fingerprint_changes(saved_cfg, ckpt.meta.get("fingerprint", {}), cfg, fingerprint)

    if trainer.same_run(changes):
        state = ckpt.training_state
        ema = {f"codebook.{k}": v for k, v in state["ema"].items()}
        model.load_state_dict({**ckpt.weights, **ema}, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        loss_ema = state.get("loss_ema")
        trainer.resumed(state["step"], state.get("elapsed_s", 0.0), cfg.steps)
    ddp_model = trainer.wrap(model)
    model.train()

    lineage = {
        "data_version": data_version(data_dvc),
        "robot": None if robot is None else {"root": str(robot), "index_sha256": index_digest(robot)},
        "corpus": None if corpus is None else {"root": str(corpus), "index_sha256": index_digest(corpus)},
        **({"task_video": {"root": str(task_video), "index_sha256": index_digest(task_video)}} if task_video else {}),
        "heldout": sorted(f"{i.source}:{i.key}" for i in heldout),
        "fingerprint": fingerprint,
    }

    def train_step(step: int, meter: Meter) -> None:
        nonlocal loss_ema
        clips = torch.from_numpy(sampler.sample(step, cfg.batch_size, info.rank)).to(dev)
        gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step))
        loss, out_info = ddp_model(to_model_input(clips), generator=gen)
        value = float(loss.detach())
        finite = math.isfinite(value)
        exploded = loss_ema is not None and loss_ema[1] >= LOSS_WARMUP and value > cfg.explode_factor * loss_ema[0]
        trainer.check(not finite or exploded, lambda: (
            f"step {step}: training loss {value:.4g} "
            + ("is not finite" if not finite else f"exceeds {cfg.explode_factor:g}x its running mean {loss_ema[0]:.4g}")
            + f" (on some rank); stopping. The last good checkpoint in {out} is kept; lower tokenizer.lr or check "
            "the data."))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_ema = _update_ema(loss_ema, value)
        meter.add("loss", value)
        meter.add("recon_loss", float(out_info["recon_loss"]))
        meter.add("commitment_loss", float(out_info["commitment_loss"]))
        meter.add("perplexity", float(out_info["perplexity"]))
        meter.add("psnr", float(psnr(clips.cpu(), to_uint8(out_info["x_hat"]).cpu()).mean()))

    def log_extra(n: int, seconds: float) -> dict[str, float]:
        alive = float((model.codebook.ema_count >= 1).float().mean())
        return {"codes_alive": alive, "clips_per_s": n * cfg.batch_size * info.world_size / max(seconds, 1e-9)}

    def save(step: int, metrics: dict[str, float]) -> None:
        trainer.check_weights(step, [p.detach() for p in model.parameters()] + [model.codebook.embeddings],
                              model.state_dict())
        if info.is_main:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "ema": model.ema_state_dict(),
                "rng": rng_state(),
                "loss_ema": loss_ema,
                "elapsed_s": trainer.elapsed(),
            }
            meta = {"step": step, "steps": cfg.steps, **trainer.versions(), **lineage, "metrics": metrics}
            save_checkpoint(out, config=config_dict(cfg), weights=model.inference_state_dict(), training_state=state,
                            meta=meta)
            log.info("checkpoint: %s at step %d", out, step)
        dist_utils.barrier(info)

    def run_eval(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if info.is_main:
            metrics, recons = evaluate(model, eval_set, cfg.encode_batch_size, dev)
            log_metrics(trainer.live, step, {f"eval/{k}": v for k, v in metrics.items()})
            log.info("step %d held-out: PSNR %.2f dB, SSIM %.4f, codes used %.1f%%, perplexity %.1f", step,
                     metrics["psnr"], metrics["ssim"], 100 * metrics["usage"], metrics["perplexity"])
            if trainer.live_dir is not None:
                n = min(4, len(eval_set))
                atomic_write_png(trainer.live_dir / "recon_grid.png", captioned_recon_grid(eval_set[:n], recons[:n]))
        dist_utils.barrier(info)
        return metrics

    def when_done(step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Nothing left to train: refresh the evaluation and the outputs."""
        metrics = run_eval(step)
        save(step, metrics)
        return metrics

    loop = Loop(steps=cfg.steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                train_step=train_step, save=save, log_extra=log_extra, evaluate=run_eval,
                eval_due=lambda step: step % cfg.eval_every == 0, record_train=False, postfix=("loss", "psnr"),
                when_done=when_done)
    return trainer.run(loop, step_hook)


def _update_ema(loss_ema, value: float):
    if loss_ema is None:
        return [value, 1]
    mean, n = loss_ema
    return [LOSS_EMA * mean + (1 - LOSS_EMA) * value, n + 1]
