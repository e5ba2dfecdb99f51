"""Run control of every training loop: the stop flag and the two errors a run ends with.

* :class:`StopFlag` turns SIGTERM/SIGINT into a flag the loop checks between optimizer steps (the loop
  then saves a checkpoint and raises :class:`TrainingInterrupted`); a second signal interrupts at once.
  A step (or evaluation) that does not reach the check within ``grace_s`` is interrupted where it is by
  :class:`TrainingInterrupted`: nothing is saved for it, the last checkpoint (atomic) stays the one to
  resume from, so SIGTERM ends a run within seconds whatever the step is doing.
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
    """Context manager: SIGTERM/SIGINT set ``.signal`` instead of killing the process (main thread only).

    After the first signal a watchdog gives the current step ``grace_s`` seconds to reach the loop's check
    (which calls :meth:`disarm` before saving); past that the main thread is interrupted with
    :class:`TrainingInterrupted`."""

    def __init__(self, grace_s: float = 10.0) -> None:
        self.signal: int | None = None
        self.grace_s = grace_s
        self._old: dict[int, Any] = {}
        self._timer: threading.Timer | None = None
        self._expired = False

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self._expired:
            self._expired = False
            if self._timer is None:  # disarmed while the watchdog fired: the loop is saving, let it
                return
            raise TrainingInterrupted(
                f"stopped by signal {self.signal} in the middle of a step that did not finish within "
                f"{self.grace_s:g} s; nothing was saved for it, the last checkpoint is kept: run again to resume"
            )
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received signal %d: finishing this step and saving a checkpoint", signum)
        if self._old and self.grace_s is not None:
            main = threading.main_thread().ident
            self._timer = threading.Timer(self.grace_s, self._expire, args=(main, signum))
            self._timer.daemon = True
            self._timer.start()

    def _expire(self, thread_id: int, signum: int) -> None:
        self._expired = True
        signal.pthread_kill(thread_id, signum)

    def disarm(self) -> None:
        """The loop reached its check: let the final save take as long as it needs."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __exit__(self, *exc) -> bool:
        self.disarm()
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False
