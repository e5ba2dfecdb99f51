"""Running a study (:mod:`vpdd.study.spec`): pre-train each arm once, then fine-tune and evaluate every cell.

Layout of the output folder ``out`` (scratch, large) and the results folder (small, committed):

==============================================  =============================================================
``out/pretrain/<arm>/``                          the arm's pre-trained model (``arm.json``: params hash, time)
``out/tokens/<arm>/``                            an arm's own token cache (arms with ``pretrain.corpus``)
``out/cells/<arm>/demos<N>/seed<k>/``            ``params.yaml``, ``policy/``, ``finetune/``, ``eval/``, ``cell.json``
``out/probe_episodes/``                          the held-out episodes of every cell's action probe (:mod:`.probe`)
``results/cells/<arm>/demos<N>/seed<k>/``        ``cell.json``, ``metrics.json``, ``episodes.json``, ``probe.json``
``results/state.json``                           done / pending cells, seconds per cell, the machine
==============================================  =============================================================

A cell is done when its ``cell.json`` records the fingerprint of the settings it was run with (its params and
its arm's pre-training); a study run again skips done cells, resumes a fine-tuning stopped mid-way from its
checkpoint, and refuses to mix cells of changed settings into one study (start a new ``out``). After the cells,
every done cell whose held-out action probe is missing or stale is scored (:mod:`vpdd.study.probe`). Cells run in
``jobs`` worker processes of ``threads_per_job`` threads each (docs/study.md has the measurement that chose two
one-thread processes on the 2-core machine).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from vpdd.config import ConfigError, config_from_dict
from vpdd.study.spec import Cell, StudySpec, fingerprint, plan, with_overrides
from vpdd.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
RESULT_FILES = ("cell.json", "eval/metrics.json", "eval/episodes.json")
# The params sections a cell's / a pre-training's result depends on: what their fingerprints hash, so that an edit
# elsewhere in params.yaml (another stage's settings) does not make a study's finished cells stale.
CELL_SECTIONS = ("env", "tokenizer", "model", "diffusion", "finetune", "eval", "kernel")
BC_CELL_SECTIONS = ("env", "model", "finetune", "bc", "eval")
PRETRAIN_SECTIONS = ("env", "tokenizer", "model", "diffusion", "pretrain", "kernel")


def relevant(params: dict[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    """The ``sections`` of ``params`` and the robot data settings."""
    return {**{k: params.get(k) for k in sections}, "data.robot": params.get("data", {}).get("robot")}


class StudyRunError(RuntimeError):
    """A cell or an arm's pre-training failed, or the study folder holds cells of other settings."""


def base_params(spec: StudySpec) -> dict[str, Any]:
    path = Path(spec.params)
    if not path.is_file():
        raise ConfigError(f"study {spec.name}: params {path} does not exist")
    data = yaml.safe_load(path.read_text())
    config_from_dict(data, source=str(path))
    return data


def pretrain_params(spec: StudySpec, base: dict[str, Any], arm: str) -> dict[str, Any]:
    a = spec.arm(arm)
    assert a.pretrain is not None
    data = with_overrides(base, a.pretrain.overrides, f"study {spec.name} arm {arm}")
    config_from_dict(data, source=f"study {spec.name} arm {arm} pre-training")
    return data


def cell_params(spec: StudySpec, base: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The base params with the study's fine-tuning and evaluation overrides and the cell's own values."""
    where = f"study {spec.name} cell {cell.path}"
    arm = spec.arm(cell.arm)
    data = with_overrides(base, {**(spec.finetune if arm.policy == "vpdd" else spec.bc), **spec.eval}, where)
    own = {"finetune.demos_per_task": cell.demos}
    own.update({"finetune.seed": cell.seed, "finetune.init_from_pretrained": arm.pretrain is not None}
               if arm.policy == "vpdd" else {"bc.seed": cell.seed})
    data = with_overrides(data, own, where)
    config_from_dict(data, source=where)
    return data


def _set_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _init_worker(threads: int) -> None:
    import logging as _logging

    _logging.basicConfig(level=_logging.WARNING)
    _set_threads(threads)


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune and evaluate one cell (in a worker process); returns and writes its ``cell.json``."""
    from vpdd.config import load_config
    from vpdd.eval.report import evaluate, settings_from_config
    from vpdd.train.loop import train_stage

    d = Path(job["dir"])
    cfg = load_config(d / "params.yaml")
    t0 = time.time()
    if job["policy"] == "bc":
        from vpdd.bc.train import train_bc

        result = train_bc(cfg, robot=job["robot"], out=d / "policy", live_dir=d / "finetune", resume="auto",
                          device="cpu", params_file=None, progress=False)
    else:
        result = train_stage("finetune", cfg, tokens=job["tokens"], tokenizer=job["tokenizer"], out=d / "policy",
                             live_dir=d / "finetune", robot=job["robot"], pretrained=job["pretrained"],
                             resume="auto", device="cpu", params_file=None, progress=False)
    t1 = time.time()
    metrics = evaluate(d / "policy", settings_from_config(cfg, device="cpu"), asdict(cfg.env), d / "eval",
                       progress=False)
    t2 = time.time()
    record = {**job["cell"], "fingerprint": job["fingerprint"], "pretrain_fingerprint": job["pretrain_fingerprint"],
              "mean_success": metrics["mean_success"], "episodes": metrics["episodes"],
              # result.seconds counts the training time before a resume too: a cell's cost, not this call's
              "finetune": {"steps": result.step, "seconds": round(result.seconds, 1), "call_seconds": round(t1 - t0, 1),
                           "action_l1": result.metrics.get("eval/action_l1"),
                           "action_bin_acc": result.metrics.get("eval/action_bin_acc")},
              "eval_seconds": round(t2 - t1, 1), "threads": job["threads"]}
    atomic_write_json(d / "cell.json", record)
    return record


class StudyRunner:
    """Runs ``spec`` into ``out``, copying each finished cell's records to ``results``."""

    def __init__(self, spec: StudySpec, out: str | Path, results: str | Path,
                 echo: Callable[[str], None] = print):
        self.spec, self.out, self.results, self.echo = spec, Path(out), Path(results), echo
        self.base = base_params(spec)

    # -- arms ----------------------------------------------------------------------------------------------
    def arm_fingerprint(self, arm: str) -> str | None:
        a = self.spec.arm(arm)
        if a.pretrain is None:
            return None
        params = pretrain_params(self.spec, self.base, arm)
        return fingerprint({"params": relevant(params, PRETRAIN_SECTIONS), "corpus": a.pretrain.corpus})

    def pretrained_dir(self, arm: str) -> Path | None:
        return None if self.spec.arm(arm).pretrain is None else self.out / "pretrain" / arm

    def arm_tokens(self, arm: str) -> Path:
        a = self.spec.arm(arm)
        return self.out / "tokens" / arm if a.pretrain is not None and a.pretrain.corpus else Path(self.spec.tokens)

    def prepare_arm(self, arm: str) -> None:
        """Pre-train ``arm`` (and encode its token cache) unless its ``arm.json`` says it was, with these settings."""
        a = self.spec.arm(arm)
        if a.pretrain is None:
            return
        target, fp = self.pretrained_dir(arm), self.arm_fingerprint(arm)
        record_path = target.parent / f"{arm}.json"
        if record_path.is_file() and json.loads(record_path.read_text()).get("fingerprint") == fp:
            record = json.loads(record_path.read_text())
            if "video" not in record:  # a record from before the study measured video quality
                self._video_quality(arm, record, record_path)
            return
        from vpdd.train.loop import train_stage

        params = pretrain_params(self.spec, self.base, arm)
        cfg = config_from_dict(params, source=f"arm {arm}")
        _set_threads(self.spec.jobs * self.spec.threads_per_job)
        t0 = time.time()
        tokens = self.arm_tokens(arm)
        if a.pretrain.corpus:
            from vpdd.tokenizer.encode import encode_dataset

            if not Path(a.pretrain.corpus).is_dir():
                raise ConfigError(f"study {self.spec.name} arm {arm}: pretrain.corpus {a.pretrain.corpus} does not "
                                  "exist (an ingested corpus: vpdd data ingest-videos, e.g. dvc repro ingest_standin)")
            self.echo(f"arm {arm}: encoding {self.spec.robot}, {self.spec.task_video} and {a.pretrain.corpus}")
            encode_dataset(self.spec.tokenizer, tokens, robot=self.spec.robot, corpus=a.pretrain.corpus,
                           task_video=self.spec.task_video, params=cfg.tokenizer, progress=False, force=True)
        self.echo(f"arm {arm}: pre-training {cfg.pretrain.steps} steps into {target}")
        atomic_write_text(target.parent / f"{arm}.params.yaml", yaml.safe_dump(params, sort_keys=False))
        result = train_stage("pretrain", cfg, tokens=tokens, tokenizer=self.spec.tokenizer, out=target,
                             live_dir=target.parent / f"{arm}_live", resume="auto", device="cpu", params_file=None,
                             progress=False)
        record = {"arm": arm, "fingerprint": fp, "seconds": round(time.time() - t0, 1), "steps": result.step,
                  "metrics": {k: v for k, v in result.metrics.items() if k.startswith("eval/")}}
        self.echo(f"arm {arm}: pre-trained in {record['seconds']:.0f} s {record['metrics']}")
        self._video_quality(arm, record, record_path)

    def _video_quality(self, arm: str, record: dict[str, Any], record_path: Path) -> None:
        """``vpdd eval video`` of the arm's pre-trained network on held-out scenes (PSNR/SSIM of the predicted
        future against copying the present and the tokenizer's reconstruction; token accuracy), into ``record``."""
        from vpdd.eval.video_quality import VideoEvalSettings, run_video_eval

        cfg = config_from_dict(pretrain_params(self.spec, self.base, arm), source=f"arm {arm}")
        t0 = time.time()
        settings = VideoEvalSettings(**{"probe_windows_per_episode": 0, **self.spec.video})
        metrics = run_video_eval(self.pretrained_dir(arm), cfg, record_path.parent / f"{arm}_video", settings,
                                 robot=self.spec.robot, device="cpu")
        seconds = round(time.time() - t0, 1)
        record["video"] = {**metrics["mean"], "tokens": metrics["tokens"]["mean"], "seconds": seconds}
        atomic_write_json(record_path, record)
        atomic_write_json(self.results / "pretrain" / f"{arm}.json", record)
        m = record["video"]
        self.echo(f"arm {arm}: predicted future {m['predicted']['psnr']:.2f} dB vs copy-last "
                  f"{m['copy_last']['psnr']:.2f} dB ({record['video']['seconds']:.0f} s)")

    # -- cells ---------------------------------------------------------------------------------------------
    def job(self, cell: Cell) -> dict[str, Any]:
        params = cell_params(self.spec, self.base, cell)
        pre = self.pretrained_dir(cell.arm)
        pre_fp = self.arm_fingerprint(cell.arm)
        policy = self.spec.arm(cell.arm).policy
        sections = CELL_SECTIONS if policy == "vpdd" else BC_CELL_SECTIONS
        fp = fingerprint({"params": relevant(params, sections), "pretrain": pre_fp})
        return {"cell": asdict(cell), "dir": str(self.out / cell.path), "params": params, "policy": policy,
                "fingerprint": fp, "pretrain_fingerprint": pre_fp,
                "tokens": self.spec.tokens, "tokenizer": self.spec.tokenizer, "robot": self.spec.robot,
                "pretrained": None if pre is None else str(pre), "threads": self.spec.threads_per_job}

    def status(self, job: dict[str, Any]) -> str:
        """"done", "pending", or "changed" (the folder holds a cell run with other settings)."""
        path = Path(job["dir"]) / "cell.json"
        if not path.is_file():
            return "pending"
        return "done" if json.loads(path.read_text()).get("fingerprint") == job["fingerprint"] else "changed"

    def _publish(self, cell: Cell) -> None:
        src, dst = self.out / cell.path, self.results / cell.path
        dst.mkdir(parents=True, exist_ok=True)
        for name in RESULT_FILES:
            shutil.copy2(src / name, dst / Path(name).name)

    def write_state(self, jobs: list[dict[str, Any]]) -> dict[str, Any]:
        from vpdd.utils.machine import machine_record

        cells = []
        for j in jobs:
            rec_path = Path(j["dir"]) / "cell.json"
            st = self.status(j)
            rec = json.loads(rec_path.read_text()) if st == "done" else {}
            cells.append({**j["cell"], "status": st,
                          "seconds": rec and round(rec["finetune"]["seconds"] + rec["eval_seconds"], 1)})
        done = [c for c in cells if c["status"] == "done"]
        state = {"study": self.spec.name, "cells": len(cells), "done": len(done),
                 "pending": [f"{c['arm']}/demos{c['demos']}/seed{c['seed']}" for c in cells if c["status"] != "done"],
                 "seconds_per_cell": round(sum(c["seconds"] for c in done) / len(done), 1) if done else None,
                 "jobs": self.spec.jobs, "threads_per_job": self.spec.threads_per_job, "machine": machine_record(),
                 "per_cell": cells}
        atomic_write_json(self.results / "state.json", state)
        return state

    def run(self, max_cells: int | None = None, only_demos: list[int] | None = None,
            only_arms: list[str] | None = None) -> dict[str, Any]:
        """Run the pending cells (at most ``max_cells``; only those ``only_demos`` / ``only_arms`` when given)."""
        cells = [c for c in plan(self.spec) if (not only_demos or c.demos in only_demos)
                 and (not only_arms or c.arm in only_arms)]
        for arm in dict.fromkeys(c.arm for c in cells):
            self.prepare_arm(arm)
        jobs = [self.job(c) for c in plan(self.spec)]
        changed = [j["dir"] for j in jobs if self.status(j) == "changed"]
        if changed:
            raise StudyRunError(f"{len(changed)} cells in {self.out} were run with other settings (e.g. {changed[0]}): "
                                "use a new output folder for a changed study, or delete those cells")
        wanted = {Cell(**j["cell"]) for j in jobs} & set(cells)
        pending = [j for j in jobs if Cell(**j["cell"]) in wanted and self.status(j) == "pending"]
        if max_cells is not None:
            pending = pending[:max_cells]
        self.echo(f"study {self.spec.name}: {len(jobs) - len([j for j in jobs if self.status(j) != 'done'])} of "
                  f"{len(jobs)} cells done; running {len(pending)} ({self.spec.jobs} at a time)")
        for j in pending:
            Path(j["dir"]).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(j["dir"]) / "params.yaml", yaml.safe_dump(j["params"], sort_keys=False))
        t0, finished = time.time(), 0

        def done(record: dict[str, Any]) -> None:
            nonlocal finished
            finished += 1
            cell = Cell(record["arm"], record["demos"], record["seed"])
            self._publish(cell)
            self.write_state(jobs)
            eta = (time.time() - t0) / finished * (len(pending) - finished)
            self.echo(f"[{finished}/{len(pending)}] {cell.path}: success {record['mean_success']:.3f} (fine-tune "
                      f"{record['finetune']['seconds']:.0f} s, eval {record['eval_seconds']:.0f} s; "
                      f"about {eta / 60:.0f} min left)")

        self._run_jobs(run_cell, pending, done)
        self.run_probes([j for j in jobs if Cell(**j["cell"]) in wanted])
        return self.write_state(jobs)

    # -- the held-out action probe ------------------------------------------------------------------------
    def run_probes(self, jobs: list[dict[str, Any]]) -> None:
        """Score every done cell of ``jobs`` whose ``probe.json`` is missing or was made with other settings."""
        from vpdd.study.probe import EPISODES_DIR, PROBE_FILE, prepare_episodes, probe_cell, probe_fingerprint

        cfg = config_from_dict(self.base, source=f"study {self.spec.name}")
        fp = probe_fingerprint(self.spec, cfg)

        def current(j: dict[str, Any]) -> bool:
            path = Path(j["dir"]) / PROBE_FILE
            if not path.is_file():
                return False
            rec = json.loads(path.read_text())
            return rec.get("fingerprint") == fp and rec.get("cell_fingerprint") == j["fingerprint"]

        def publish(cell: Cell) -> None:
            shutil.copy2(self.out / cell.path / PROBE_FILE, self.results / cell.path / PROBE_FILE)

        done_jobs = [j for j in jobs if self.status(j) == "done"]
        for j in done_jobs:  # a probe scored before its copy reached the results (a run stopped in between)
            if current(j) and not (self.results / Cell(**j["cell"]).path / PROBE_FILE).is_file():
                publish(Cell(**j["cell"]))
        todo = [j for j in done_jobs if not current(j)]
        if not todo:
            return
        self.echo(f"probe: collecting held-out episodes into {self.out / EPISODES_DIR}")
        episodes = prepare_episodes(self.spec, cfg, self.out / EPISODES_DIR)
        todo = [{**j, "probe_fingerprint": fp, "episodes": str(episodes), "probe": asdict(self.spec.probe)}
                for j in todo]
        self.echo(f"probe: scoring {len(todo)} cells on the same held-out states")
        finished = 0

        def done(record: dict[str, Any]) -> None:
            nonlocal finished
            finished += 1
            cell = Cell(record["arm"], record["demos"], record["seed"])
            publish(cell)
            self.echo(f"[probe {finished}/{len(todo)}] {cell.path}: held-out action L1 "
                      f"{record['action_l1']['mean']:.4f} ({record['seconds']:.0f} s)")

        self._run_jobs(probe_cell, todo, done)

    def _run_jobs(self, fn: Callable[[dict[str, Any]], dict[str, Any]], pending: list[dict[str, Any]],
                  done: Callable[[dict[str, Any]], None]) -> None:
        if self.spec.jobs == 1 or len(pending) <= 1:
            for j in pending:
                _set_threads(self.spec.threads_per_job)
                done(fn(j))
        else:
            self._run_pool(fn, pending, done)

    def _run_pool(self, fn: Callable[[dict[str, Any]], dict[str, Any]], pending: list[dict[str, Any]],
                  done: Callable[[dict[str, Any]], None]) -> None:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        failures = []
        with ProcessPoolExecutor(self.spec.jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(self.spec.threads_per_job,)) as pool:
            futures = {pool.submit(fn, j): j for j in pending}
            try:
                while futures:
                    finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in finished:
                        j = futures.pop(f)
                        try:
                            done(f.result())
                        except Exception as err:  # noqa: BLE001 - one failed cell must not stop the others
                            failures.append(f"{j['dir']}: {type(err).__name__}: {err}")
                            self.echo(f"FAILED {j['dir']}: {err}")
            except KeyboardInterrupt:
                for f in futures:
                    f.cancel()
                raise
        if failures:
            raise StudyRunError(f"{len(failures)} cells failed: " + "; ".join(failures[:3]))
