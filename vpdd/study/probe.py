"""The held-out action probe of a study: every cell's action-chunk error against the scripted expert on one
shared set of held-out states.

Closed-loop success says whether a policy works; the probe says how far its actions are from the expert's on
scenes no cell trained on, for the behaviour-cloning baseline and the VPDD arms alike
(:func:`vpdd.eval.foresight.heldout_action_error`, the policy loaded as closed-loop evaluation loads it). The
episodes (``probe.episodes_per_task`` scripted-expert episodes per task, on the held-out scenes of
``vpdd eval video``'s seed rule with every training scene excluded) are collected once per study into
``out/probe_episodes/``; every cell scores the same ``probe.states_per_episode`` states of each with the same
sampler seeds, so the probe is paired across arms and seeds. A cell's ``probe.json`` records the probe's
fingerprint; a study run scores every done cell whose probe is missing or stale, after its pending cells.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vpdd.study.spec import StudySpec, fingerprint
from vpdd.utils.io import atomic_write_json

PROBE_FILE = "probe.json"
EPISODES_DIR = "probe_episodes"


def probe_tasks(cfg: Any) -> list[str]:
    return list(cfg.eval.tasks or cfg.data.robot.tasks)


def probe_fingerprint(spec: StudySpec, cfg: Any) -> str:
    """What a cell's probe depends on besides the cell itself: the settings, the tasks and the training data."""
    return fingerprint({"probe": asdict(spec.probe), "tasks": probe_tasks(cfg), "robot": spec.robot,
                        "robot_seed": int(cfg.data.robot.seed), "env": asdict(cfg.env)})


def prepare_episodes(spec: StudySpec, cfg: Any, root: str | Path) -> Path:
    """Collect the probe's held-out episodes into ``root`` (atomically) unless it holds them already."""
    from vpdd.eval.scenes import training_seeds
    from vpdd.eval.video_quality import VideoEvalSettings

    root, fp = Path(root), probe_fingerprint(spec, cfg)
    index = root / "index.json"
    if index.is_file() and json.loads(index.read_text()).get("probe_fingerprint") == fp:
        return root
    tasks = probe_tasks(cfg)
    exclude = training_seeds(cfg.data.robot, tasks, spec.robot, cfg.data.task_video)
    settings = VideoEvalSettings(episodes_per_task=spec.probe.episodes_per_task, seed=spec.probe.seed,
                                 keep_failures=spec.probe.keep_failures)
    return collect_episodes(cfg, root, tasks, exclude, settings, {"probe_fingerprint": fp})


def collect_episodes(cfg: Any, root: str | Path, tasks: list[str], exclude: dict[str, set[int]], settings: Any,
                     extra: dict[str, Any]) -> Path:
    """Scripted-expert episodes of ``tasks`` on scenes outside ``exclude`` (``settings``: a
    ``VideoEvalSettings``), rendered as ``cfg.env`` says, written to ``root`` in one atomic step; ``extra``
    joins the render settings and the collection report in its ``index.json``."""
    from vpdd.data.episodes import save_episode, write_index
    from vpdd.eval.video_quality import collect_heldout, params_render
    from vpdd.utils.io import atomic_directory

    root, render = Path(root), params_render(cfg.env)
    episodes, report = collect_heldout(tasks, render, cfg.data.robot.max_steps, cfg.data.robot.steps_after_success,
                                       settings, exclude)
    with atomic_directory(root, check=False) as tmp:
        entries = []
        for k, ep in enumerate(episodes):
            rel = f"{ep.task}/episode_{k:04d}.npz"
            save_episode(tmp / rel, ep)
            entries.append({"path": rel, "task": ep.task, "instruction": ep.instruction, "seed": ep.meta["seed"],
                            "success": bool(ep.meta["success"]), "length": len(ep)})
        write_index(tmp, entries, extra={**extra, "render": render, "collection": report})
    return root


def probe_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Score one done cell's policy on the probe's episodes (in a worker process); writes its ``probe.json``."""
    from vpdd.config import load_config
    from vpdd.eval.foresight import heldout_action_error
    from vpdd.eval.report import load_policy, settings_from_config
    from vpdd.eval.scenes import training_seeds
    from vpdd.eval.video_quality import load_heldout

    d = Path(job["dir"])
    cfg = load_config(d / "params.yaml")
    t0 = time.time()
    policy = load_policy(d / "policy", settings_from_config(cfg, device="cpu"))
    tasks = probe_tasks(cfg)
    exclude = training_seeds(cfg.data.robot, tasks, job["robot"], cfg.data.task_video)
    episodes = load_heldout(job["episodes"], tasks, job["probe"]["episodes_per_task"], exclude)
    result = heldout_action_error(policy, episodes, job["probe"]["states_per_episode"], job["probe"]["seed"],
                                  job["probe"]["batch_size"])
    record = {**job["cell"], "fingerprint": job["probe_fingerprint"], "cell_fingerprint": job["fingerprint"],
              "action_l1": result, "seconds": round(time.time() - t0, 1)}
    atomic_write_json(d / PROBE_FILE, record)
    return record
