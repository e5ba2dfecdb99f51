"""Training of the behaviour-cloning baseline on the one training skeleton (:mod:`vpdd.runtime.skeleton`).

:func:`train_bc` reads the demonstrations VPDD fine-tunes on (:class:`~vpdd.bc.data.BCData`), trains
:class:`~vpdd.bc.model.BCNet` with AdamW on the cross-entropy of the action bins, and writes a ``vpdd-bc``
checkpoint directory. The skeleton runs the loop, resume, stop flag, logging (DVCLive: ``train/loss``,
``train/action_bin_acc``, ``train/grad_norm``, ``eval/*``) and the checkpoint cadence; this module supplies:

* exact resume: a batch and its random shift depend only on ``(seed, rank, step)``; weights and the
  optimizer are saved, so a resumed run ends bit-identical to an uninterrupted one on the same machine.
  A run is the same when its fingerprint matches (every ``bc`` key except the cadence ones, the actions
  config, window and render settings, the demonstrations and their index digest, the code, world size);
* the divergence guard: a non-finite loss or gradient norm stops the run before the update
  (:class:`~vpdd.runtime.guard.TrainingDiverged` on every rank), and non-finite weights are never saved;
* the evaluation every ``eval_every`` steps: action-bin accuracy, the majority-bin reference and the decoded
  L1 on the held-out demonstration steps (``bc.heldout_steps``; none: no evaluation metrics).
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

from vpdd.bc.data import BCData
from vpdd.bc.model import BCNet, BCSpec, random_shift, save_bc_checkpoint, to_input
from vpdd.bc.policy import bc_loss
from vpdd.lineage import index_digest
from vpdd.runtime import distributed as dist_utils
from vpdd.runtime.checkpoint import load_checkpoint, read_config
from vpdd.runtime.fingerprint import code_digest, fingerprint_changes, jsonable
from vpdd.runtime.live import log_metrics
from vpdd.runtime.seeding import step_seed
from vpdd.runtime.skeleton import Loop, Meter, Trainer, TrainResult

log = logging.getLogger(__name__)

# bc keys a resumed run may change (they do not change what the steps compute)
CADENCE_KEYS = ("steps", "log_every", "checkpoint_every", "eval_every")
# params.yaml keys the stage reads (the lineage params hash; the dvc.yaml params list)
PARAM_KEYS = ["bc", "finetune.demos_per_task", "data.robot.tasks", "model.actions", "env",
              "tokenizer.encode_window"]
_CODE = ("bc", "models/actions.py", "runtime/skeleton.py", "runtime/seeding.py")
ENV_KEYS = ("camera", "resolution", "flip", "crop")


def train_bc(cfg, *, robot: str | Path, out: str | Path, live_dir: str | Path | None = None, resume: str = "strict",
             device: str = "auto", params_file: str | None = "params.yaml",
             step_hook: Callable[[int], None] | None = None, progress: bool | None = None) -> TrainResult:
    """Train (or resume) the BC baseline with the root config ``cfg``; ``out`` ends a complete checkpoint."""
    bcfg, act = cfg.bc, cfg.model.actions
    out = Path(out)
    trainer = Trainer("bc", out, resume=resume, device=device, live_dir=live_dir, progress=progress)
    info, dev = trainer.info, trainer.device
    data = BCData(robot, list(cfg.data.robot.tasks), cfg.finetune.demos_per_task, act.n_bins, act.chunk,
                  cfg.tokenizer.encode_window, cfg.env.resolution, bcfg.heldout_steps, bcfg.seed)
    if data.discretizer.dim != act.dim:
        raise ValueError(f"{robot}: actions have {data.discretizer.dim} dimensions, model.actions.dim is {act.dim}")
    spec = BCSpec(window=cfg.tokenizer.encode_window, resolution=cfg.env.resolution,
                  channels=[int(c) for c in bcfg.channels], hidden=bcfg.hidden, n_tasks=len(data.tasks),
                  chunk=act.chunk, action_dim=act.dim, n_bins=act.n_bins)
    env = {k: getattr(cfg.env, k) for k in ENV_KEYS}
    fingerprint = jsonable({
        "train": {k: v for k, v in dataclasses.asdict(bcfg).items() if k not in CADENCE_KEYS},
        "net": spec.to_dict(), "actions": dataclasses.asdict(act), "env": env,
        "demonstrations": data.describe(), "robot_index_sha256": index_digest(robot),
        "code_sha256": code_digest(*_CODE), "world_size": info.world_size, "torch": torch.__version__,
    })

    torch.manual_seed(bcfg.seed)
    net = BCNet(spec).to(dev)
    optimizer = torch.optim.AdamW(net.parameters(), lr=bcfg.lr, weight_decay=bcfg.weight_decay)
    saved: dict[str, Any] | None = None
    if trainer.same_run(lambda: fingerprint_changes(read_config(out).get("fingerprint"), fingerprint)):
        ckpt = load_checkpoint(out, training_state=True, map_location=dev)
        st = ckpt.training_state
        if st["step"] <= bcfg.steps:
            net.load_state_dict(st["model"])
            optimizer.load_state_dict(st["optimizer"])
            trainer.resumed(st["step"], st.get("elapsed_s", 0.0), bcfg.steps)
            saved = ckpt.meta
        else:
            log.warning("%s: at step %d > bc.steps=%d; starting over", out, st["step"], bcfg.steps)
    ddp = trainer.wrap(net)
    net.train()
    n_params = sum(p.numel() for p in net.parameters())
    if info.is_main:
        log.info("bc: %d parameters, %s", n_params, spec)

    lineage = _lineage(out, params_file) if info.is_main else None
    config = {
        "stage": "bc", "net": spec.to_dict(), "actions": data.discretizer.to_dict(), "tasks": data.tasks,
        "instructions": data.instructions, "env": env, "train": dataclasses.asdict(bcfg),
        "data": {"robot": {"root": str(robot), "index_sha256": index_digest(robot)},
                 "demonstrations": data.describe()},
        "fingerprint": fingerprint,
    }

    def train_step(step: int, meter: Meter) -> None:
        torch.manual_seed(step_seed(bcfg.seed, info.rank, step, 0, 0))
        gen = torch.Generator().manual_seed(step_seed(bcfg.seed, info.rank, step, 0, 1))
        b = data.batch(bcfg.batch_size, bcfg.seed, info.rank, step)
        x = random_shift(to_input(torch.from_numpy(b["history_frames"])), bcfg.shift, gen).to(dev)
        loss, linfo = bc_loss(ddp, x, torch.from_numpy(b["task_ids"]).to(dev),
                              torch.from_numpy(b["action_bins"]).to(dev))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        gnorm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()
                                                            if p.grad is not None])))
        trainer.check(not (math.isfinite(value) and math.isfinite(gnorm)), lambda: (
            f"step {step}: loss {value} / gradient norm {gnorm} not finite (on some rank); stopping before the "
            f"update. {out} keeps the last good checkpoint; lower bc.lr or check the data"))
        optimizer.step()
        meter.add("loss", value)
        meter.add("action_bin_acc", float(linfo["action_bin_acc"]))
        meter.add("grad_norm", gnorm)

    def save(step: int, metrics: dict[str, float]) -> None:
        trainer.check_weights(step, [p.detach() for p in net.parameters()], net.state_dict())
        if info.is_main:
            state = {"step": step, "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "elapsed_s": trainer.elapsed()}
            meta = {"step": step, "steps": bcfg.steps, "stage": "bc", **trainer.versions(), "metrics": metrics,
                    "parameters": n_params}
            save_bc_checkpoint(out, config=config, weights={k: v.detach().cpu() for k, v in net.state_dict().items()},
                               meta=meta, training_state=state, lineage=lineage)
            log.info("checkpoint: %s at step %d", out, step)
        dist_utils.barrier(info)

    def evaluate(step: int) -> dict[str, float]:
        if not info.is_main or not len(data.heldout):
            return {}
        metrics = heldout_metrics(net, data, dev)
        log_metrics(trainer.live, step, metrics)
        log.info("bc step %d held-out: %s", step, ", ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def rates(n: int, seconds: float) -> dict[str, float]:
        return {"samples_per_s": n * bcfg.batch_size * info.world_size / max(seconds, 1e-9)}

    def when_done(step: int, metrics: dict[str, float]) -> dict[str, float]:
        return dict(saved.get("metrics", {})) if saved is not None else metrics

    loop = Loop(steps=bcfg.steps, log_every=bcfg.log_every, checkpoint_every=bcfg.checkpoint_every,
                train_step=train_step, save=save, log_extra=rates, evaluate=evaluate,
                eval_due=lambda step: step % bcfg.eval_every == 0, postfix=("loss", "action_bin_acc"),
                when_done=when_done)
    return trainer.run(loop, step_hook)


@torch.no_grad()
def heldout_metrics(net: BCNet, data: BCData, dev: torch.device) -> dict[str, float]:
    """Argmax-bin accuracy, the majority-bin reference and the decoded L1 on the held-out steps."""
    was_training = net.training
    net.eval()
    try:
        b = data.take(data.heldout)
        logits = net(to_input(torch.from_numpy(b["history_frames"]).to(dev)), torch.from_numpy(b["task_ids"]).to(dev))
    finally:
        net.train(was_training)
    pred, true = logits.argmax(-1).cpu().numpy(), b["action_bins"]
    disc = data.discretizer
    err = np.abs(disc.decode_chunk(pred) - disc.decode_chunk(true))
    train_rows = np.setdiff1d(np.arange(len(data)), data.heldout)
    majority = np.stack([np.bincount(c, minlength=disc.n_bins).argmax() for c in data.bins[train_rows].T])
    return {"eval/action_bin_acc": float((pred == true).mean()),
            "eval/majority_bin_acc": float((true == majority[None]).mean()),
            "eval/action_l1": float(err.mean()), "eval/action_l1_first_step": float(err[:, 0].mean())}


def _lineage(out: Path, params_file: str | None) -> dict[str, Any] | None:
    """The vpdd.lineage record of ``out`` (None when it cannot be built here)."""
    try:
        from vpdd.lineage import build_lineage

        return build_lineage(out, stage="train_bc", params_file=params_file or "params.yaml", params_keys=PARAM_KEYS)
    except Exception as err:  # lineage is a record, not a reason to lose a training run
        log.warning("lineage record not built (%s)", err)
        return None
