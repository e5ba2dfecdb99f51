"""Run-control helpers of the diffusion training loop: stop signals, divergence errors, seeds, DVCLive.

* :class:`StopFlag` turns SIGTERM/SIGINT into a flag the loop checks between optimizer steps (the loop
  then saves a checkpoint and raises :class:`TrainingInterrupted`); a second signal interrupts at once.
* :class:`TrainingDiverged`: a non-finite loss or gradient; nothing is saved after the last good
  checkpoint.
* :func:`step_seed`: every random draw of a micro-batch (batch composition, timesteps, noise, dropout)
  comes from seeds that are a pure function of ``(seed, rank, step, micro)``, so a resumed run draws the
  same numbers as an uninterrupted one without saving RNG states.
* :func:`open_live`: a DVCLive logger (``dvcyaml=False``: DVC's own dvc.yaml declares the metrics and
  plots); on resume, plot rows logged after the checkpoint's step are dropped first, because the resumed
  run logs them again.
"""

from __future__ import annotations

import csv
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became non-finite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: a checkpoint was saved at the step named in the message; run again to resume."""


class StopFlag:
    """Context manager: SIGTERM/SIGINT set ``.signal`` instead of killing the process (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received signal %d: finishing this step and saving a checkpoint", signum)

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def step_seed(seed: int, rank: int, step: int, micro: int, stream: int = 0) -> int:
    """A 63-bit seed for one random stream of one micro-batch."""
    return int(np.random.SeedSequence([seed, rank, step, micro, stream, 7919]).generate_state(2, np.uint64)[0] >> 1)


def truncate_live(live_dir: Path, step: int) -> None:
    """Drop DVCLive plot rows logged after ``step``."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        rows = list(csv.reader(tsv.read_text().splitlines(), delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        col = rows[0].index("step")
        kept = [r for r in rows[1:] if r and int(r[col]) <= step]
        tsv.write_text("\n".join("\t".join(r) for r in [rows[0], *kept]) + "\n")


def open_live(live_dir: Path | None, resumed_step: int | None):
    if live_dir is None:
        return None
    from dvclive import Live

    resume = resumed_step is not None and live_dir.exists()
    if resume:
        truncate_live(live_dir, resumed_step)
    return Live(str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=False)


def log_metrics(live, step: int, values: dict[str, float]) -> None:
    if live is None:
        return
    live.step = step
    for k, v in values.items():
        live.log_metric(k, float(v))
