"""Run control of every training loop: the stop flag and the two errors a run ends with.

* :class:`StopFlag` turns SIGTERM/SIGINT into a flag the loop checks between optimizer steps (the loop
  then saves a checkpoint and raises :class:`TrainingInterrupted`); a second signal interrupts at once.
* :class:`TrainingDiverged`: a non-finite (or exploding) loss, gradient or weight; nothing is saved after
  the last good checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights became non-finite or exploded; the last good checkpoint is kept."""


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
