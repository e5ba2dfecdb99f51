"""The two diffusion stages, actionless pre-training and few-demonstration fine-tuning, on the training skeleton.

:func:`train_stage` trains :class:`~vpdd.models.VPDDModel` with the unified discrete diffusion
(:class:`~vpdd.diffusion.MaskReplaceScheduler`; this module never does diffusion maths) on sequences from
the token cache (:mod:`vpdd.train.datasets`). The stage config decides what learns (``train``: video
and/or action network; everything else is frozen, in eval mode, under ``no_grad``):

* ``pretrain``: the Perceiver video network on robot + corpus video, no action network (the scheduler's
  all-zero action logits), writes a ``vpdd-pretrain`` checkpoint;
* ``finetune``: the pre-trained video network loaded (its EMA weights) and frozen, a new GPT-2 action
  network trained on ``demos_per_task`` demonstrations per task; the action discretizer is fitted on
  them; writes a ``vpdd-policy`` checkpoint (:mod:`vpdd.models.checkpoint` describes both layouts).

Per optimizer step: ``grad_accum`` micro-batches (DDP synchronises only on the last), a non-finite loss or
gradient check (:class:`~vpdd.runtime.guard.TrainingDiverged` before the update), Adam, then the EMA update
(copy before ``ema_start``, blend every ``ema_every`` steps). Every random draw of a micro-batch is seeded
from ``(seed, rank, step, micro)``; weights, EMA, optimizer and the scheduler's importance-sampling history
(per rank) are saved, so a resumed run ends bit-identical to an uninterrupted one on the same machine. The
run's fingerprint (configs except the cadence keys, tokenizer and token-cache identity, pre-trained model,
demonstrations, text encoder, world size, a digest of the training code) decides what may be resumed; the
skeleton (:class:`vpdd.runtime.skeleton.Trainer`) runs the loop, resume, stop flag and logging.

Benchmarks other than Meta-World plug in through :class:`StageHooks` (their own sequence source, action
network and lineage params; the RLBench stages use them); multi-view data multiplies the video tokens per
sequence by its ``views``. At the end rank 0 samples ``eval_samples`` sequences with the EMA weights:
video-token accuracy against the true future, overall and on the tokens that change (and, as a reference,
the accuracy of copying the history), action-bin accuracy and decoded L1 (fine-tuning), and an image grid
``live_dir/samples.png`` (per row: history window | true future | predicted future).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.diffusion import MaskReplaceScheduler, TokenLayout
from vpdd.models.checkpoint import (
    KIND_POLICY,
    KIND_PRETRAIN,
    check_pretrained_compatible,
    load_vpdd_checkpoint,
    read_vpdd_config,
    save_vpdd_checkpoint,
)
from vpdd.models.language import InstructionTable, build_text_encoder, encoder_identity
from vpdd.models.model import PARTS, ModelSpec, VPDDModel, diffusion_loss, sample_tokens
from vpdd.runtime import distributed as dist_utils
from vpdd.runtime.checkpoint import CheckpointError, checkpoint_hash, read_config
from vpdd.runtime.fingerprint import code_digest, fingerprint_changes, jsonable
from vpdd.runtime.live import log_metrics
from vpdd.runtime.seeding import step_seed
from vpdd.runtime.skeleton import Loop, Meter, Trainer, TrainResult
from vpdd.train.datasets import FinetuneData, PretrainData, SequenceBatch
from vpdd.train.ema import EMA

log = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune")
# keys of the stage config a resumed run may change (they do not change what the steps compute)
CADENCE_KEYS = ("steps", "log_every", "checkpoint_every", "eval_samples", "eval_stride")
# params.yaml keys each stage reads (the lineage params hash; the dvc.yaml params lists)
PARAM_KEYS = {
    "pretrain": ["model.video", "model.language", "model.actions", "diffusion", "pretrain"],
    "finetune": ["model", "diffusion", "finetune", "data.robot.tasks"],
}
# the source that defines what a training step computes (the fingerprint's code digest)
_CODE = ("models", "diffusion", "train/loop.py", "train/datasets.py", "train/ema.py", "runtime/skeleton.py",
         "runtime/seeding.py")


@dataclass
class StageHooks:
    """Benchmark-specific parts of a stage; the defaults are the Meta-World path.

    ``make_data(stage, cache, cfg, robot)`` returns the stage's sequence source with the interface of
    :class:`PretrainData` / :class:`FinetuneData` (``texts``, ``bind``, ``batch``, ``eval_batch``, ``pairs``;
    fine-tuning data also ``discretizer``, ``action_bins``, ``describe``; multi-view data ``views``, the
    number of token grids per sequence). ``action_net`` / ``action_options`` go to
    :meth:`ModelSpec.from_config`; ``param_keys`` are the params.yaml keys of the lineage record."""

    make_data: Callable[..., Any] | None = None
    action_net: str = "gpt2"
    action_options: dict[str, Any] | None = None
    param_keys: list[str] | None = None


def has_actions(data: Any) -> bool:
    """True for fine-tuning data (it carries an action discretizer)."""
    return getattr(data, "discretizer", None) is not None


def train_stage(
    stage: str,
    cfg,
    *,
    tokens: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    live_dir: str | Path | None = None,
    robot: str | Path | None = None,
    pretrained: str | Path | None = None,
    resume: str = "strict",
    device: str = "auto",
    params_file: str | None = "params.yaml",
    step_hook: Callable[[int, VPDDModel], None] | None = None,
    progress: bool | None = None,
    hooks: StageHooks | None = None,
) -> TrainResult:
    """Train ``stage`` ("pretrain" | "finetune") with the root config ``cfg``; ``out`` ends complete.

    ``step_hook(step, model)`` runs after each optimizer step (tests inject stops and faults with it);
    ``hooks`` replaces the Meta-World data and action network (another benchmark)."""
    from vpdd.tokenizer import TokenCache, load_tokenizer
    from vpdd.tokenizer.pretrained import config_dict

    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: expected one of {STAGES}")
    out, tokens, tokenizer = Path(out), Path(tokens), Path(tokenizer)
    scfg = getattr(cfg, stage)
    hooks = hooks or StageHooks()
    trainer = Trainer(stage, out, resume=resume, device=device, live_dir=live_dir, progress=progress)
    info, dev = trainer.info, trainer.device

    # -- tokens, tokenizer, layout ----------------------------------------------------------------------
    cache = TokenCache(tokens)
    cache.check_tokenizer(tokenizer)
    tok_hash = checkpoint_hash(tokenizer)
    vq, tok_cfg, _ = load_tokenizer(tokenizer)
    codebook = vq.codebook.embeddings.detach().clone().float()
    grid = cache.grid_shape
    act = cfg.model.actions
    if cache.n_codes != codebook.shape[0]:
        raise CheckpointError(f"{tokenizer}: {codebook.shape[0]} codes, but {tokens} says {cache.n_codes}")
    identity = encoder_identity(cfg.model.language)
    manifest_sha = hashlib.sha256((tokens / "manifest.json").read_bytes()).hexdigest()

    # -- data and the pre-trained model ----------------------------------------------------------------
    pre = None
    data: Any
    if hooks.make_data is not None:
        data = hooks.make_data(stage, cache, cfg, robot)
    elif stage == "finetune":
        if robot is None:
            raise ValueError("fine-tuning needs the robot episodes (their actions): pass --robot")
        data = FinetuneData(
            cache, robot, list(cfg.data.robot.tasks), scfg.demos_per_task, scfg.future_offset, act.n_bins, act.chunk,
            token_shift=scfg.token_shift,
        )
    else:
        data = PretrainData(cache, scfg, act.chunk * act.dim)
    views = int(getattr(data, "views", 1))
    layout = TokenLayout(cache.n_codes, act.n_bins, int(np.prod(grid)) * views, act.chunk * act.dim)
    if stage == "finetune" and scfg.init_from_pretrained:
        if pretrained is None:
            raise ValueError("finetune.init_from_pretrained is true: pass --pretrained (a pre-trained model)")
        pre_cfg = read_vpdd_config(pretrained, (KIND_PRETRAIN, KIND_POLICY))
        check_pretrained_compatible(
            pretrained, pre_cfg, layout=layout, tokenizer_hash=tok_hash, language=identity,
            video=dataclasses.asdict(cfg.model.video), code_dim=codebook.shape[1],
        )
        pre = load_vpdd_checkpoint(pretrained)

    extra_fp = {} if hooks.action_net == "gpt2" and not hooks.action_options else {
        "action_net": hooks.action_net, "action_options": hooks.action_options}
    fingerprint = jsonable({
        "stage": stage,
        "train": {k: v for k, v in dataclasses.asdict(scfg).items() if k not in CADENCE_KEYS},
        "model": dataclasses.asdict(cfg.model),
        "diffusion": dataclasses.asdict(cfg.diffusion),
        "tokenizer_hash": tok_hash,
        "token_cache_manifest_sha256": manifest_sha,
        "pretrained_hash": pre.checkpoint.meta.get("checkpoint_hash") if pre is not None else None,
        "demonstrations": data.describe() if has_actions(data) else None,
        **extra_fp,
        "text_encoder": identity,
        "world_size": info.world_size,
        "code_sha256": code_digest(*_CODE),
        "torch": torch.__version__,
    })

    # -- resume? ---------------------------------------------------------------------------------------
    state_ckpt = None
    if trainer.same_run(lambda: fingerprint_changes(read_config(out).get("fingerprint"), fingerprint)):
        state_ckpt = load_vpdd_checkpoint(out, training_state=True)
        saved_step = state_ckpt.checkpoint.training_state["step"]
        if saved_step > scfg.steps:
            if resume == "strict":
                raise CheckpointError(f"{out}: already at step {saved_step} > {stage}.steps={scfg.steps}; "
                                      "use --fresh to train a shorter run")
            log.warning("%s: at step %d > %d steps; starting over", out, saved_step, scfg.steps)
            state_ckpt = None

    # -- language ---------------------------------------------------------------------------------------
    base = state_ckpt or pre
    table = InstructionTable(identity["dim"]) if base is None else base.table
    table.set_encoder_factory(lambda: build_text_encoder(cfg.model.language))
    if info.is_main:
        table.add(data.texts())
    texts, vectors = dist_utils.broadcast_object((table.texts, table.vectors), info)
    table = InstructionTable(identity["dim"], texts, vectors)
    data.bind(table.index)
    text_vectors = table.vectors.to(dev)

    # -- model, optimizer, EMA, scheduler ----------------------------------------------------------------
    spec = ModelSpec.from_config(cfg.model, layout, codebook.shape[1], identity["dim"], stage == "finetune",
                                 action_net=hooks.action_net, action_options=hooks.action_options)
    torch.manual_seed(scfg.seed)
    model = VPDDModel(spec)
    model.video.set_codebook(codebook)
    if pre is not None:
        model.video.load_state_dict(pre.model.video.state_dict())
    model.freeze([p for p in PARTS if p not in scfg.train])
    model.to(dev)
    scheduler = MaskReplaceScheduler.from_config(cfg.diffusion, layout, device=dev, kernel_impl=cfg.kernel.impl)
    if scfg.aux_loss_weight is not None:  # the stage's own weight of the x0 term (training only)
        scheduler.aux_loss_weight = float(scfg.aux_loss_weight)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=scfg.lr, betas=(0.9, 0.999))
    ema = EMA(model, scfg.ema_decay, scfg.ema_every, scfg.ema_start)
    if state_ckpt is not None:
        st = state_ckpt.checkpoint.training_state
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        optimizer.load_state_dict(st["optimizer"])
        per_rank = st["scheduler"]
        scheduler.load_state_dict(per_rank[info.rank] if info.rank < len(per_rank) else per_rank[0])
        trainer.resumed(st["step"], st.get("elapsed_s", 0.0), scfg.steps)
    net = trainer.wrap(model)
    model.train()
    n_params = {p: sum(x.numel() for x in getattr(model, p).parameters()) for p in PARTS if getattr(model, p)}
    if info.is_main:
        log.info("%s: %s parameters, training %s; %s", stage, n_params, list(scfg.train), layout)

    lineage = (_lineage(out, stage, params_file, tok_hash, manifest_sha, cache, pre, hooks.param_keys,
                        scheduler.kernel_impl_for(dev))
               if info.is_main else None)
    base_config = {
        "kind": KIND_POLICY if stage == "finetune" else KIND_PRETRAIN,
        "stage": stage,
        "model": spec.to_dict(),
        "model_config": dataclasses.asdict(cfg.model),
        "scheduler": scheduler.to_dict(),
        "tokenizer": {"checkpoint_hash": tok_hash, "path": str(tokenizer), "config": config_dict(tok_cfg)},
        "language": {**identity, "config": dataclasses.asdict(cfg.model.language), "texts": table.texts},
        "actions": data.discretizer.to_dict() if has_actions(data) else None,
        "train": dataclasses.asdict(scfg),
        "data": {
            "token_cache": {"path": str(tokens), "manifest_sha256": manifest_sha, "grid_shape": list(grid),
                            "data_version": cache.data_version, "sources": cache.sources},
            "demonstrations": data.describe() if has_actions(data) else None,
        },
        "pretrained": None if pre is None else {"path": str(pretrained),
                                                "checkpoint_hash": pre.checkpoint.meta.get("checkpoint_hash")},
        "fingerprint": fingerprint,
        "provenance": _provenance(lineage, tok_hash, manifest_sha),
    }

    def save(step: int, metrics: dict[str, float]) -> None:
        trainer.check_weights(step, [p.detach() for p in model.trainable_parameters()], model.state_dict())
        sched_states = [scheduler.state_dict()]
        if info.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, {k: v.cpu() for k, v in scheduler.state_dict().items()})
            sched_states = gathered
        if info.is_main:
            state = {
                "step": step,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "ema": {k: v.cpu() for k, v in ema.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": [{k: v.cpu() for k, v in s.items()} for s in sched_states],
                "elapsed_s": trainer.elapsed(),
            }
            meta = {"step": step, "steps": scfg.steps, "stage": stage, **trainer.versions(), "metrics": metrics,
                    "parameters": n_params, "kernel_impl": scheduler.kernel_impl_for(dev)}
            save_vpdd_checkpoint(out, config=base_config, model_state=ema.averaged_state_dict(model),
                                 tokenizer_state=vq.inference_state_dict(), text_vectors=table.vectors,
                                 training_state=state, meta=meta, lineage=lineage)
            log.info("checkpoint: %s at step %d", out, step)
        dist_utils.barrier(info)

    params = model.trainable_parameters()

    def masked_video(batch: SequenceBatch) -> torch.Tensor | None:
        """All [MASK] as the network's video input when ``finetune.foresight`` is masked (else None)."""
        if getattr(scfg, "foresight", "noised_truth") != "masked":
            return None
        return torch.full_like(batch.history, layout.mask_id)

    def train_step(step: int, meter: Meter) -> None:
        """``grad_accum`` micro-batches (DDP synchronises on the last), the guard, Adam, the EMA."""
        values = []
        for micro in range(scfg.grad_accum):
            torch.manual_seed(step_seed(scfg.seed, info.rank, step, micro, 0))  # dropout
            gen = torch.Generator(device=dev).manual_seed(step_seed(scfg.seed, info.rank, step, micro, 1))
            batch = data.batch(scfg.batch_size, scfg.seed, info.rank, step, micro).to(dev)
            sync = info.enabled and micro < scfg.grad_accum - 1
            with net.no_sync() if sync else nullcontext():
                loss, linfo = diffusion_loss(net, scheduler, batch.x0(layout), batch.history,
                                             text_vectors[batch.lang_ids], gen, video=masked_video(batch))
                (loss / scfg.grad_accum).backward()
            values.append(float(loss.detach()))
            for k in ("kl_loss", "kl_video", "kl_action", "aux"):
                meter.add(k, float(linfo[k]) / scfg.grad_accum)
        grads = [p.grad for p in params if p.grad is not None]
        gnorm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
        trainer.check(not all(math.isfinite(v) for v in values) or not math.isfinite(gnorm), lambda: (
            f"step {step}: loss {values} / gradient norm {gnorm} not finite (on some rank); stopping before the "
            f"update. {out} keeps the last good checkpoint; lower {stage}.lr or check data"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, step + 1)
        meter.add("loss", sum(values) / len(values))
        meter.add("grad_norm", gnorm)

    def evaluate(step: int) -> dict[str, float]:
        if not info.is_main or scfg.eval_samples <= 0:
            return {}
        metrics = _evaluate(model, ema, spec, scheduler, data, text_vectors, vq, layout, scfg, dev,
                            trainer.live_dir)
        log_metrics(trainer.live, step, metrics)
        return metrics

    def rates(n: int, seconds: float) -> dict[str, float]:
        seq = n * scfg.batch_size * scfg.grad_accum * info.world_size
        return {"seq_per_s": seq / max(seconds, 1e-9), "s_per_step": seconds / n}

    def when_done(step: int, metrics: dict[str, float]) -> dict[str, float]:
        return dict(state_ckpt.checkpoint.meta.get("metrics", {})) if state_ckpt is not None else metrics

    loop = Loop(steps=scfg.steps, log_every=scfg.log_every, checkpoint_every=scfg.checkpoint_every,
                train_step=train_step, save=save, log_extra=rates, evaluate=evaluate, when_done=when_done)
    return trainer.run(loop, None if step_hook is None else lambda step: step_hook(step, model))


def _lineage(out: Path, stage: str, params_file: str | None, tok_hash: str, manifest_sha: str, cache,
             pre, param_keys: list[str] | None = None, kernel_impl: str | None = None) -> dict[str, Any] | None:
    """The vpdd.lineage record of ``out`` (None when the lineage module cannot build one here)."""
    try:
        from vpdd.lineage import build_lineage

        extra = {"tokenizer_hash": tok_hash, "token_cache_manifest_sha256": manifest_sha,
                 "token_cache_data_version": cache.data_version,
                 "pretrained_hash": pre.checkpoint.meta.get("checkpoint_hash") if pre is not None else None}
        return build_lineage(out, stage=stage, params_file=params_file or "params.yaml",
                             params_keys=param_keys or PARAM_KEYS[stage], kernel_impl=kernel_impl, extra=extra)
    except Exception as err:  # lineage is a record, not a reason to lose a training run
        log.warning("lineage record not built (%s)", err)
        return None


def _provenance(lineage: dict[str, Any] | None, tok_hash: str, manifest_sha: str) -> dict[str, Any]:
    lineage = lineage or {}
    return {
        "git": lineage.get("git"),
        "params_sha256": (lineage.get("params") or {}).get("sha256"),
        "data_md5": (lineage.get("data") or {}).get("md5"),
        "tokenizer_hash": tok_hash,
        "token_cache_manifest_sha256": manifest_sha,
    }


@torch.no_grad()
def _evaluate(model, ema, spec, scheduler, data, text_vectors, vq, layout, scfg, dev, live_path) -> dict[str, float]:
    """Sample ``eval_samples`` training sequences with the EMA weights (one reverse chain, stride ``eval_stride``)."""
    infer = VPDDModel(spec)
    infer.load_state_dict(ema.averaged_state_dict(model))
    infer.to(dev).eval()
    batch = data.eval_batch(scfg.eval_samples, scfg.seed).to(dev)
    gen = torch.Generator(device=dev).manual_seed(scfg.seed + 17)
    stride = min(scfg.eval_stride, scheduler.num_timesteps)
    masked = torch.full_like(batch.history, layout.mask_id) if getattr(scfg, "foresight", "") == "masked" else None
    x = sample_tokens(infer, scheduler, batch.history, text_vectors[batch.lang_ids], gen, stride=stride,
                      video=masked)
    video, action = layout.split(x)
    out = {
        "eval/video_token_acc": float((video == batch.target).float().mean()),
        "eval/copy_history_token_acc": float((batch.history == batch.target).float().mean()),
    }
    changed = batch.history != batch.target  # where copying the history is wrong by definition
    out["eval/changed_token_fraction"] = float(changed.float().mean())
    if changed.any():
        out["eval/video_changed_token_acc"] = float((video == batch.target)[changed].float().mean())
    if has_actions(data):
        bins = layout.tokens_to_actions(action).cpu().numpy()
        true = batch.actions.cpu().numpy()
        disc = data.discretizer
        err = np.abs(disc.decode_chunk(bins) - disc.decode_chunk(true))
        majority = np.stack([np.bincount(c, minlength=disc.n_bins).argmax() for c in data.action_bins.T])
        out.update({
            "eval/action_bin_acc": float((bins == true).mean()),
            "eval/majority_bin_acc": float((true == majority[None]).mean()),
            "eval/action_l1": float(err.mean()),
            "eval/action_l1_first_step": float(err[:, 0].mean()),
        })
    if live_path is not None:
        _write_grid(live_path / "samples.png", vq, batch.history, batch.target, video, data, dev)
    log.info("evaluation (%d sampled sequences, stride %d): %s", len(batch.history), stride,
             ", ".join(f"{k[5:]} {v:.4f}" for k, v in out.items()))
    return out


def _write_grid(path: Path, vq, history, target, predicted, data, dev) -> None:
    from vpdd.tokenizer.model import to_uint8
    from vpdd.utils.figures import caption_grid
    from vpdd.utils.io import atomic_write_png

    grid = data.pairs.source.tokens.shape[1:] if hasattr(data, "pairs") else None
    if grid is None:
        grid = next(iter(data.sources.values())).source.tokens.shape[1:]
    views = int(getattr(data, "views", 1))  # multi-view sequences: the views side by side
    n = min(4, len(history))
    vq = vq.to(dev)
    rows = []
    for codes in (history[:n], target[:n], predicted[:n]):
        frames = to_uint8(vq.decode(codes.reshape(n * views, *grid))).cpu().numpy()  # (n * V, T, H, W, 3)
        rows.append(frames.reshape(n, views * frames.shape[1], *frames.shape[2:]))
    tiles = [np.concatenate([np.concatenate(list(r[i]), axis=1) for r in rows], axis=1) for i in range(n)]
    widths = [r.shape[1] * r.shape[3] for r in rows]  # (views x frames) x W per block
    edges = np.cumsum([0, *widths])
    labels = ("history", "truth (future)", "prediction")
    columns = [(int(edges[k]), int(edges[k + 1]), labels[k]) for k in range(3)]
    atomic_write_png(path, caption_grid(np.concatenate(tiles, axis=0), "one sequence per row:", columns=columns))
