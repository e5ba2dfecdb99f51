"""Training loop of the video tokenizer: resumable, DDP-ready, guarded against divergence.

One call, :func:`train_tokenizer`, trains the VQ-VAE on a mix of robot episodes and actionless corpus
videos (:mod:`vpdd.tokenizer.data`) and keeps ``out`` a complete checkpoint directory at all times:

* every ``checkpoint_every`` steps and at the end, rank 0 saves config, weights and training state
  atomically (:mod:`vpdd.train.checkpoint`); a run started again with the same ``out`` resumes from it.
  Batches and the codebook's random draws depend only on ``(seed, rank, step)``, and the optimizer, EMA
  buffers, BatchNorm statistics and loss monitor are restored, so a resumed run ends in the same state as
  an uninterrupted one (bit for bit on the same machine and thread count);
* a non-finite loss, a loss above ``explode_factor`` times its running mean, or non-finite weights stop
  the run with :class:`TrainingDiverged`; nothing is saved after the last good checkpoint;
* SIGTERM/SIGINT finish the current step, save a checkpoint and raise :class:`TrainingInterrupted`;
* under torchrun every process trains on its own batches, DDP averages gradients, the codebook all-reduces
  its EMA statistics, and a checksum confirms the ranks agree at each checkpoint;
* rank 0 logs with DVCLive (``live_dir/metrics.json``, ``live_dir/plots/metrics``) and writes the held-out
  reconstruction grid to ``live_dir/recon_grid.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.config.tokenizer import TokenizerConfig
from vpdd.data.episodes import DataFormatError
from vpdd.lineage import data_md5 as data_version
from vpdd.lineage import index_digest
from vpdd.tokenizer import data as tdata
from vpdd.tokenizer.fingerprint import code_digest
from vpdd.tokenizer.metrics import code_usage, psnr, recon_grid, ssim
from vpdd.tokenizer.model import VQVAE, to_model_input, to_uint8
from vpdd.tokenizer.pretrained import (
    RESUMABLE_KEYS,
    build_model,
    config_dict,
    config_from_checkpoint,
    differing_keys,
)
from vpdd.train import distributed as dist_utils
from vpdd.train.checkpoint import (
    CheckpointError,
    has_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vpdd.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

LOSS_EMA = 0.95  # smoothing of the loss monitor
LOSS_WARMUP = 10  # steps before the explosion test starts


RESUME_MODES = ("strict", "auto", "never")


def run_fingerprint(cfg: TokenizerConfig, robot, corpus) -> dict[str, Any]:
    """What makes two runs the same run: fixed config keys, data index digests, code digest."""
    fixed = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_KEYS}
    return {
        "config": fixed,
        "robot": None if robot is None else index_digest(robot),
        "corpus": None if corpus is None else index_digest(corpus),
        "code": code_digest(),
    }


def fingerprint_changes(saved_cfg: TokenizerConfig, saved: dict, cfg: TokenizerConfig, now: dict) -> list[str]:
    """Human-readable differences between a checkpoint's run and this one (empty: the same run)."""
    fixed = [k for k in saved_cfg.__dataclass_fields__ if k not in RESUMABLE_KEYS]
    diff = differing_keys(saved_cfg, cfg, fixed)
    for key, what in (("robot", "robot data index"), ("corpus", "corpus index"), ("code", "tokenizer code")):
        if saved.get(key) != now[key]:
            diff.append(f"{what} changed")
    return diff


class TrainingDiverged(RuntimeError):
    """The loss or the weights became non-finite or exploded; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: a checkpoint was saved at the step named in the message; run again to resume."""


@dataclass
class TrainResult:
    out: Path
    step: int
    resumed_from: int | None
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, 104729, step]).generate_state(1)[0])


def _truncate_live(live_dir: Path, step: int) -> None:
    """Drop DVCLive plot rows logged after ``step`` (they are replayed by the resumed run)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        rows = list(csv.reader(tsv.read_text().splitlines(), delimiter="\t"))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        col = header.index("step") if "step" in header else None
        if col is None:
            continue
        kept = [r for r in body if r and int(r[col]) <= step]
        text = "\n".join("\t".join(r) for r in [header, *kept]) + "\n"
        tsv.write_text(text)


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


def _png_bytes(image: np.ndarray, scale: int = 2) -> bytes:
    from PIL import Image

    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received signal %d: finishing this step and saving a checkpoint", signum)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def _open_live(live_dir: Path | None, resumed_step: int | None):
    if live_dir is None:
        return None
    from dvclive import Live

    if resumed_step is not None and live_dir.exists():
        _truncate_live(live_dir, resumed_step)
        return Live(str(live_dir), resume=True, save_dvc_exp=False, dvcyaml=False)
    return Live(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=False)


def _log(live, step: int, values: dict[str, float]) -> None:
    if live is None:
        return
    live.step = step
    for k, v in values.items():
        live.log_metric(k, float(v))


def train_tokenizer(
    cfg: TokenizerConfig,
    out: str | Path,
    robot: str | Path | None = None,
    corpus: str | Path | None = None,
    live_dir: str | Path | None = None,
    *,
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
    live_path = Path(live_dir) if live_dir is not None else None
    info = dist_utils.init_distributed(device)
    dev = info.device
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    t_start = time.time()

    # -- data --------------------------------------------------------------------------------------------
    items: list[tdata.VideoItem] = []
    if robot is not None:
        robot_items = tdata.load_robot_items(robot)
        tdata.check_resolution(robot_items, cfg.resolution, "params tokenizer.resolution", robot)
        items += robot_items
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
        log.info(
            "tokenizer data: train %s videos, held out %s, %d frames in memory (%.0f MB)",
            counts,
            held,
            sum(len(i) for i in items),
            sum(i.frames.nbytes for i in items) / 2**20,
        )

    # -- model, optimizer, resume -----------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    start_step, resumed_from, loss_ema, elapsed_before = 0, None, None, 0.0
    mode = {True: "strict", False: "never"}.get(resume, resume) if isinstance(resume, bool) else resume
    if mode not in RESUME_MODES:
        raise ValueError(f"resume={resume!r}: expected one of {RESUME_MODES} (or True/False)")
    fingerprint = run_fingerprint(cfg, robot, corpus)
    if info.is_main and mode != "never":
        has_checkpoint(out)  # rank 0 finishes an interrupted save (if any) before anyone reads
    dist_utils.barrier(info)
    if mode != "never" and (out / "meta.json").is_file():
        ckpt = load_checkpoint(out, training_state=True, map_location=dev)
        diff = fingerprint_changes(
            config_from_checkpoint(ckpt.config, out), ckpt.meta.get("fingerprint", {}), cfg, fingerprint
        )
        if diff and mode == "strict":
            raise CheckpointError(
                f"{out}: cannot resume, the checkpoint belongs to a different run ("
                + "; ".join(diff)
                + "). Use a new --out, --fresh to start over, or --restart-if-changed."
            )
        if diff:
            log.warning("%s holds a different run (%s): starting over", out, "; ".join(diff))
        else:
            state = ckpt.training_state
            ema = {f"codebook.{k}": v for k, v in state["ema"].items()}
            model.load_state_dict({**ckpt.weights, **ema}, strict=True)
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            start_step, resumed_from = int(state["step"]), int(state["step"])
            loss_ema, elapsed_before = state.get("loss_ema"), float(state.get("elapsed_s", 0.0))
            if info.is_main:
                log.info("resuming %s from step %d of %d", out, start_step, cfg.steps)
    ddp_model: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    model.train()

    lineage = {
        "data_version": data_version(data_dvc),
        "robot": None if robot is None else {"root": str(robot), "index_sha256": index_digest(robot)},
        "corpus": None if corpus is None else {"root": str(corpus), "index_sha256": index_digest(corpus)},
        "heldout": sorted(f"{i.source}:{i.key}" for i in heldout),
        "fingerprint": fingerprint,
    }
    live = _open_live(live_path, resumed_from) if info.is_main else None

    def save(step: int, metrics: dict[str, float] | None = None) -> None:
        tensors = [p.detach() for p in model.parameters()] + [model.codebook.embeddings]
        dist_utils.check_in_sync(tensors, info)
        if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
            raise TrainingDiverged(
                f"step {step}: the weights are not finite; not saving. The last good checkpoint in {out} is kept."
            )
        if info.is_main:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "ema": model.ema_state_dict(),
                "rng": rng_state(),
                "loss_ema": loss_ema,
                "elapsed_s": elapsed_before + time.time() - t_start,
            }
            meta = {
                "step": step,
                "steps": cfg.steps,
                "world_size": info.world_size,
                "torch": torch.__version__,
                "python": sys.version.split()[0],
                **lineage,
                "metrics": metrics or {},
            }
            save_checkpoint(
                out,
                config=config_dict(cfg),
                weights=model.inference_state_dict(),
                training_state=state,
                meta=meta,
            )
            log.info("checkpoint: %s at step %d", out, step)
        dist_utils.barrier(info)

    def run_eval(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if info.is_main:
            metrics, recons = evaluate(model, eval_set, cfg.encode_batch_size, dev)
            _log(live, step, {f"eval/{k}": v for k, v in metrics.items()})
            log.info(
                "step %d held-out: PSNR %.2f dB, SSIM %.4f, codes used %.1f%%, perplexity %.1f",
                step,
                metrics["psnr"],
                metrics["ssim"],
                100 * metrics["usage"],
                metrics["perplexity"],
            )
            if live_path is not None:
                n = min(4, len(eval_set))
                atomic_write_bytes(live_path / "recon_grid.png", _png_bytes(recon_grid(eval_set[:n], recons[:n])))
        dist_utils.barrier(info)
        return metrics

    # -- loop -------------------------------------------------------------------------------------------
    from tqdm import tqdm

    show = info.is_main and (sys.stderr.isatty() if progress is None else progress)
    bar = tqdm(total=cfg.steps, initial=start_step, desc="tokenizer", unit="step", disable=not show)
    last_metrics: dict[str, float] = {}
    acc = {"loss": 0.0, "recon": 0.0, "commit": 0.0, "perplexity": 0.0, "psnr": 0.0, "n": 0}
    t_log = time.time()
    step = start_step
    try:
        with _StopFlag() as stop:
            while step < cfg.steps:
                clips = torch.from_numpy(sampler.sample(step, cfg.batch_size, info.rank)).to(dev)
                x = to_model_input(clips)
                gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step))
                loss, out_info = ddp_model(x, generator=gen)
                value = float(loss.detach())
                bad = not math.isfinite(value) or (
                    loss_ema is not None and loss_ema[1] >= LOSS_WARMUP and value > cfg.explode_factor * loss_ema[0]
                )
                if dist_utils.any_true(bad, info):
                    reason = (
                        "is not finite"
                        if not math.isfinite(value)
                        else f"exceeds {cfg.explode_factor:g}x its running mean {loss_ema[0]:.4g}"
                    )
                    raise TrainingDiverged(
                        f"step {step}: training loss {value:.4g} {reason} (on some rank); stopping. The last "
                        f"good checkpoint in {out} is kept; lower tokenizer.lr or check the data."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_ema = _update_ema(loss_ema, value)
                step += 1
                bar.update(1)

                acc["loss"] += value
                acc["recon"] += float(out_info["recon_loss"])
                acc["commit"] += float(out_info["commitment_loss"])
                acc["perplexity"] += float(out_info["perplexity"])
                acc["psnr"] += float(psnr(clips.cpu(), to_uint8(out_info["x_hat"]).cpu()).mean())
                acc["n"] += 1
                if step % cfg.log_every == 0 or step == cfg.steps:
                    n, now = acc["n"], time.time()
                    alive = float((model.codebook.ema_count >= 1).float().mean())
                    values = {
                        "train/loss": acc["loss"] / n,
                        "train/recon_loss": acc["recon"] / n,
                        "train/commitment_loss": acc["commit"] / n,
                        "train/perplexity": acc["perplexity"] / n,
                        "train/psnr": acc["psnr"] / n,
                        "train/codes_alive": alive,
                        "train/clips_per_s": n * cfg.batch_size * info.world_size / max(now - t_log, 1e-9),
                    }
                    if info.is_main:
                        _log(live, step, values)
                        bar.set_postfix(loss=f"{values['train/loss']:.3f}", psnr=f"{values['train/psnr']:.1f}")
                        log.debug("step %d %s", step, values)
                    acc = dict.fromkeys(acc, 0.0)
                    acc["n"] = 0
                    t_log = now
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    last_metrics = run_eval(step)
                stopping = dist_utils.any_true(stop.signal is not None, info)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
                    save(step, last_metrics)
                if stopping:
                    raise TrainingInterrupted(
                        f"stopped by a signal at step {step}; checkpoint saved in {out}; "
                        "run the same command again to resume"
                    )
                if step_hook is not None:
                    step_hook(step)
            if start_step >= cfg.steps:  # nothing left to train: refresh the evaluation and outputs
                last_metrics = run_eval(step)
                save(step, last_metrics)
    finally:
        bar.close()
        if live is not None:
            live.make_summary()
    seconds = elapsed_before + time.time() - t_start
    if live is not None:
        live.summary["train_seconds"] = round(seconds, 2)
        live.summary["steps"] = step
        live.make_summary()
        live.end()
    dist_utils.barrier(info)
    dist_utils.cleanup(info)
    return TrainResult(out=out, step=step, resumed_from=resumed_from, seconds=seconds, metrics=last_metrics)


def _update_ema(loss_ema, value: float):
    if loss_ema is None:
        return [value, 1]
    mean, n = loss_ema
    return [LOSS_EMA * mean + (1 - LOSS_EMA) * value, n + 1]
