"""Paired comparisons of closed-loop success over training seeds and scenes.

A study trains every arm (variant) with the same fine-tuning seeds and evaluates every run on the same
scenes (``vpdd eval run``'s ``episodes.json``), so arm differences are paired twice: by training seed and by
scene. Two sources of variance matter, and this module keeps both:

- :func:`bootstrap_success` and :func:`bootstrap_difference`: a hierarchical bootstrap. Each replicate draws
  the training seeds with replacement, then, within every drawn seed and every task, that task's scenes with
  replacement. The statistic is the mean success with tasks weighted equally (the mean of per-task means,
  the plain mean when every task has as many scenes). For a difference the *same* seed and scene draws are
  applied to both arms (the statistic is linear, so this is the bootstrap of the per-scene differences).
  The interval is the 2.5 / 97.5 percentile of the replicates. With one seed only scenes are resampled, and
  the interval then says nothing about training-seed variance.
- :func:`paired_t_test` and :func:`sign_flip_test`: tests of "no difference" on the paired units (the
  per-seed differences; with one seed, the per-scene differences). The t test assumes the units are
  independent and roughly normal; the sign-flip (permutation) test only that each unit's difference is
  symmetric about zero under the null, but with n units its smallest attainable p is 2 / 2**n.

:func:`paired_comparison` bundles all of it for arm b against arm a (``vpdd eval compare --paired``).
Everything is vectorised with numpy and deterministic for a given ``seed``. The Student-t distribution is
computed here from the regularised incomplete beta function (scipy is not a dependency of vpdd).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class StudyError(ValueError):
    """Runs that cannot be compared (names the arm, seed or file and the problem)."""

Outcomes = dict[tuple[str, int, int], bool]  # (task, eval_seed, scene_seed) -> success

_KEYS = ("task", "eval_seed", "scene_seed", "success")
_CHUNK = 1 << 21  # array elements per vectorised block (bootstrap replicates, Monte Carlo sign draws)


# --- reading ------------------------------------------------------------------------------------------------

def outcomes(episodes: list[dict], where: str) -> Outcomes:
    """``episodes`` (a ``vpdd eval run`` episodes.json list) as {(task, eval_seed, scene_seed): success}.
    A malformed list (not a list, an episode without a key, one scene twice) raises StudyError naming
    ``where``."""
    if not isinstance(episodes, list):
        raise StudyError(f"{where}: not a `vpdd eval run` episodes.json (expected a list of episodes, "
                         f"got {type(episodes).__name__})")
    out: Outcomes = {}
    for i, e in enumerate(episodes):
        if not isinstance(e, dict):
            raise StudyError(f"{where}: episode {i} is a {type(e).__name__}, not an object")
        missing = [k for k in _KEYS if k not in e]
        if missing:
            raise StudyError(f"{where}: not a `vpdd eval run` episodes.json (episode {i} without "
                             f"{', '.join(repr(k) for k in missing)})")
        try:
            key = (str(e["task"]), int(e["eval_seed"]), int(e["scene_seed"]))
        except (TypeError, ValueError) as err:
            raise StudyError(f"{where}: episode {i}: eval_seed / scene_seed are not integers ({err})") from None
        if key in out:
            raise StudyError(f"{where}: scene {key} appears twice")
        out[key] = bool(e["success"])
    if not out:
        raise StudyError(f"{where}: no episodes")
    return out


def read_outcomes(eval_dir_or_file: str | Path) -> Outcomes:
    """The outcomes of an eval folder (its ``episodes.json``) or of an ``episodes.json`` file."""
    path = Path(eval_dir_or_file)
    if path.is_dir():
        path = path / "episodes.json"
    if not path.is_file():
        raise StudyError(f"{path}: no such file (expected an eval folder written by `vpdd eval run`, or its "
                         "episodes.json)")
    try:
        episodes = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudyError(f"{path}: not readable as JSON ({err})") from None
    return outcomes(episodes, str(path))


# --- layout: (seeds, tasks, scenes) arrays ----------------------------------------------------------------

def _layout(runs: list[Outcomes]) -> tuple[list[str], list[list[list[tuple]]]]:
    """Tasks (sorted) and, per run and task, that task's scene keys (sorted). Every run must hold the
    same tasks."""
    if not runs:
        raise StudyError("no runs: expected one Outcomes per training seed")
    tasks = sorted({k[0] for k in runs[0]})
    keys = []
    for s, run in enumerate(runs):
        mine = sorted({k[0] for k in run})
        if mine != tasks:
            raise StudyError(f"seed index {s}: tasks {mine} differ from seed index 0's {tasks}")
        by_task: dict[str, list[tuple]] = {t: [] for t in tasks}
        for k in sorted(run):
            by_task[k[0]].append(k)
        keys.append([by_task[t] for t in tasks])
    return tasks, keys


def _array(runs: list[Outcomes], keys: list[list[list[tuple]]]) -> tuple[np.ndarray, np.ndarray]:
    """Success as a zero-padded (seeds, tasks, max scenes) float array and the (seeds, tasks) scene counts."""
    counts = np.array([[len(k) for k in per_task] for per_task in keys], dtype=np.int64)
    x = np.zeros((*counts.shape, int(counts.max())))
    for s, (run, per_task) in enumerate(zip(runs, keys, strict=True)):
        for t, ks in enumerate(per_task):
            x[s, t, :len(ks)] = [run[k] for k in ks]
    return x, counts


def _per_seed(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each seed's statistic: the mean over tasks of the per-task means."""
    return (x.sum(-1) / counts).mean(-1)


def _bootstrap(x: np.ndarray, counts: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` hierarchical-bootstrap replicates of the mean of :func:`_per_seed` (module docstring)."""
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}: expected at least 1")
    rng = np.random.default_rng(seed)
    n_seeds, n_tasks, width = x.shape
    block = max(1, _CHUNK // (n_seeds * n_tasks * width))
    tasks = np.arange(n_tasks)[None, None, :, None]
    slots = np.arange(width)
    stats = []
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        si = rng.integers(0, n_seeds, size=(b, n_seeds))  # drawn seeds
        cnt = counts[si]  # (b, seeds, tasks): the drawn seed's scenes per task
        mi = np.minimum((rng.random((b, n_seeds, n_tasks, width)) * cnt[..., None]).astype(np.int64),
                        cnt[..., None] - 1)  # drawn scenes, the slots past a task's count unused
        vals = np.where(slots < cnt[..., None], x[si[..., None, None], tasks, mi], 0.0)
        stats.append((vals.sum(-1) / cnt).mean(-1).mean(-1))
    return np.concatenate(stats)


def _interval(boot: np.ndarray) -> list[float]:
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return [float(lo), float(hi)]


# --- bootstrap ----------------------------------------------------------------------------------------------

def bootstrap_success(runs: list[Outcomes], n_boot: int = 4000, seed: int = 0) -> dict[str, Any]:
    """Mean success of one arm over its training seeds (one Outcomes per seed) with the hierarchical
    bootstrap's 95% percentile interval. ``n_episodes`` is the number of episodes per seed (the smallest,
    should the seeds differ)."""
    _, keys = _layout(runs)
    x, counts = _array(runs, keys)
    per_seed = _per_seed(x, counts)
    return {"mean": float(per_seed.mean()), "ci95": _interval(_bootstrap(x, counts, n_boot, seed)),
            "n_seeds": len(runs), "n_episodes": min(len(r) for r in runs),
            "per_seed": [float(v) for v in per_seed]}


def _paired_array(runs_a: list[Outcomes], runs_b: list[Outcomes]) -> tuple[np.ndarray, np.ndarray]:
    """The (seeds, tasks, scenes) array of b - a and the scene counts; the runs must pair up exactly."""
    if len(runs_a) != len(runs_b):
        raise StudyError(f"{len(runs_a)} runs in arm a but {len(runs_b)} in arm b: paired arms need the same "
                         "training seeds, matched by position")
    for s, (a, b) in enumerate(zip(runs_a, runs_b, strict=True)):
        if set(a) != set(b):
            raise StudyError(f"seed index {s}: the two arms were evaluated on different scenes "
                             f"({len(set(a) ^ set(b))} keys differ); a paired comparison needs the same scenes")
    _, keys = _layout(runs_a)
    xa, counts = _array(runs_a, keys)
    xb, _ = _array(runs_b, keys)
    return xb - xa, counts


def bootstrap_difference(runs_a: list[Outcomes], runs_b: list[Outcomes], n_boot: int = 4000,
                         seed: int = 0) -> dict[str, Any]:
    """Mean success of b minus a, paired by seed (position in the lists) and scene, with the hierarchical
    bootstrap's 95% percentile interval (the same seed and scene draws for both arms)."""
    d, counts = _paired_array(runs_a, runs_b)
    per_seed = _per_seed(d, counts)
    return {"mean": float(per_seed.mean()), "ci95": _interval(_bootstrap(d, counts, n_boot, seed)),
            "n_seeds": len(runs_a), "per_seed": [float(v) for v in per_seed]}


# --- tests --------------------------------------------------------------------------------------------------

def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast below the mean; use the symmetry above
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * h / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile_975(df: float) -> float:
    """The 97.5% quantile of Student's t (two-sided 95% intervals), by bisection on :func:`t_two_sided_p`."""
    lo, hi = 0.0, 2.0
    while t_two_sided_p(hi, df) > 0.05:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > 0.05 else (lo, mid)
        if hi - lo < 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def paired_t_test(diffs: Sequence[float]) -> dict[str, Any]:
    """Two-sided one-sample t test of mean(diffs) == 0, with the mean's 95% t interval.

    Fewer than two values: ``t``, ``df``, ``p`` and ``ci95`` are None. All values equal (zero variance): the
    t statistic is undefined (``t`` None); ``p`` = 1.0 if they are all 0, else None (the limit, 0, would
    claim certainty from, say, two seeds that happened to move by the same amount), ``ci95`` = [mean, mean]."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "t": None, "df": None, "p": None, "ci95": None, "n": n}
    if np.ptp(d) <= 1e-12:  # equal up to float rounding (-0.075 from two seeds' means need not match bitwise)
        return {"mean": mean, "t": None, "df": n - 1, "p": 1.0 if mean == 0.0 else None, "ci95": [mean, mean],
                "n": n}
    se = float(d.std(ddof=1)) / math.sqrt(n)
    t = mean / se
    half = t_quantile_975(n - 1) * se
    return {"mean": mean, "t": t, "df": n - 1, "p": t_two_sided_p(t, n - 1), "ci95": [mean - half, mean + half],
            "n": n}


def _flip_sums(d: np.ndarray) -> np.ndarray:
    """The sums of ``d`` under all 2**len(d) sign assignments."""
    sums = np.zeros(1)
    for v in d:
        sums = np.concatenate([sums + v, sums - v])
    return sums


def sign_flip_test(diffs: Sequence[float], exact_max: int = 20, n_mc: int = 200_000, seed: int = 0) -> dict:
    """Two-sided permutation test of mean(diffs) == 0 under random sign flips.

    p is the fraction of sign assignments whose |mean| is at least the observed |mean| (less a relative
    1e-9 tolerance, so float ties count as ties). Zero differences do not change under a flip and are left
    out; with ``n_nonzero <= exact_max`` all 2**n_nonzero assignments are counted (split in two halves whose
    sums are matched by sorting, so n = 20 stays cheap), otherwise ``n_mc`` random assignments are drawn and
    p = (1 + hits) / (1 + n_mc), which counts the observed assignment and so is never 0.

    With n (non-zero) units the smallest attainable p is 2 / 2**n: 0.031 for 6 seeds, 0.0039 for 9; with
    fewer than 6 seeds no difference can reach p < 0.05."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    nz = d[np.abs(d) > 1e-12 * np.abs(d).max()] if n else d
    k = len(nz)
    obs = abs(float(nz.sum()))
    thr = obs - 1e-9 * max(float(np.abs(nz).sum()), 1e-300)
    if k == 0 or thr <= 0.0:  # every assignment is at least as extreme: p = 1 exactly
        return {"p": 1.0, "n": n, "n_nonzero": k, "exact": True}
    if k <= exact_max:
        left, right = _flip_sums(nz[: k // 2]), np.sort(_flip_sums(nz[k // 2:]))
        hits = (len(right) - np.searchsorted(right, thr - left, side="left")).sum()
        hits += np.searchsorted(right, -thr - left, side="right").sum()
        return {"p": float(hits) / 2.0 ** k, "n": n, "n_nonzero": k, "exact": True}
    rng = np.random.default_rng(seed)
    hits, block = 0, max(1, _CHUNK // k)
    for start in range(0, n_mc, block):
        signs = np.where(rng.random((min(block, n_mc - start), k)) < 0.5, -1.0, 1.0)
        hits += int((np.abs(signs @ nz) >= thr).sum())
    return {"p": (1 + hits) / (1 + n_mc), "n": n, "n_nonzero": k, "exact": False}


# --- everything ---------------------------------------------------------------------------------------------

def paired_comparison(runs_a: list[Outcomes], runs_b: list[Outcomes], n_boot: int = 4000,
                      seed: int = 0) -> dict[str, Any]:
    """Arm b against arm a (a the reference): both arms' bootstrap success, the paired bootstrap difference,
    and the two tests on the paired units: the per-seed differences with two seeds or more (``unit``
    "seeds"), else the single seed's per-scene differences (``unit`` "scenes"; these leave the training-seed
    variance out)."""
    diff = bootstrap_difference(runs_a, runs_b, n_boot, seed)
    if len(runs_a) >= 2:
        unit, units = "seeds", diff["per_seed"]
    else:
        unit = "scenes"
        units = [float(runs_b[0][k]) - float(runs_a[0][k]) for k in sorted(runs_a[0])]
    return {"a": bootstrap_success(runs_a, n_boot, seed), "b": bootstrap_success(runs_b, n_boot, seed),
            "difference": diff, "unit": unit, "t_test": paired_t_test(units),
            "sign_flip": sign_flip_test(units, seed=seed)}
