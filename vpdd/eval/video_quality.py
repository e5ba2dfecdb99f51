"""Video-prediction quality: how close the model's decoded future clip is to the real one on held-out robot clips.

VPDD predicts the token grid of the clip ``future_offset`` steps ahead (algorithm.md §6, §8.3). This module
scores that prediction in pixel space, next to two reference rows that make the numbers readable:

* ``predicted``       the checkpoint's sampled future tokens, decoded by its VQ-VAE (``policy.predict_video``);
* ``reconstruction``  the VQ-VAE's encode-then-decode of the real future clip: what a *perfect* token
  prediction would score, so the practical upper bound (a prediction can beat it on a window only by luck);
* ``copy_last``       the last history frame repeated: the trivial "nothing moves" baseline.

**Held-out clips.** By default, scripted-expert Meta-World episodes of the evaluated tasks (``eval.tasks``,
or the fine-tuning tasks ``data.robot.tasks`` when empty) are collected at evaluation time, rendered with the
training data's settings (camera, flip, crop, resolution: the checkpoint's ``config["env"]`` when it records
one, else ``env`` in params.yaml; the resolution must equal the checkpoint tokenizer's). Their scene seeds are
``heldout_seed(seed, task, attempt) = sha256("vpdd-eval-video:{seed}:{task}:{attempt}")`` (31 bits). The
training collector hashes ``"{data.robot.seed}:{task}:{attempt}"`` (:func:`vpdd.data.collect.episode_seed`),
which never spells the same string, so the two only meet by a 31-bit hash collision; such seeds are skipped
explicitly: every seed the collector could have used (``demos_per_task * max_attempts_per_demo`` attempts
from ``data.robot.seed``), every seed the actionless task video could have used (``data.task_video``) and
every seed listed in the training data's ``index.json`` (``robot``) is excluded (the seed rules live in
:mod:`vpdd.eval.scenes`). As in the training data, failed scripted episodes are dropped (``keep_failures`` keeps them).
Alternatively ``heldout`` names a folder of episodes (``index.json``) that were not used for training; an
episode whose (task, seed) is in the training data is refused.

**Windows.** As in training (:mod:`vpdd.train.datasets`, the token cache's convention): the history is the
``encode_window`` frames ending at step ``t`` (the first frame repeated before the episode start) and the
target is the window ending at ``min(t + future_offset, T - 1)``, with ``future_offset`` read from the
checkpoint's own training config. ``windows_per_episode`` steps are spread evenly over
``0 .. max(0, T - 1 - future_offset)`` so the real future is a full ``future_offset`` steps ahead (the
end-of-episode windows where the target is clamped are left out: there the future is the present).

**Scores** (:mod:`vpdd.tokenizer.metrics`): PSNR per clip on [0, 1] frames (identical clips give
:data:`PSNR_CAP_DB` = 100 dB, from the 1e-10 floor on the MSE, instead of infinity) and SSIM per clip
(Gaussian 11x11 window), averaged over the windows of a task; the ``mean`` is the mean over tasks.

**Determinism.** The policy's generator is reset per episode to a seed derived from (``seed``, task, episode
number), and windows are predicted in a fixed order and batch; the same inputs give the same bytes on the
same machine. Outputs (:func:`write_outputs`): ``metrics.json`` (mean and per-task scores), ``run.json``
beside it (checkpoint, counts, settings, held-out episodes, per-window scores), ``side_by_side.png``,
``side_by_side.gif``, each written atomically.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.eval.scenes import HELDOUT_DEFAULT_SEED, SEED_NAMESPACE, hash31, heldout_seed, training_seeds

log = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0  # vpdd.tokenizer.metrics.psnr floors the MSE at 1e-10: 10 log10(1 / 1e-10)
ROWS = ("predicted", "reconstruction", "copy_last")
METRICS_FILE, PNG_FILE, GIF_FILE = "metrics.json", "side_by_side.png", "side_by_side.gif"
# metrics.json keeps ``mean`` and ``per_task``; the rest describes the run and goes to run.json beside it.
RUN_KEYS = ("checkpoint", "counts", "settings", "heldout", "psnr_cap_db", "windows")


class VideoEvalError(ValueError):
    """Bad input to the video-quality evaluation; the message names the file, key or value."""


@dataclass
class VideoEvalSettings:
    episodes_per_task: int = 2
    windows_per_episode: int = 4
    sampling_stride: int | None = 10  # reverse-diffusion stride; None: the checkpoint's diffusion.sampling_stride
    seed: int = HELDOUT_DEFAULT_SEED
    examples_per_task: int = 2  # rows per task in the PNG / GIF
    batch_size: int = 16  # windows per reverse diffusion
    keep_failures: bool = False
    max_attempts_per_episode: int = 3
    probe_windows_per_episode: int = 12  # held-out states per episode for the foresight probe (0: no probe)

    def check(self) -> None:
        if self.probe_windows_per_episode < 0:
            raise VideoEvalError(f"probe_windows_per_episode={self.probe_windows_per_episode}: expected >= 0")
        for key in ("episodes_per_task", "windows_per_episode", "batch_size", "max_attempts_per_episode"):
            if getattr(self, key) < 1:
                raise VideoEvalError(f"{key}={getattr(self, key)}: expected a value >= 1")
        if self.examples_per_task < 0:
            raise VideoEvalError(f"examples_per_task={self.examples_per_task}: expected a value >= 0")
        if self.sampling_stride is not None and self.sampling_stride < 1:
            raise VideoEvalError(f"sampling_stride={self.sampling_stride}: expected a value >= 1")


# ------------------------------------------------------------------------------------------ held-out clips
def policy_seed(seed: int, task: str, episode: int) -> int:
    """The policy generator's seed for the windows of one held-out episode."""
    return hash31(f"{SEED_NAMESPACE}-policy:{int(seed)}:{task}:{int(episode)}")


def params_render(params_env: Any) -> dict[str, Any]:
    """The render settings of params.yaml's ``env`` (camera, resolution, flip, crop, renderer): what
    :func:`collect_heldout` takes."""
    return {"camera": str(params_env.camera), "resolution": int(params_env.resolution), "flip": bool(params_env.flip),
            "crop": float(params_env.crop), "fast_render": bool(params_env.fast_render),
            "render_backend": str(params_env.render_backend)}


def render_settings(params_env: Any, checkpoint_config: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """Camera, resolution, flip, crop of the training frames: the checkpoint's ``env`` if it has one, else
    params.yaml's ``env``; the resolution must be the tokenizer's."""
    env = checkpoint_config.get("env")
    source = "checkpoint" if env else "params"
    out = {**params_render(params_env), "source": source}
    if env:
        out.update(camera=str(env["camera"]), resolution=int(env["resolution"]), flip=bool(env["flip"]),
                   crop=float(env.get("crop", 1.0)))
    if source == "checkpoint":
        differ = {k: (getattr(params_env, k), out[k]) for k in ("camera", "resolution", "flip", "crop")
                  if getattr(params_env, k) != out[k]}
        if differ:
            log.warning("params.yaml env differs from the checkpoint's %s; rendering like the checkpoint", differ)
    tok_res = int(checkpoint_config["tokenizer"]["config"]["resolution"])
    if out["resolution"] != tok_res:
        raise VideoEvalError(f"env.resolution={out['resolution']} ({source}) but the tokenizer of {checkpoint} takes "
                             f"{tok_res}x{tok_res} frames; evaluate with the params the checkpoint was trained with")
    return out


def check_training_data(robot: str | Path, tasks: Sequence[str], render: dict[str, Any]) -> None:
    """Refuse render settings that differ from those recorded in the training episodes (one file per task)."""
    from vpdd.data.episodes import EpisodeStore

    store = EpisodeStore(robot)
    keys = {"camera": "camera", "resolution": "resolution", "flipped": "flip", "crop": "crop"}
    for task in tasks:
        entries = [e for e in store.entries if e.get("task") == task]
        if not entries:
            continue
        meta = store.load(entries[0]).meta
        for mkey, rkey in keys.items():
            if mkey not in meta:
                continue
            want = render[rkey]
            same = math.isclose(float(meta[mkey]), float(want)) if rkey == "crop" else meta[mkey] == want
            if not same:
                raise VideoEvalError(f"{Path(robot) / entries[0]['path']}: recorded {mkey}={meta[mkey]!r}, but the "
                                     f"held-out clips would be rendered with {rkey}={render[rkey]!r} "
                                     f"({render['source']}); they must be rendered like the training data")


def collect_heldout(tasks: Sequence[str], render: dict[str, Any], max_steps: int, steps_after_success: int,
                    settings: VideoEvalSettings, exclude: dict[str, set[int]],
                    progress: bool = False) -> tuple[list, dict]:
    """Scripted-expert episodes of ``tasks`` on held-out scenes; returns (episodes, collection report)."""
    from tqdm import tqdm

    from vpdd.data.collect import rollout
    from vpdd.envs.metaworld import MetaWorldEnv, scripted_policy

    episodes, report = [], {}
    bar = tqdm(total=len(tasks) * settings.episodes_per_task, desc="held-out clips", unit="episode",
               disable=not progress)
    for task in tasks:
        kept, attempt, failures, skipped = [], 0, 0, 0
        limit = settings.episodes_per_task * settings.max_attempts_per_episode
        with MetaWorldEnv(task, render["camera"], render["resolution"], render["flip"], render["fast_render"],
                          render["render_backend"], max_episode_steps=max_steps + 1, crop=render["crop"]) as env:
            expert = scripted_policy(task)
            while len(kept) < settings.episodes_per_task and attempt < limit:
                seed = heldout_seed(settings.seed, task, attempt)
                attempt += 1
                if seed in exclude.get(task, set()):
                    skipped += 1  # a hash collision with a training seed: never evaluate on a training scene
                    log.info("%s: held-out seed %d is a training seed; skipped", task, seed)
                    continue
                ep = rollout(env, expert, seed, max_steps, steps_after_success)
                ep.meta["heldout_attempt"] = attempt - 1
                if not ep.meta["success"]:
                    failures += 1
                    if not settings.keep_failures:
                        continue
                kept.append(ep)
                bar.update(1)
        if len(kept) < settings.episodes_per_task:
            bar.close()
            raise VideoEvalError(
                f"{task}: only {len(kept)} successful scripted episodes in {attempt} held-out attempts, "
                f"{settings.episodes_per_task} wanted (data.robot.max_steps={max_steps}); raise max_steps, "
                "lower --episodes or pass --keep-failures"
            )
        report[task] = {"attempts": attempt, "failures": failures, "skipped_training_seeds": skipped}
        episodes.extend(kept)
    bar.close()
    return episodes, report


def load_heldout(root: str | Path, tasks: Sequence[str], per_task: int, exclude: dict[str, set[int]]) -> list:
    """The first ``per_task`` episodes (seed order) of each task in ``root``; none may be a training episode."""
    from vpdd.data.episodes import EpisodeStore

    store = EpisodeStore(root)
    entries = store.select(list(tasks), per_task=per_task)
    clash = [e["path"] for e in entries if e.get("seed") is not None and int(e["seed"]) in exclude.get(e["task"], ())]
    if clash:
        raise VideoEvalError(f"{root}: episodes {clash[:3]} have the (task, seed) of training episodes; held-out "
                             "clips must come from scenes the model was not trained on")
    episodes = []
    for entry in entries:
        ep = store.load(entry)
        ep.meta.setdefault("task", entry["task"])
        ep.meta.setdefault("seed", entry.get("seed"))
        ep.meta.setdefault("instruction", entry.get("instruction", ""))
        episodes.append(ep)
    return episodes


# ------------------------------------------------------------------------------------------------ scoring
def window_steps(length: int, future_offset: int, n: int) -> np.ndarray:
    """Up to ``n`` history end steps spread evenly over 0 .. max(0, length - 1 - future_offset)."""
    hi = max(0, int(length) - 1 - int(future_offset))
    return np.unique(np.round(np.linspace(0, hi, n)).astype(np.int64))


def clip_windows(frames: np.ndarray, steps: np.ndarray, future_offset: int, window: int) -> tuple[np.ndarray, ...]:
    """(history (M, W, H, W, 3), real future (M, W, H, W, 3), target end steps (M,)), training's convention."""
    from vpdd.tokenizer.data import window_indices

    steps = np.asarray(steps, dtype=np.int64)
    ends = np.minimum(steps + int(future_offset), len(frames) - 1)
    return frames[window_indices(steps, window)], frames[window_indices(ends, window)], ends


def clip_scores(real: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip (PSNR dB capped at :data:`PSNR_CAP_DB`, SSIM) of uint8 clips (B, T, H, W, 3)."""
    from vpdd.tokenizer.metrics import psnr, ssim

    if real.shape != other.shape:
        raise VideoEvalError(f"cannot compare clips of shapes {real.shape} and {other.shape}")
    a, b = torch.from_numpy(np.ascontiguousarray(real)), torch.from_numpy(np.ascontiguousarray(other))
    return psnr(a, b).clamp_max(PSNR_CAP_DB).double().numpy(), ssim(a, b).double().numpy()


@dataclass
class EpisodeWindows:
    """The scored windows of one held-out episode."""

    task: str
    seed: int | None
    steps: np.ndarray  # (M,) history end steps t
    ends: np.ndarray  # (M,) target window end steps
    history: np.ndarray  # (M, W, H, W, 3) uint8
    real: np.ndarray
    predicted: np.ndarray
    reconstruction: np.ndarray
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # row -> {"psnr", "ssim"} (M,)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # vpdd.eval.foresight.token_scores (M,)
    probe: dict[str, np.ndarray] | None = None  # vpdd.eval.foresight.probe_episode, on its own states


def evaluate_windows(policy: Any, episodes: Sequence[Any], settings: VideoEvalSettings, future_offset: int,
                     progress: bool = False) -> list[EpisodeWindows]:
    """Predict and score the sampled windows of every episode (see the module docstring)."""
    from tqdm import tqdm

    from vpdd.eval.foresight import probe_episode, token_scores
    from vpdd.tokenizer.model import to_uint8

    probe = settings.probe_windows_per_episode > 0 and policy.discretizer is not None and policy.is_policy
    out: list[EpisodeWindows] = []
    number: dict[str, int] = {}
    for ep in tqdm(episodes, desc="video prediction", unit="episode", disable=not progress):
        task = ep.task
        k = number[task] = number.get(task, -1) + 1
        steps = window_steps(len(ep), future_offset, settings.windows_per_episode)
        history, real, ends = clip_windows(ep.frames, steps, future_offset, policy.window)
        policy.reset(seed=policy_seed(settings.seed, task, k))
        preds, recons, tokens = [], [], {"predicted": [], "true": [], "history": []}
        for i in range(0, len(steps), settings.batch_size):
            sl = slice(i, i + settings.batch_size)
            sample = policy.predict({"history": history[sl]}, [ep.instruction] * len(history[sl]))
            true = policy._encode_windows(real[sl])
            with torch.no_grad():
                preds.append(to_uint8(policy.tokenizer.decode(sample.video_tokens)).cpu().numpy())
                recons.append(to_uint8(policy.tokenizer.decode(true)).cpu().numpy())
            for key, grid in (("predicted", sample.video_tokens), ("true", true), ("history", sample.history_tokens)):
                tokens[key].append(grid.cpu())
        predicted, reconstruction = np.concatenate(preds), np.concatenate(recons)
        if predicted.shape != real.shape:
            raise VideoEvalError(f"the model predicts clips of shape {predicted.shape[1:]}, but the real future "
                                 f"window is {real.shape[1:]}; is encode_window the tokenizer's clip length?")
        copy_last = np.repeat(history[:, -1:], real.shape[1], axis=1)
        rec = EpisodeWindows(task, ep.meta.get("seed"), steps, ends, history, real, predicted, reconstruction)
        for row, clip in (("predicted", predicted), ("reconstruction", reconstruction), ("copy_last", copy_last)):
            p, s = clip_scores(real, clip)
            rec.scores[row] = {"psnr": p, "ssim": s}
        rec.tokens = token_scores(*(torch.cat(tokens[key]) for key in ("predicted", "true", "history")))
        if probe:
            p_steps = window_steps(len(ep), future_offset, settings.probe_windows_per_episode)
            p_hist, p_real, _ = clip_windows(ep.frames, p_steps, future_offset, policy.window)
            rec.probe = probe_episode(policy, ep, p_steps, p_hist, policy._encode_windows(p_real),
                                      policy_seed(settings.seed, task, k), settings.batch_size)
        out.append(rec)
    return out


def summarise(results: Sequence[EpisodeWindows], tasks: Sequence[str]) -> dict[str, Any]:
    """Per task: mean PSNR/SSIM of each row over its windows, and counts; ``mean``: the mean over tasks;
    ``tokens`` and ``foresight_probe`` (:mod:`vpdd.eval.foresight`)."""
    from vpdd.eval.foresight import summarise_probe, summarise_tokens

    per_task, counts = {}, {}
    for task in tasks:
        mine = [r for r in results if r.task == task]
        counts[task] = {"episodes": len(mine), "windows": int(sum(len(r.steps) for r in mine))}
        per_task[task] = {
            row: {m: float(np.mean(np.concatenate([r.scores[row][m] for r in mine]))) for m in ("psnr", "ssim")}
            for row in ROWS
        }
    mean = {row: {m: float(np.mean([per_task[t][row][m] for t in tasks])) for m in ("psnr", "ssim")} for row in ROWS}
    summary = {"mean": mean, "per_task": per_task, "counts": counts,
               "tokens": summarise_tokens({t: {k: np.concatenate([r.tokens[k] for r in results if r.task == t])
                                               for k in results[0].tokens} for t in tasks})}
    if results and results[0].probe is not None:
        summary["foresight_probe"] = summarise_probe(
            {t: {k: np.concatenate([r.probe[k] for r in results if r.task == t]) for k in results[0].probe}
             for t in tasks})
    return summary


# ------------------------------------------------------------------------------------------------- images
def _examples(results: Sequence[EpisodeWindows], tasks: Sequence[str], per_task: int) -> list[tuple]:
    """(EpisodeWindows, window index) pairs: ``per_task`` windows of each task, spread over its windows."""
    chosen = []
    for task in tasks:
        flat = [(r, i) for r in results if r.task == task for i in range(len(r.steps))]
        if flat and per_task:
            picks = np.unique(np.round(np.linspace(0, len(flat) - 1, min(per_task, len(flat)))).astype(int))
            chosen.extend(flat[p] for p in picks)
    return chosen


def _scale(res: int) -> int:
    return max(1, math.ceil(64 / res))  # frames are shown at least 64 px wide (nearest-neighbour)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        return ImageFont.load_default()


def _up(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame.repeat(scale, axis=0).repeat(scale, axis=1)


def side_by_side_png(results: Sequence[EpisodeWindows], tasks: Sequence[str], per_task: int,
                     future_offset: int) -> bytes:
    """One row per example: last history frame | real future clip | predicted clip | tokenizer reconstruction."""
    from PIL import Image, ImageDraw

    examples = _examples(results, tasks, per_task)
    if not examples:
        raise VideoEvalError("no windows to draw (examples_per_task=0 or no episodes)")
    w_frames, res = examples[0][0].real.shape[1], examples[0][0].real.shape[2]
    s, pad, gap, label_w, head_h = _scale(res), 2, 12, 180, 20
    cell = res * s
    groups = [1, w_frames, w_frames, w_frames]
    group_w = [n * cell + (n - 1) * pad for n in groups]
    width = label_w + sum(group_w) + gap * (len(groups) - 1)
    height = head_h + len(examples) * (cell + pad)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(img), _font(12)
    first = future_offset - w_frames + 1
    titles = ["history, step t", f"real future t+{first}..t+{future_offset}", "predicted (decoded tokens)",
              "tokenizer reconstruction"]
    x0s = [label_w + sum(group_w[:g]) + gap * g for g in range(len(groups))]
    for x, title in zip(x0s, titles, strict=True):
        draw.text((x, 3), title, fill=(0, 0, 0), font=font)
    for row, (rec, i) in enumerate(examples):
        y = head_h + row * (cell + pad)
        draw.text((4, y + 4), rec.task, fill=(0, 0, 0), font=font)
        draw.text((4, y + 20), f"seed {rec.seed}  t={int(rec.steps[i])}", fill=(80, 80, 80), font=font)
        p = rec.scores["predicted"]
        draw.text((4, y + 36), f"pred {p['psnr'][i]:.1f} dB {p['ssim'][i]:.2f}", fill=(80, 80, 80), font=font)
        clips = [rec.history[i, -1:], rec.real[i], rec.predicted[i], rec.reconstruction[i]]
        for x0, clip in zip(x0s, clips, strict=True):
            for j, frame in enumerate(clip):
                img.paste(Image.fromarray(_up(frame, s)), (x0 + j * (cell + pad), y))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def side_by_side_gif(results: Sequence[EpisodeWindows], tasks: Sequence[str], per_task: int,
                     future_offset: int, frame_ms: int = 400) -> bytes:
    """Animated real | predicted for the PNG's examples: the history window, then the future clip."""
    from PIL import Image, ImageDraw

    examples = _examples(results, tasks, per_task)
    if not examples:
        raise VideoEvalError("no windows to animate (examples_per_task=0 or no episodes)")
    w_frames, res = examples[0][0].real.shape[1], examples[0][0].real.shape[2]
    s, pad, label_w, head_h = _scale(res), 4, 168, 20
    cell = res * s
    width, height = label_w + 2 * cell + pad, head_h + len(examples) * (cell + pad)
    font = _font(12)
    frames = []
    for phase in ("history", "future"):
        for j in range(w_frames):
            img = Image.new("RGB", (width, height), (255, 255, 255))
            draw = ImageDraw.Draw(img)
            k = j - w_frames + 1 + (future_offset if phase == "future" else 0)
            when = f"t{k:+d}" if k else "t"
            draw.text((4, 3), f"{phase} {when}", fill=(0, 0, 0), font=font)
            draw.text((label_w, 3), "real", fill=(0, 0, 0), font=font)
            draw.text((label_w + cell + pad, 3), "predicted" if phase == "future" else "(history)",
                      fill=(0, 0, 0), font=font)
            for row, (rec, i) in enumerate(examples):
                y = head_h + row * (cell + pad)
                draw.text((4, y + 4), rec.task, fill=(0, 0, 0), font=font)
                draw.text((4, y + 20), f"seed {rec.seed} t={int(rec.steps[i])}", fill=(80, 80, 80), font=font)
                left, right = (rec.history[i, j],) * 2 if phase == "history" else (rec.real[i, j], rec.predicted[i, j])
                img.paste(Image.fromarray(_up(left, s)), (label_w, y))
                img.paste(Image.fromarray(_up(right, s)), (label_w + cell + pad, y))
            frames.append(img)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- the run
def run_video_eval(policy_dir: str | Path, cfg: Any, out: str | Path, settings: VideoEvalSettings | None = None, *,
                   tasks: Sequence[str] | None = None, robot: str | Path | None = None,
                   heldout: str | Path | None = None, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Evaluate ``policy_dir`` (a ``vpdd-pretrain`` or ``vpdd-policy`` checkpoint) and write the outputs to
    ``out``; returns the metrics dict. ``cfg`` is the composed params (:class:`vpdd.config.VPDDConfig`)."""
    from vpdd.envs.tasks import unknown_tasks
    from vpdd.models.checkpoint import read_vpdd_config
    from vpdd.policy import VPDDPolicy

    settings = settings or VideoEvalSettings()
    settings.check()
    policy_dir = Path(policy_dir)
    if not policy_dir.is_dir():
        raise VideoEvalError(f"--policy {policy_dir}: no such checkpoint directory (expected models/pretrain or "
                             "models/policy)")
    if robot is not None and not Path(robot).is_dir():
        raise VideoEvalError(f"--robot {robot}: no such training-data folder")
    ck_config = read_vpdd_config(policy_dir)  # names the path if this is not a vpdd checkpoint
    tasks = list(tasks or cfg.eval.tasks or cfg.data.robot.tasks)
    if bad := unknown_tasks(tasks):
        raise VideoEvalError(f"tasks {bad}: unknown Meta-World v3 task names")
    future_offset = int(ck_config["train"].get("future_offset", 20))
    exclude = training_seeds(cfg.data.robot, tasks, robot, cfg.data.task_video)
    # Load the model before any MuJoCo rendering: importing triton (pulled in by the GPT-2 action network)
    # after Mesa's EGL/llvmpipe has loaded its LLVM crashes the process (SIGSEGV in triton/knobs.py).
    policy = VPDDPolicy.from_pretrained(policy_dir, device=device, kernel_impl=cfg.kernel.impl,
                                        sampling_stride=settings.sampling_stride)

    if heldout is not None:
        episodes = load_heldout(heldout, tasks, settings.episodes_per_task, exclude)
        render, collection, source = None, None, str(heldout)
    else:
        render = render_settings(cfg.env, ck_config, policy_dir)
        if robot is not None:
            check_training_data(robot, tasks, render)
        episodes, collection = collect_heldout(tasks, render, cfg.data.robot.max_steps,
                                               cfg.data.robot.steps_after_success, settings, exclude, progress)
        source = "metaworld"

    for ep in episodes:
        if ep.frames.shape[1:3] != (policy.resolution, policy.resolution):
            raise VideoEvalError(f"held-out episode {ep.task} seed {ep.meta.get('seed')}: frames "
                                 f"{ep.frames.shape[1:3]}, the checkpoint's tokenizer takes "
                                 f"{policy.resolution}x{policy.resolution}")
    results = evaluate_windows(policy, episodes, settings, future_offset, progress)
    summary = summarise(results, tasks)
    meta = policy.loaded.checkpoint.meta
    stride = settings.sampling_stride or ck_config["scheduler"].get("sampling_stride")
    metrics = {
        "checkpoint": {"path": str(policy_dir), "kind": ck_config["kind"], "step": meta.get("step"),
                       "checkpoint_hash": meta.get("checkpoint_hash")},
        "mean": summary["mean"],
        "per_task": summary["per_task"],
        "tokens": summary["tokens"],
        **({"foresight_probe": summary["foresight_probe"]} if "foresight_probe" in summary else {}),
        "counts": {"tasks": len(tasks), "episodes": len(episodes),
                   "windows": int(sum(c["windows"] for c in summary["counts"].values())),
                   "per_task": summary["counts"]},
        "settings": {**asdict(settings), "sampling_stride": stride, "future_offset": future_offset,
                     "kernel_impl": policy.scheduler.kernel_impl_for(),
                     "encode_window": policy.window, "resolution": policy.resolution, "tasks": tasks,
                     "truncation_r": ck_config["scheduler"].get("truncation_r")},
        "heldout": {"source": source, "render": render, "collection": collection,
                    "seed_rule": f"sha256('{SEED_NAMESPACE}:{{seed}}:{{task}}:{{attempt}}')[:4] & 0x7fffffff",
                    "training_seed_base": int(cfg.data.robot.seed), "training_data": None if robot is None
                    else str(robot),
                    "episodes": [{"task": ep.task, "seed": ep.meta.get("seed"), "length": len(ep),
                                  "success": bool(ep.meta.get("success", True))} for ep in episodes]},
        "psnr_cap_db": PSNR_CAP_DB,
        "windows": [{"task": r.task, "seed": r.seed, "t": int(t), "target_end": int(e),
                     **{f"{row}_{m}": round(float(r.scores[row][m][i]), 6) for row in ROWS for m in ("psnr", "ssim")}}
                    for r in results for i, (t, e) in enumerate(zip(r.steps, r.ends, strict=True))],
    }
    write_outputs(out, metrics, results, tasks, settings.examples_per_task, future_offset)
    return metrics


def write_outputs(out: str | Path, metrics: dict[str, Any], results: Sequence[EpisodeWindows], tasks: Sequence[str],
                  examples_per_task: int, future_offset: int) -> dict[str, Path]:
    """Render both images first, then write every file atomically (metrics.json last)."""
    from vpdd.utils.io import atomic_write_bytes
    from vpdd.utils.records import write_metrics

    out = Path(out)
    paths = {"metrics": out / METRICS_FILE, "png": out / PNG_FILE, "gif": out / GIF_FILE}
    if examples_per_task > 0:
        png = side_by_side_png(results, tasks, examples_per_task, future_offset)
        gif = side_by_side_gif(results, tasks, examples_per_task, future_offset)
        atomic_write_bytes(paths["png"], png)
        atomic_write_bytes(paths["gif"], gif)
    else:
        del paths["png"], paths["gif"]
    write_metrics(paths["metrics"], metrics, RUN_KEYS)
    return paths
