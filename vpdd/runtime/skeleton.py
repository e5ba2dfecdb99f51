"""The one training skeleton every stage runs on (tokenizer, pre-training, fine-tuning, RLBench).

A stage builds its data, model and optimizer, and hands :meth:`Trainer.run` a :class:`Loop` (one optimizer
step, a save, an evaluation). The :class:`Trainer` owns what all stages share: torchrun/DDP set-up; resume
(rank 0 first finishes an interrupted save; :meth:`Trainer.same_run` compares the checkpoint's run with
this one: ``resume="strict"`` refuses a different run naming the differences, ``"auto"`` -- the DVC stages,
whose outputs persist -- starts over, ``"never"`` always starts over); the divergence guard (every rank
stops together, nothing is saved after the last good checkpoint); the stop flag (SIGTERM/SIGINT save and
raise :class:`TrainingInterrupted`); progress bar, averaged metrics every ``log_every`` steps (DVCLive and
the log), the checkpoint cadence and the run summary. Exact resume is the stage's part: it seeds every draw
from ``(seed, rank, step, ...)`` (:mod:`vpdd.runtime.seeding`) and saves what its step depends on.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vpdd.runtime import distributed as dist_utils
from vpdd.runtime.checkpoint import CheckpointError, has_checkpoint
from vpdd.runtime.guard import StopFlag, TrainingDiverged, TrainingInterrupted
from vpdd.runtime.live import log_metrics, open_live

log = logging.getLogger(__name__)

RESUME_MODES = ("strict", "auto", "never")


@dataclass
class TrainResult:
    out: Path
    step: int
    resumed_from: int | None
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


class Meter:
    """Sums of what a stage logs (:meth:`add`, per step or micro-batch), averaged over the steps of a log line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.since = time.time()

    def add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value


@dataclass
class Loop:
    """What one stage contributes to :meth:`Trainer.run`.

    * ``train_step(step, meter)`` takes optimizer step number ``step`` (0-based) and adds what it logs to
      ``meter`` (logged as ``train/<key>``, averaged over the steps of a log line);
    * ``log_extra(steps, seconds)`` adds metrics of its own to a log line (throughput, ...);
    * ``evaluate(step)`` runs after a step for which ``eval_due(step)`` holds, and after the last one;
    * ``save(step, metrics)`` writes the checkpoint; ``record_train``: the logged ``train/*`` values are part
      of the metrics saved and returned (else only the evaluation's);
    * ``when_done(step, metrics)`` runs instead of the loop when the checkpoint was already at ``steps``."""

    steps: int
    log_every: int
    checkpoint_every: int
    train_step: Callable[[int, Meter], None]
    save: Callable[[int, dict[str, float]], None]
    log_extra: Callable[[int, float], dict[str, float]] = lambda steps, seconds: {}
    evaluate: Callable[[int], dict[str, float]] | None = None
    eval_due: Callable[[int], bool] = lambda step: False
    record_train: bool = True
    postfix: tuple[str, ...] = ("loss",)
    when_done: Callable[[int, dict[str, float]], dict[str, float]] | None = None


class Trainer:
    """One training run of stage ``name`` writing the checkpoint directory ``out`` (see the module docstring)."""

    def __init__(self, name: str, out: str | Path, *, resume: str = "strict", device: str = "auto",
                 live_dir: str | Path | None = None, progress: bool | None = None):
        if resume not in RESUME_MODES:
            raise ValueError(f"resume={resume!r}: expected one of {RESUME_MODES}")
        self.name, self.out, self.resume = name, Path(out), resume
        self.live_dir = Path(live_dir) if live_dir is not None else None
        self.progress = progress
        self.info = dist_utils.init_distributed(device)
        self.device = self.info.device
        self.t_start = time.time()
        self.start_step, self.resumed_from, self.elapsed_before = 0, None, 0.0
        self.live = None  # the DVCLive logger while :meth:`run` runs (rank 0)

    # -- resume --------------------------------------------------------------------------------------------
    def same_run(self, changes: Callable[[], list[str]]) -> bool:
        """True when ``out`` holds a checkpoint of this run and ``resume`` allows continuing it.

        ``changes()`` lists what differs between the checkpoint's run and this one (empty: the same run)."""
        if self.resume == "never":
            return False
        if self.info.is_main:
            has_checkpoint(self.out)  # finish an interrupted save before anyone reads
        dist_utils.barrier(self.info)
        if not (self.out / "meta.json").is_file():
            return False
        diff = changes()
        if diff and self.resume == "strict":
            raise CheckpointError(
                f"{self.out}: cannot resume, the checkpoint belongs to a different run (" + "; ".join(diff[:8])
                + "). Use a new --out, --fresh to start over, or --restart-if-changed."
            )
        if diff:
            log.warning("%s holds a different run (%s): starting over", self.out, "; ".join(diff[:3]))
        return not diff

    def resumed(self, step: int, elapsed_s: float, steps: int) -> None:
        """Record that the stage restored its training state at ``step``."""
        self.start_step = self.resumed_from = int(step)
        self.elapsed_before = float(elapsed_s)
        if self.info.is_main:
            log.info("resuming %s from step %d of %d", self.out, self.start_step, steps)

    def versions(self) -> dict[str, object]:
        """The run facts every checkpoint's meta.json records."""
        return {"world_size": self.info.world_size, "torch": torch.__version__, "python": sys.version.split()[0]}

    def elapsed(self) -> float:
        """Training seconds so far, including those before a resume."""
        return self.elapsed_before + time.time() - self.t_start

    # -- model and guards ----------------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` under DDP when the run is distributed (the module the forward pass goes through)."""
        if not self.info.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = self.device
        return DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def check(self, bad: bool, message: Callable[[], str]) -> None:
        """Raise :class:`TrainingDiverged` on every rank when ``bad`` holds on any rank."""
        if dist_utils.any_true(bad, self.info):
            raise TrainingDiverged(message())

    def check_weights(self, step: int, in_sync: list[torch.Tensor], state: dict[str, torch.Tensor]) -> None:
        """Before a save: ``in_sync`` agree across ranks and every float tensor of ``state`` is finite."""
        dist_utils.check_in_sync(in_sync, self.info)
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise TrainingDiverged(f"step {step}: the weights are not finite ({bad[:3]}); not saving. The last "
                                   f"good checkpoint in {self.out} is kept.")

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, loop: Loop, step_hook: Callable[[int], None] | None = None) -> TrainResult:
        """Train from ``start_step`` to ``loop.steps``; ``step_hook(step)`` runs after each step (tests inject
        stops and faults with it). Leaves the process group it joined."""
        from tqdm import tqdm

        info = self.info
        live = open_live(self.live_dir, self.resumed_from) if info.is_main else None
        self.live = live
        show = info.is_main and (sys.stderr.isatty() if self.progress is None else self.progress)
        bar = tqdm(total=loop.steps, initial=self.start_step, desc=self.name, unit="step", disable=not show)
        meter = Meter()
        metrics: dict[str, float] = {}
        step = self.start_step
        try:
            with StopFlag() as stop:
                while step < loop.steps:
                    loop.train_step(step, meter)
                    step += 1
                    bar.update(1)
                    meter.steps += 1
                    if step % loop.log_every == 0 or step == loop.steps:
                        logged = self._log_line(loop, meter, step, bar)
                        if loop.record_train:
                            metrics = {**metrics, **logged}
                        meter = Meter()
                    stopping = dist_utils.any_true(stop.signal is not None, info)
                    if loop.evaluate is not None and (loop.eval_due(step) or step == loop.steps):
                        metrics = {**metrics, **loop.evaluate(step)}
                    if stopping:
                        stop.disarm()  # the step is done: the save may take its time
                    if step % loop.checkpoint_every == 0 or step == loop.steps or stopping:
                        loop.save(step, metrics)
                    if stopping:
                        raise TrainingInterrupted(f"stopped by a signal at step {step}; checkpoint saved in "
                                                  f"{self.out}; run the same command again to resume")
                    if step_hook is not None:
                        step_hook(step)
                if self.start_step >= loop.steps:
                    if info.is_main:
                        log.info("%s: %s is already trained to step %d", self.name, self.out, self.start_step)
                    if loop.when_done is not None:
                        metrics = loop.when_done(step, metrics)
        finally:
            bar.close()
            if live is not None:
                live.make_summary()
        seconds = self.elapsed()
        if live is not None:
            live.summary["train_seconds"] = round(seconds, 2)
            live.summary["steps"] = step
            live.make_summary()
            live.end()
        dist_utils.barrier(info)
        dist_utils.cleanup(info)
        return TrainResult(out=self.out, step=step, resumed_from=self.resumed_from, seconds=seconds, metrics=metrics)

    def _log_line(self, loop: Loop, meter: Meter, step: int, bar) -> dict[str, float]:
        now = time.time()
        values = {f"train/{k}": v / meter.steps for k, v in meter.sums.items()}
        values.update({f"train/{k}": v for k, v in loop.log_extra(meter.steps, now - meter.since).items()})
        if self.info.is_main:
            log_metrics(self.live, step, values)
            bar.set_postfix({k: f"{values[f'train/{k}']:.3f}" for k in loop.postfix if f"train/{k}" in values})
            log.info("%s step %d: %s", self.name, step, ", ".join(f"{k[6:]} {v:.4g}" for k, v in values.items()))
        return values
