"""Token-level video scores and the foresight probe of ``vpdd eval video`` (docs/evaluation.md).

Two questions the pixel scores of :mod:`vpdd.eval.video_quality` leave open:

* **Does the video model predict the future's tokens better than copying the present?** The sampled future
  grid is compared with the tokenizer's encoding of the real future window: accuracy over all tokens and
  over the tokens that change (where the real future's token differs from the history grid's). Copy-last
  predicts the history grid itself, so its accuracy on changed tokens is 0 by definition; on all tokens it
  is the share that does not change.
* **Does the policy's foresight help its actions?** On held-out states, the action-chunk L1 against the
  scripted expert (``a_s .. a_{s+chunk-1}``, padded past the episode's end as training pads it) with the
  network's video input as deployed (the video tokens sampled with the actions), handed the true future
  (the real future's tokens at every reverse step) or masked (all [MASK]: no foresight). Every mode starts
  from the same generator seed, so the three are paired. ``discretization`` is the L1 of the expert's own
  chunk through the action bins: the floor a policy with perfect bins reaches.

Lower deployed than masked L1 means the policy's own foresight helps; the gap to true-future L1 is what a
perfect video model would add.

:func:`heldout_action_error` is the same action-chunk L1 for any policy with ``predict_windows`` (VPDD as
deployed, or the behaviour-cloning baseline), on states spread over whole held-out episodes: the pre-training
study scores every cell with it on one shared set of held-out states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

MODES = ("deployed", "true_future", "masked")


def token_scores(predicted: torch.Tensor, true: torch.Tensor, history: torch.Tensor) -> dict[str, np.ndarray]:
    """Per window (M,): ``predicted_acc``, ``predicted_changed_acc`` (NaN where nothing changes),
    ``copy_last_acc`` and ``changed_fraction``, from (M, t, h, w) token grids."""
    p, y, h = (x.reshape(x.shape[0], -1).cpu() for x in (predicted, true, history))
    changed = y != h
    n_changed = changed.sum(1)
    hit = p == y
    changed_acc = torch.where(n_changed > 0, (hit & changed).sum(1) / n_changed.clamp_min(1), float("nan"))
    return {"predicted_acc": hit.double().mean(1).numpy(), "predicted_changed_acc": changed_acc.double().numpy(),
            "copy_last_acc": (~changed).double().mean(1).numpy(), "changed_fraction": changed.double().mean(1).numpy()}


def expert_chunks(actions: np.ndarray, steps: np.ndarray, chunk: int, hold: np.ndarray) -> np.ndarray:
    """(M, chunk, D) the expert's actions ``a_s .. a_{s+chunk-1}`` for every ``s`` in ``steps``, ``hold``
    after the last step (the discretizer's padding)."""
    actions = np.asarray(actions, dtype=np.float32)
    padded = np.concatenate([actions, np.repeat(hold[None], chunk - 1, axis=0)]) if chunk > 1 else actions
    return padded[np.asarray(steps)[:, None] + np.arange(chunk)[None, :]]


def _expert_targets(disc: Any, chunk: int, actions: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The expert's chunks at ``steps`` and, per state, the L1 of those chunks through the action bins (the
    floor a policy with perfect bins reaches)."""
    target = expert_chunks(actions, steps, chunk, disc.hold_action(actions[-1]))
    through_bins = disc.decode_chunk(disc.episode_chunks(actions)[np.asarray(steps)])
    return target, np.abs(through_bins - target).mean(axis=(1, 2))


def probe_episode(policy: Any, episode: Any, steps: np.ndarray, history: np.ndarray, true_tokens: torch.Tensor,
                  seed: int, batch_size: int) -> dict[str, np.ndarray]:
    """Per state (M,) action-chunk L1 of each mode in :data:`MODES`, and ``discretization``."""
    target, floor = _expert_targets(policy.discretizer, policy.chunk, episode.actions, steps)
    out = {"discretization": floor}
    texts = [episode.instruction] * len(steps)
    for mode in MODES:
        policy.reset(seed=seed)  # the same draws for every mode
        chunks = []
        for i in range(0, len(steps), batch_size):
            sl = slice(i, i + batch_size)
            foresight = {"deployed": None, "masked": "masked", "true_future": true_tokens[sl]}[mode]
            chunks.append(policy.predict({"history": history[sl]}, texts[sl], foresight=foresight).actions)
        out[mode] = np.abs(np.concatenate(chunks) - target).mean(axis=(1, 2))
    return out


def heldout_action_error(policy: Any, episodes: Sequence[Any], states_per_episode: int, seed: int,
                         batch_size: int) -> dict[str, Any]:
    """Action-chunk L1 against the scripted expert on ``states_per_episode`` states spread evenly over each
    held-out episode (the frame window ending at the state, training's convention), with the policy as
    deployed (``policy.predict_windows``): per task, the mean over tasks, the bins floor (``discretization``)
    and the number of states. The policy's generator is reseeded per episode, so the result is deterministic."""
    from vpdd.eval.scenes import hash31
    from vpdd.eval.video_quality import window_steps
    from vpdd.tokenizer.data import window_indices

    errors: dict[str, list[np.ndarray]] = {}
    floors: dict[str, list[np.ndarray]] = {}
    for k, ep in enumerate(episodes):
        steps = window_steps(len(ep), 0, states_per_episode)
        history = ep.frames[window_indices(steps, policy.window)]
        target, floor = _expert_targets(policy.discretizer, policy.chunk, ep.actions, steps)
        policy.reset(seed=hash31(f"heldout-action:{int(seed)}:{ep.task}:{k}"))
        pred = np.concatenate([policy.predict_windows(history[i:i + batch_size],
                                                      [ep.instruction] * len(history[i:i + batch_size]))
                               for i in range(0, len(steps), batch_size)])
        errors.setdefault(ep.task, []).append(np.abs(pred - target).mean(axis=(1, 2)))
        floors.setdefault(ep.task, []).append(floor)
    per_task = {t: float(np.concatenate(v).mean()) for t, v in errors.items()}
    return {"mean": float(np.mean(list(per_task.values()))) if per_task else None, "per_task": per_task,
            "discretization": float(np.mean([np.concatenate(v).mean() for v in floors.values()])) if floors else None,
            "states": int(sum(len(e) for v in errors.values() for e in v))}


def summarise_tokens(per_task: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Means per task and over tasks of :func:`token_scores` arrays (changed-token accuracy ignores NaN)."""
    tasks = {t: {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in s.items()}
             for t, s in per_task.items()}
    keys = next(iter(tasks.values())).keys() if tasks else ()
    known = {k: [v[k] for v in tasks.values() if v[k] is not None] for k in keys}
    return {"mean": {k: float(np.mean(v)) if v else None for k, v in known.items()}, "per_task": tasks}


def summarise_probe(per_task: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Mean L1 per mode, per task and over tasks, the paired differences with a 95% interval over states,
    and the state counts."""
    tasks = {t: {k: float(np.mean(v)) for k, v in s.items()} for t, s in per_task.items()}
    modes = (*MODES, "discretization")
    mean = {m: float(np.mean([v[m] for v in tasks.values()])) for m in modes}
    pooled = {m: np.concatenate([s[m] for s in per_task.values()]) for m in modes}
    paired = {}
    for name, a, b in (("deployed_minus_masked", "deployed", "masked"),
                       ("true_future_minus_masked", "true_future", "masked")):
        d = pooled[a] - pooled[b]
        half = 1.96 * float(np.std(d, ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        paired[name] = {"mean": float(np.mean(d)), "ci95": [float(np.mean(d)) - half, float(np.mean(d)) + half]}
    return {"mean": mean, "per_task": tasks, "paired": paired, "states": int(len(pooled["deployed"]))}


def probe_table(probe: dict[str, Any], tokens: dict[str, Any]) -> Sequence[str]:
    """Lines for the command's output."""
    m, t = probe["mean"], tokens["mean"]
    d = probe["paired"]["deployed_minus_masked"]
    changed = "n/a" if t["predicted_changed_acc"] is None else f"{t['predicted_changed_acc']:.3f}"
    return [f"tokens: predicted acc {t['predicted_acc']:.3f} (changed tokens {changed}), "
            f"copy-last {t['copy_last_acc']:.3f}; {100 * t['changed_fraction']:.0f}% of tokens change",
            f"foresight probe ({probe['states']} states, action-chunk L1): deployed {m['deployed']:.4f}, true "
            f"future {m['true_future']:.4f}, masked {m['masked']:.4f}, bins floor {m['discretization']:.4f}; "
            f"deployed - masked {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"]
