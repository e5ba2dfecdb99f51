"""What the ``vpdd rlbench`` commands do beyond calling one library function: the offline keyframe report of
``vpdd rlbench predict`` and the closed loop of ``vpdd rlbench evaluate``. :mod:`vpdd.cli.rlbench` only
parses options, prints and maps errors to exit codes.

:func:`predict_report` predicts on recorded PerAct episodes: per query step (default: step 0 and every
keyframe but the last) the first predicted keyframe against the recorded next keyframe, as a translation
error (m), a rotation error (degrees) and whether the gripper state is right; ``fine_tuned_on`` says
whether an episode was one of the policy's training demonstrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vpdd.rlbench.keyframes import discover_keyframes, keyframe_targets, rotation_angle
from vpdd.rlbench.reader import CAMERAS, list_episodes, load_episode

SUMMARY_KEYS = ("mean_translation_error_m", "mean_rotation_error_deg", "gripper_accuracy")


def generated_cameras(cfg) -> list[str]:
    """The cameras ``vpdd rlbench generate`` renders: VPDD's four and any other in ``rlbench.cameras``."""
    return list(CAMERAS) + [c for c in cfg.rlbench.cameras if c not in CAMERAS]


def predict_episode(policy, episode_dir: str, steps: list[int] | None, seed: int) -> dict[str, Any]:
    """Predict at ``steps`` of a recorded episode (default: 0 and every keyframe but the last) and compare the
    first predicted keyframe with the recorded next keyframe."""
    ep = load_episode(episode_dir, policy.cameras)
    h = policy.keyframe_heuristic
    keys = discover_keyframes(ep.gripper_open, ep.joint_velocities, h.get("stopping_delta", 0.1),
                              h.get("stop_buffer", 4))
    steps = steps if steps else [0, *keys[:-1]]
    bad = [s for s in steps if not 0 <= s < len(ep)]
    if bad:
        raise ValueError(f"--step {bad}: {episode_dir} has {len(ep)} steps")
    targets = keyframe_targets(keys, len(ep), policy.chunk)
    pose, grip = ep.gripper_pose, ep.gripper_open
    queries = []
    for s in steps:
        policy.reset(seed=seed)
        for k in range(max(0, s - policy.window + 1), s):  # the frames before s that fill the window
            policy.observe({c: ep.frames[c][k] for c in policy.cameras})
        pred = policy.predict_action_chunk({c: ep.frames[c][s] for c in policy.cameras}, ep.instruction)
        pred = pred.astype(np.float64)
        true = np.concatenate([pose[targets[s]], grip[targets[s]][:, None]], axis=1)
        queries.append({
            "step": s, "target_keyframes": targets[s].tolist(), "predicted": pred.round(5).tolist(),
            "recorded": true.round(5).tolist(),
            "translation_error_m": float(np.linalg.norm(pred[0, :3] - true[0, :3])),
            "rotation_error_deg": float(rotation_angle(pred[0, 3:7], true[0, 3:7])),
            "gripper_correct": bool(pred[0, 7] == true[0, 7]),
        })
    return {"episode": str(episode_dir), "instruction": ep.instruction, "keyframes": keys, "queries": queries,
            "mean_translation_error_m": float(np.mean([q["translation_error_m"] for q in queries])),
            "mean_rotation_error_deg": float(np.mean([q["rotation_error_deg"] for q in queries])),
            "gripper_accuracy": float(np.mean([q["gripper_correct"] for q in queries]))}


def held_out_first(policy, root: str | Path, per_task: int) -> list[Path]:
    """``per_task`` episodes of each of the policy's tasks, those it was not fine-tuned on first."""
    trained = set(policy.trained_episodes)
    chosen = []
    for task in policy.tasks:
        refs = list_episodes(root, [task])
        chosen += [r.path for r in sorted(refs, key=lambda r: (r.rel in trained, r.index))[:per_task]]
    return chosen


def predict_report(policy, episodes: list[str | Path], steps: list[int] | None, seed: int) -> dict[str, Any]:
    """:func:`predict_episode` on each episode, whether it was fine-tuned on, and the means over episodes."""
    out = [predict_episode(policy, str(e), steps, seed) for e in episodes]
    trained = set(policy.trained_episodes)
    for ep in out:
        ep["fine_tuned_on"] = any(str(ep["episode"]).endswith(rel) for rel in trained)
    summary = {k: float(sum(e[k] for e in out) / len(out)) for k in SUMMARY_KEYS}
    return {**summary, "episodes": out}


def evaluate_policy(policy_dir: str | Path, cfg, *, tasks: list[str] | None = None, episodes: int | None = None,
                    seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """Closed-loop success of a policy checkpoint in RLBench (:func:`~vpdd.rlbench.env.evaluate_keyframes`);
    raises :class:`~vpdd.rlbench.env.RLBenchUnavailable` before loading anything when RLBench cannot run."""
    import torch

    from vpdd.rlbench.env import RLBenchEnv, evaluate_keyframes, require_rlbench
    from vpdd.rlbench.policy import RLBenchPolicy

    require_rlbench()
    r = cfg.rlbench
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = RLBenchPolicy.from_pretrained(policy_dir, device=device, kernel_impl=cfg.kernel.impl,
                                           sampling_stride=r.eval_sampling_stride)
    return evaluate_keyframes(policy, lambda task: RLBenchEnv(task, policy.cameras, r.image_size),
                              list(tasks or r.tasks), episodes or r.eval_episodes, seed, r.max_eval_steps)
