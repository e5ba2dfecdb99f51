"""The DVC flows: ``vpdd-pipeline`` (whatever ``dvc repro`` runs) and one flow per group of stages, all made
by one factory, :func:`dvc_flow`.

Every flow does the same (:func:`stage_flow_body`): ``vpdd data fetch`` first (idempotent,
retried), then ``dvc repro STAGES`` (or, with ``overrides``, ``dvc exp run -n EXP -S key=value ... STAGES``),
then a metrics table per stage, a card per figure and curve folder (embedded, flows/media_tasks.py), the
per-task success table and a card per rollout video where evaluation results exist, the lineage markdown,
and optionally ``dvc push``. They differ only in the stages they run:

==================  =======================================  ==========================================
flow                stages                                   parameters
==================  =======================================  ==========================================
``vpdd-data``       inspect_robot_data, render_task_video,   overrides, exp_name, force, fetch, push
                    ingest_videos
``vpdd-tokenize``   train_tokenizer, tokenize                (the same)
``vpdd-pretrain``   pretrain                                 (the same)
``vpdd-finetune``   finetune                                 (the same)
``vpdd-evaluate``   evaluate (+ the success table)           (the same)
``vpdd-bc``         train_bc, evaluate_bc                    (the same)
``vpdd-pipeline``   all, or ``targets`` and their upstream   overrides, exp_name, targets, force, fetch,
                    stages (+ the success table)             push
==================  =======================================  ==========================================

Each flow is a module attribute named after it (``vpdd-data`` -> ``data_flow``): deployments record the
entrypoint ``flows/pipeline_flow.py:<that name>`` (prefect.yaml, flows/serve.py). Run one without a
deployment with ``python flows/pipeline_flow.py [FLOW]`` (default ``vpdd-pipeline``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from artifacts_tasks import publish_eval, publish_lineage, publish_stage_artifacts
from dvc_tasks import REPO, dvc_push, fetch_data, run_stages
from prefect import Flow, flow


def stage_flow_body(stages: list[str], overrides: list[str] | None, exp_name: str | None, force: bool,
                    fetch: bool, push: bool, evaluation: bool = False, repo: Path = REPO) -> dict[str, Any]:
    """What every flow does: fetch data, run the stages through DVC, publish artifacts, push.

    - ``stages``: the DVC stages to run (with what they depend on); empty: the whole pipeline;
    - ``overrides``: params.yaml overrides ``["key=value", ...]``; with any, the run is a named DVC experiment
      (``dvc exp run -n EXP -S key=value ... STAGES``), otherwise ``dvc repro STAGES``;
    - ``exp_name``: the experiment's name (default: the Prefect flow run's name, e.g. ``cordial-cuckoo``);
    - ``force``: re-run the stages even if DVC finds them up to date (``-f``);
    - ``fetch``: first make data/ match data.dvc (``vpdd data fetch``; idempotent, retried);
    - ``push``: ``dvc push`` afterwards (retried);
    - ``evaluation``: also publish the per-task success table and the rollout-video cards.
    """
    if fetch:
        fetch_data(repo)
    run = run_stages(stages, overrides, exp_name, force, repo)
    keys = publish_stage_artifacts(stages or run["stages"], repo)
    if evaluation:
        keys += publish_eval(repo)
    keys.append(publish_lineage(run, repo))
    if push:
        dvc_push(None, repo)
    return {**run, "artifacts": keys}


PARAMETER_DOCS = {
    "overrides": "list of strings, optional. params.yaml overrides as `key=value`, e.g. `pretrain.steps=50`; "
                 "with any, the run is a named DVC experiment (`dvc exp run -S key=value ...`). Empty: `dvc repro`.",
    "exp_name": "string, optional. The DVC experiment's name when there are overrides (default: this flow "
                "run's name).",
    "targets": "list of strings, optional. Run only these DVC stages and what they depend on, e.g. `evaluate` "
               "or `bench_predict@rlbench` (a matrix stage's own name means all its entries). Empty: all stages.",
    "force": "boolean. Re-run the stages even if DVC finds them up to date (`-f`).",
    "fetch": "boolean. First make data/ match data.dvc (`vpdd data fetch`; idempotent).",
    "push": "boolean. `dvc push` the outputs afterwards.",
}


def _docstring(description: str, names: list[str]) -> str:
    """The flow's docstring: its description, then an ``Args:`` section Prefect turns into the parameter
    descriptions of the deployment's Custom run form. Each starts with the type: the form shows none for an
    optional one (``list[str] | None`` is an anyOf of array and null in the schema)."""
    args = "\n".join(f"    {n}: {PARAMETER_DOCS[n]}" for n in names)
    return f"{description}\n\nArgs:\n{args}\n"


def dvc_flow(name: str, stages: list[str] | None, description: str, evaluation: bool = False) -> Flow:
    """The flow ``name`` over the DVC ``stages``; ``stages=None`` makes the pipeline flow, whose ``targets``
    parameter chooses the stages (all when empty). ``evaluation`` adds the success table and video cards."""
    if stages is None:

        def run(overrides: list[str] | None = None, exp_name: str | None = None, targets: list[str] | None = None,
                force: bool = False, fetch: bool = True, push: bool = False) -> dict:
            return stage_flow_body(list(targets or []), overrides, exp_name, force, fetch, push, evaluation)
    else:

        def run(overrides: list[str] | None = None, exp_name: str | None = None, force: bool = False,
                fetch: bool = True, push: bool = False) -> dict:
            return stage_flow_body(list(stages), overrides, exp_name, force, fetch, push, evaluation)

    # The entrypoint Prefect records is <this file>:<__qualname__>: the module attribute holding the flow.
    run.__name__ = run.__qualname__ = name.removeprefix("vpdd-").replace("-", "_") + "_flow"
    run.__doc__ = _docstring(description, [n for n in run.__code__.co_varnames[: run.__code__.co_argcount]])
    return flow(name=name, description=description, log_prints=True)(run)


data_flow = dvc_flow(
    "vpdd-data", ["inspect_robot_data", "render_task_video", "ingest_videos"],
    "Raw data and the data stages: `vpdd data fetch` (data/ as pinned by data.dvc), then the DVC stages "
    "inspect_robot_data (validated robot episodes), render_task_video (actionless video of the tasks) and "
    "ingest_videos (the actionless clip corpus).")
tokenize_flow = dvc_flow(
    "vpdd-tokenize", ["train_tokenizer", "tokenize"],
    "The video tokenizer and the token cache: DVC stages train_tokenizer (VQ-VAE, models/tokenizer) and "
    "tokenize (build/tokens).")
pretrain_flow = dvc_flow(
    "vpdd-pretrain", ["pretrain"],
    "Pre-training the video-prediction diffusion model on actionless video: DVC stage pretrain "
    "(models/pretrain).")
finetune_flow = dvc_flow(
    "vpdd-finetune", ["finetune"],
    "Fine-tuning on robot demonstrations: DVC stage finetune (the policy checkpoint with its lineage.json; "
    "its lineage appears in the run's `lineage` artifact).")
evaluate_flow = dvc_flow(
    "vpdd-evaluate", ["evaluate"],
    "Evaluation: DVC stage evaluate, then the per-task success table (`success-*` artifact) and the rollout "
    "videos, embedded (`media-*` artifacts).", evaluation=True)
bc_flow = dvc_flow(
    "vpdd-bc", ["train_bc", "evaluate_bc"],
    "The behaviour-cloning baseline: DVC stages train_bc (models/bc, on the fine-tuning demonstrations) and "
    "evaluate_bc (the closed-loop protocol of evaluate, results/eval_bc).")
pipeline_flow = dvc_flow(
    "vpdd-pipeline", None,
    "The whole DVC pipeline (`dvc repro`, or a named `dvc exp run` with overrides), then its artifacts. "
    "``targets`` limits the run to these stages and what they depend on.", evaluation=True)

FLOWS = (data_flow, tokenize_flow, pretrain_flow, finetune_flow, evaluate_flow, bc_flow, pipeline_flow)


if __name__ == "__main__":
    chosen = sys.argv[1] if len(sys.argv) > 1 else "vpdd-pipeline"
    by_name = {f.name: f for f in FLOWS}
    if chosen not in by_name:
        sys.exit(f"unknown flow {chosen!r}; one of {sorted(by_name)}")
    by_name[chosen]()
