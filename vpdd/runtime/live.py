"""DVCLive logging of the training runs (rank 0 only).

:func:`open_live` returns a DVCLive logger with ``dvcyaml=False`` (DVC's own dvc.yaml declares the metrics
and plots); on resume, the plot rows logged after the checkpoint's step are dropped first, because the
resumed run logs them again.
"""

from __future__ import annotations

import csv
from pathlib import Path


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
