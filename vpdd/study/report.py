"""The study's result from its committed records: a table, a DVC metrics file and a plot (docs/study.md).

Reads ``results/cells/<arm>/demos<N>/seed<k>/{cell.json, episodes.json, probe.json}`` (written by
:class:`vpdd.study.runner.StudyRunner`), so the report can be rebuilt from git alone. Per cell (arm, demos):
mean success over its seeds with a hierarchical-bootstrap 95% interval (seeds, then scenes within task). Per
arm against the reference arm and demonstration count: the paired difference over the seeds both have, its
bootstrap interval, a paired t-test and an exact sign-flip test over seeds (:mod:`vpdd.eval.paired`).
Also reported: the held-out action-chunk L1 against the scripted expert (:mod:`vpdd.study.probe`: the same
held-out states for every cell, BC included), the arm's predicted-future PSNR and video-token accuracy against
copying the present, and the seconds a cell cost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.eval.paired import bootstrap_success, outcomes, paired_comparison
from vpdd.study.spec import StudySpec
from vpdd.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

TARGET_GAIN = 0.10  # the bar: pre-training improves success by >= 0.10 at 1 and 3 demonstrations


class StudyReportError(ValueError):
    """Records that cannot be reported (names the file and the problem)."""


def read_cells(results: str | Path) -> dict[tuple[str, int], dict[int, dict[str, Any]]]:
    """{(arm, demos): {seed: {"record": cell.json, "outcomes": Outcomes, "probe": probe.json or None}}} of the
    finished cells."""
    found: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for path in sorted(Path(results).glob("cells/*/demos*/seed*/cell.json")):
        ep, probe = path.with_name("episodes.json"), path.with_name("probe.json")
        try:
            record = json.loads(path.read_text())
            episodes = json.loads(ep.read_text())
            probed = json.loads(probe.read_text()) if probe.is_file() else None
        except (OSError, json.JSONDecodeError) as err:
            raise StudyReportError(f"{path.parent}: unreadable cell records ({err})") from None
        found.setdefault((record["arm"], int(record["demos"])), {})[int(record["seed"])] = {
            "record": record, "outcomes": outcomes(episodes, str(ep)), "probe": probed}
    return found


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def study_summary(spec: StudySpec, results: str | Path) -> dict[str, Any]:
    cells = read_cells(results)
    if not cells:
        raise StudyReportError(f"{results}: no finished cells (cells/<arm>/demos<N>/seed<k>/cell.json); run the study")
    ref = spec.reference_arm
    pretrain = {}
    for arm in (a.name for a in spec.arms):
        p = Path(results) / "pretrain" / f"{arm}.json"
        pretrain[arm] = json.loads(p.read_text()) if p.is_file() else None
    rows = []
    for arm in (a.name for a in spec.arms):
        for demos in sorted(spec.demos):
            by_seed = cells.get((arm, demos))
            if not by_seed:
                continue
            seeds = sorted(by_seed)
            row: dict[str, Any] = {
                "arm": arm, "demos": demos, "seeds": seeds,
                "success": bootstrap_success([by_seed[s]["outcomes"] for s in seeds], spec.bootstrap),
                "action_l1": _mean([by_seed[s]["probe"]["action_l1"]["mean"] for s in seeds if by_seed[s]["probe"]]),
                "action_l1_seeds": sum(1 for s in seeds if by_seed[s]["probe"]),
                "seconds_per_cell": _mean([by_seed[s]["record"]["finetune"]["seconds"]
                                           + by_seed[s]["record"]["eval_seconds"] for s in seeds]),
                "minus_reference": None,
            }
            ref_cells = cells.get((ref, demos), {})
            shared = sorted(set(seeds) & set(ref_cells))
            if arm != ref and shared:
                cmp = paired_comparison([ref_cells[s]["outcomes"] for s in shared],
                                        [by_seed[s]["outcomes"] for s in shared], spec.bootstrap)
                row["minus_reference"] = {"seeds": shared, "difference": cmp["difference"], "unit": cmp["unit"],
                                          "t_test": cmp["t_test"], "sign_flip": cmp["sign_flip"]}
            rows.append(row)
    targets = {}
    for demos in (1, 3):
        for row in rows:
            diff = row["minus_reference"]
            if row["demos"] == demos and diff is not None:
                d = diff["difference"]
                targets[f"{row['arm']}_demos{demos}"] = {
                    "gain": d["mean"], "ci95": d["ci95"], "seeds": len(diff["seeds"]),
                    "met": bool(d["mean"] >= TARGET_GAIN and d["ci95"][0] > 0)}
    return {"study": spec.name, "reference": ref, "cells": rows, "pretrain": pretrain,
            "target": {"gain_at_least": TARGET_GAIN, "interval_excludes_zero": True, "by_arm": targets}}


def _ci(stat: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    lo, hi = stat["ci95"]
    return f"{f.format(stat['mean'])} [{f.format(lo)}, {f.format(hi)}]"


def _p(test: dict[str, Any]) -> str:
    p = test.get("p")
    return "-" if p is None else f"{p:.3f}"


def _l1(row: dict[str, Any]) -> str:
    if row["action_l1"] is None:
        return "-"
    missing = len(row["seeds"]) - row["action_l1_seeds"]
    return f"{row['action_l1']:.3f}" + (f" ({row['action_l1_seeds']} seeds)" if missing else "")


def summary_table(summary: dict[str, Any]) -> str:
    ref = summary["reference"]
    head = ["arm", "demos/task", "seeds", "success (95% CI)", f"minus {ref} (95% CI)", "p (paired t)",
            "p (sign-flip)", "held-out action L1", "predicted future / copy-last", "s per cell"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["cells"]:
        diff = row["minus_reference"]
        pre = summary["pretrain"].get(row["arm"])
        video = "-"
        if pre and pre.get("video"):
            v = pre["video"]
            video = (f"{v['predicted']['psnr']:.2f} / {v['copy_last']['psnr']:.2f} dB; tokens "
                     f"{v['tokens']['predicted_acc']:.3f} / {v['tokens']['copy_last_acc']:.3f}")
        cells = [row["arm"], str(row["demos"]), str(len(row["seeds"])), _ci(row["success"]),
                 "-" if diff is None else _ci(diff["difference"], True) + ("" if diff["unit"] == "seeds" else
                                                                           " (1 seed: over scenes)"),
                 "-" if diff is None else _p(diff["t_test"]),
                 "-" if diff is None else _p(diff["sign_flip"]) + ("" if diff["sign_flip"].get("exact") else " (MC)"),
                 _l1(row), video,
                 "-" if row["seconds_per_cell"] is None else f"{row['seconds_per_cell']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Success: mean over fine-tuning seeds of the per-seed success, 95% interval from a hierarchical "
              "bootstrap (seeds, then scenes within task). Differences are paired (same seed, same scenes) over the "
              "seeds both arms have; p-values test a zero mean difference over seeds (two-sided; '-': undefined, with "
              "one seed or the same difference in every seed). Held-out action L1: mean over seeds of the action-chunk "
              "error against the scripted expert on the same held-out states for every cell (`vpdd.study.probe`; the "
              "seeds probed so far in brackets when not all). "
              "Predicted future / copy-last: `vpdd eval video` of the arm's pre-trained network on held-out scenes, "
              "PSNR of the decoded prediction and token accuracy, each against copying the present."]
    return "\n".join(lines)


def plot_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Success against demonstrations, one row per demonstration count and one column per arm (null where that
    cell has no seeds yet), plus ``<arm>_lo`` / ``<arm>_hi``: the rows of the DVC plot (one line per arm)."""
    arms = list(dict.fromkeys(r["arm"] for r in summary["cells"]))
    rows = []
    for demos in sorted({r["demos"] for r in summary["cells"]}):
        row: dict[str, Any] = {"demos": demos}
        for arm in arms:
            hit = [r for r in summary["cells"] if r["arm"] == arm and r["demos"] == demos]
            stat = hit[0]["success"] if hit else None
            row[arm] = None if stat is None else stat["mean"]
            row[f"{arm}_lo"], row[f"{arm}_hi"] = (None, None) if stat is None else stat["ci95"]
        rows.append(row)
    return rows


def plot_png(summary: dict[str, Any], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["cells"]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for i, arm in enumerate(arms):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["demos"])
        x = np.array([r["demos"] for r in mine], dtype=float) * (1 + 0.04 * (i - (len(arms) - 1) / 2))
        y = np.array([r["success"]["mean"] for r in mine])
        lo, hi = ([r["success"]["ci95"][k] for r in mine] for k in (0, 1))
        err = np.clip(np.array([y - lo, hi - y]), 0.0, None)  # a percentile bound can round past the mean
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sorted({r["demos"] for r in rows}), [str(d) for d in sorted({r["demos"] for r in rows})])
    ax.set_xlabel("demonstrations per task")
    ax.set_ylabel("mean success (95% CI over seeds, scenes)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"{summary['study']}: success against demonstrations", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(spec: StudySpec, results: str | Path) -> dict[str, Any]:
    """summary.json (DVC metrics), table.md, success.json (DVC plot rows) and success.png into ``results``."""
    results = Path(results)
    summary = study_summary(spec, results)
    atomic_write_json(results / "summary.json", summary)
    atomic_write_text(results / "table.md", summary_table(summary) + "\n")
    atomic_write_json(results / "success.json", plot_rows(summary))
    plot_png(summary, results / "success.png")
    return summary
