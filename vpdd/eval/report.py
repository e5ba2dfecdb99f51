"""``vpdd eval run``: evaluate a policy directory in closed loop and write the results a user reads.

Writes, into ``out`` (atomically, file by file):

* ``metrics.json``: per-task success with 95% Wilson intervals, the mean and per-seed means (what
  ``dvc metrics show`` / ``dvc exp show`` compare);
* ``run.json``: what describes the run: timing (seconds per control step and per policy call), the
  settings, the checkpoint evaluated, the machine and the video paths;
* ``episodes.json``: one record per episode (task, seed, scene seed, success, steps);
* ``success.json`` + ``success.png``: the per-task success rates (DVC bar plot data and a bar chart with
  the 95% intervals);
* ``videos/<task>/seed<s>_ep<k>_<success|failure>.mp4``: rollouts of the first ``videos_per_task``
  episodes of each task and evaluation seed, upscaled so that a 64-pixel policy view is watchable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.eval.closed_loop import EvaluationError, TaskTiming, episode_records, run_task, summarise
from vpdd.utils.io import atomic_write_bytes, atomic_write_json
from vpdd.utils.records import write_metrics

# What describes the run rather than its result: written to run.json beside metrics.json (vpdd.utils.records).
RUN_KEYS = ("timing", "settings", "policy", "machine", "videos")

VIDEO_SCALE = 4
log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    tasks: list[str]
    episodes_per_task: int
    seeds: list[int]
    max_steps: int = 200
    n_envs: int = 4
    execute_steps: int = 1
    sampling_stride: int = 1
    truncation_r: float | None = None  # None: the checkpoint's diffusion.truncation_r
    videos_per_task: int = 1
    device: str = "cpu"
    kernel_impl: str = "auto"  # the kernel.impl setting (VPDD_KERNEL_IMPL wins)


def settings_from_config(cfg: Any, device: str = "cpu") -> EvalSettings:
    """The evaluation a params file describes (its ``eval`` section and ``kernel.impl``)."""
    ev = cfg.eval
    return EvalSettings(
        tasks=list(ev.tasks), episodes_per_task=ev.episodes_per_task, seeds=list(ev.seeds), max_steps=ev.max_steps,
        n_envs=ev.n_envs, execute_steps=ev.execute_steps, sampling_stride=ev.sampling_stride,
        truncation_r=ev.truncation_r, videos_per_task=ev.videos_per_task, device=device, kernel_impl=cfg.kernel.impl,
    )


def policy_tasks(policy: Any, tasks: list[str]) -> list[str]:
    """The tasks to evaluate: ``tasks`` when given, else the tasks the policy was fine-tuned on.

    Refused: a task named twice, and a task the policy was not fine-tuned on (when the checkpoint records its
    tasks): its success rate would be reported next to the others as if it were one of them."""
    trained = policy.config.get("data", {}).get("demonstrations", {}).get("tasks")
    if tasks:
        dups = sorted({t for t in tasks if list(tasks).count(t) > 1})
        if dups:
            raise EvaluationError(f"eval tasks: {dups} named more than once; name each task once")
        unseen = [t for t in tasks if trained and t not in trained]
        if unseen:
            raise EvaluationError(f"{policy.loaded.path}: the policy was not fine-tuned on {unseen}; it knows "
                                  f"{list(trained)}")
        return list(tasks)
    if not trained:
        raise EvaluationError(f"{policy.loaded.path}: the checkpoint records no fine-tuning tasks; pass eval.tasks")
    return list(trained)


def check_env_matches(policy: Any, env_cfg: dict[str, Any]) -> None:
    """The rendered frames must be the size the policy was trained on."""
    if int(env_cfg["resolution"]) != policy.resolution:
        raise EvaluationError(f"env.resolution={env_cfg['resolution']} but the policy (its tokenizer, or the BC "
                              f"network) expects {policy.resolution}x{policy.resolution} frames")


def write_videos(videos: list[Any], out: Path, fps: int = 20) -> list[str]:
    from vpdd.data.video import write_video

    paths = []
    for v in videos:
        big = np.repeat(np.repeat(v.frames, VIDEO_SCALE, axis=1), VIDEO_SCALE, axis=2)
        rel = Path("videos") / v.task / f"seed{v.eval_seed}_ep{v.episode}_{'success' if v.success else 'failure'}.mp4"
        write_video(out / rel, big, fps=fps)
        paths.append(str(rel))
    return paths


def bar_plot(metrics: dict[str, Any], path: Path, title: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(metrics["tasks"])
    rates = [metrics["tasks"][t]["success"] for t in tasks] + [metrics["mean_success"]]
    lo = [metrics["tasks"][t]["ci95"][0] for t in tasks] + [metrics["ci95"][0]]
    hi = [metrics["tasks"][t]["ci95"][1] for t in tasks] + [metrics["ci95"][1]]
    labels = [t.removesuffix("-v3") for t in tasks] + ["mean"]
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 1.5, 3.6))
    err = np.clip(np.array([np.subtract(rates, lo), np.subtract(hi, rates)]), 0.0, None)
    ax.bar(labels, rates, yerr=err, capsize=4, color=["#4c72b0"] * len(tasks) + ["#dd8452"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate (95% CI)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def load_policy(policy_dir: Path, settings: EvalSettings) -> Any:
    """The policy class the checkpoint's ``kind`` names: VPDDPolicy (the default: a VPDD checkpoint, also one
    without a kind) or the behaviour-cloning baseline's BCPolicy (``vpdd-bc``); another kind is refused."""
    # The policy (and with it transformers -> triton) must be imported before MuJoCo's EGL context exists:
    # importing triton after EGL rendering has started crashes the process.
    from vpdd.bc import KIND_BC, BCPolicy
    from vpdd.models.checkpoint import KINDS
    from vpdd.policy import VPDDPolicy
    from vpdd.runtime.checkpoint import CheckpointError, read_config

    try:
        kind = read_config(policy_dir).get("kind")
    except CheckpointError:
        kind = None  # not a checkpoint directory: VPDDPolicy's loader says what is wrong
    if kind == KIND_BC:
        return BCPolicy.from_pretrained(policy_dir, device=settings.device, execute_steps=settings.execute_steps)
    if kind is not None and kind not in KINDS:
        raise EvaluationError(f"{policy_dir}: a {kind!r} checkpoint; `vpdd eval run` evaluates {list(KINDS)} "
                              f"(VPDD) and {KIND_BC!r} (behaviour cloning) checkpoints")
    return VPDDPolicy.from_pretrained(policy_dir, device=settings.device, kernel_impl=settings.kernel_impl,
                                      execute_steps=settings.execute_steps, sampling_stride=settings.sampling_stride,
                                      truncation_r=settings.truncation_r)


def evaluate(policy_dir: str | Path, settings: EvalSettings, env_cfg: dict[str, Any], out: str | Path,
             progress: bool = True) -> dict[str, Any]:
    """Run the closed-loop evaluation of ``policy_dir`` and write its results into ``out``."""
    from tqdm import tqdm

    from vpdd.utils.machine import machine_record

    policy_dir, out = Path(policy_dir), Path(out)
    if not policy_dir.is_dir():
        raise EvaluationError(f"policy directory {policy_dir} does not exist (expected a `vpdd train finetune` "
                              "output such as models/policy, or a `vpdd train bc` one such as models/bc)")
    policy = load_policy(policy_dir, settings)
    if not policy.is_policy:
        raise EvaluationError(f"{policy_dir} is a {policy.config['kind']!r} checkpoint: closed-loop evaluation "
                              "needs a fine-tuned policy (vpdd train finetune)")
    tasks = policy_tasks(policy, settings.tasks)
    check_env_matches(policy, env_cfg)
    total = len(tasks) * len(settings.seeds) * settings.episodes_per_task
    episodes, videos, timing = [], [], TaskTiming()
    start = time.perf_counter()
    with tqdm(total=total, desc="vpdd eval", unit="episode", disable=not progress) as bar:
        for task in tasks:
            bar.set_postfix_str(task)
            run = run_task(policy, task, env_cfg, settings.seeds, settings.episodes_per_task, settings.max_steps,
                           settings.n_envs, settings.videos_per_task, on_batch=bar.update)
            episodes += run.episodes
            videos += run.videos
            wins = sum(e.success for e in run.episodes)
            # one line per task for logs without a terminal (DVC under nohup, Prefect, CI)
            log.info("%s: %d/%d episodes succeeded (%d/%d episodes done, %.0f s)", task, wins, len(run.episodes),
                     len(episodes), total, time.perf_counter() - start)
            for k in ("env_s", "policy_s", "steps", "policy_calls"):
                setattr(timing, k, getattr(timing, k) + getattr(run.timing, k))
    wall = time.perf_counter() - start
    metrics = summarise(episodes, tasks, settings.seeds)
    batch_steps = max(1, timing.steps)
    metrics["timing"] = {
        "wall_s": wall,
        "env_steps": timing.steps,
        "policy_calls": timing.policy_calls,
        # per environment step, with n_envs environments sharing each batched policy call
        "s_per_env_step": wall / batch_steps,
        "policy_s_per_call": timing.policy_s / max(1, timing.policy_calls),
        "env_s_per_step": timing.env_s / batch_steps,
    }
    diffusion = hasattr(policy, "scheduler")  # a VPDD policy (the BC baseline has no reverse diffusion)
    metrics["settings"] = {
        "tasks": tasks, "episodes_per_task": settings.episodes_per_task, "seeds": list(settings.seeds),
        "max_steps": settings.max_steps, "n_envs": settings.n_envs, "execute_steps": settings.execute_steps,
        "sampling_stride": settings.sampling_stride if diffusion else None,
        "reverse_steps": len(policy.scheduler.timesteps(settings.sampling_stride)) if diffusion else None,
        # what the reverse steps truncated with: the setting, else the checkpoint's
        "truncation_r": (settings.truncation_r or policy.scheduler.truncation_r) if diffusion else None,
        "kernel_impl": policy.scheduler.kernel_impl_for() if diffusion else None,  # what ran, not what was asked
        "policy_kind": policy.config.get("kind"),
        "success_definition": "info['success'] at any step within max_steps",
        "env": {k: env_cfg[k] for k in ("camera", "resolution", "flip", "crop") if k in env_cfg},
    }
    ckpt = policy.loaded.checkpoint
    metrics["policy"] = {"path": str(policy_dir), "checkpoint_hash": ckpt.meta.get("checkpoint_hash"),
                         "step": ckpt.step}
    metrics["machine"] = machine_record()
    metrics["videos"] = write_videos(videos, out)
    atomic_write_json(out / "episodes.json", episode_records(episodes))
    atomic_write_json(out / "success.json", {"success": [
        {"task": t.removesuffix("-v3"), "success": v["success"]} for t, v in metrics["tasks"].items()]})
    bar_plot(metrics, out / "success.png",
             f"{policy_dir}: {len(tasks)} tasks x {settings.episodes_per_task} episodes x {len(settings.seeds)} seeds")
    write_metrics(out / "metrics.json", metrics, RUN_KEYS)
    return metrics
