"""What the training commands (``vpdd tokenizer train``, ``vpdd train``, ``vpdd rlbench pretrain|finetune``)
share beyond their arguments: the exit codes of a run that ended early and the one-line summary."""

from __future__ import annotations

import sys

from vpdd.runtime.guard import TrainingDiverged, TrainingInterrupted


def run_training(command: str, train, **kwargs):
    """``train(**kwargs)``'s result, or the exit code of a run that ended early: 3 diverged (the last good
    checkpoint is kept), 130 interrupted (a checkpoint was saved); the reason goes to stderr."""
    try:
        return train(**kwargs)
    except TrainingDiverged as err:
        print(f"vpdd {command}: error: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        print(f"vpdd {command}: {err}", file=sys.stderr)
        return 130


def training_summary(label: str, result, keys: tuple[str, ...]) -> str:
    """One line: the step, seconds, the metrics named in ``keys`` and the checkpoint directory."""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k in keys)
    return f"{label}: step {result.step}, {result.seconds:.0f} s{', ' + shown if shown else ''} -> {result.out}"
