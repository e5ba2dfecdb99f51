"""``vpdd data``: collect robot demonstrations, render the actionless task video, build the actionless corpus,
render the stand-in for human video, fetch the pinned raw data, and import / export LeRobot-format datasets
(docs/data.md)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from vpdd.cli.common import add_force_arg, add_params_arg, params

log = logging.getLogger("vpdd.data")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="raw data: collect, ingest, fetch")
    sp = p.add_subparsers(dest="data_cmd", required=True)

    c = sp.add_parser("collect-metaworld", help="scripted-expert demonstrations of Meta-World tasks")
    add_params_arg(c)
    c.add_argument("--out", required=True, help="output folder (replaced atomically)")
    c.add_argument("--tasks", nargs="+", help="task names (default: data.robot.tasks); 'MT50' for all 50")
    c.add_argument("--demos", type=int, help="demonstrations per task (default: data.robot.demos_per_task)")
    c.add_argument("--resolution", type=int, help="frame size (default: env.resolution)")
    c.add_argument("--seed", type=int, help="base seed (default: data.robot.seed)")
    c.add_argument("--workers", type=int, help="processes (default: data.workers)")
    c.add_argument("--keep-failures", action="store_true", help="keep failed demonstrations instead of dropping them")
    add_force_arg(c)
    c.set_defaults(func=_collect)

    m = sp.add_parser("render-corpus", help="render the default actionless corpus (mp4 videos, no actions)")
    add_params_arg(m)
    m.add_argument("--out", required=True)
    add_force_arg(m)
    m.set_defaults(func=_render_corpus)

    v = sp.add_parser("render-task-video", help="actionless video of the fine-tuning tasks (frames only, no actions)")
    add_params_arg(v)
    v.add_argument("--out", required=True, help="output folder (replaced atomically)")
    v.add_argument("--report", help="also write the collection summary (counts) to this JSON file")
    add_force_arg(v)
    v.set_defaults(func=_render_task_video)

    s = sp.add_parser("render-standin-video",
                      help="stand-in for human video: other tasks, no arm, other cameras (mp4, no actions)")
    add_params_arg(s)
    s.add_argument("--out", required=True, help="output folder of mp4 + caption files (replaced atomically)")
    s.add_argument("--report", help="also write the per-video settings and counts to this JSON file")
    add_force_arg(s)
    s.set_defaults(func=_render_standin)

    i = sp.add_parser("ingest-videos", help="decode a folder of videos into clips")
    i.add_argument("src", help="folder of videos (mp4, webm, avi, mkv, mov), searched recursively")
    add_params_arg(i)
    i.add_argument("--out", required=True, help="output folder (replaced atomically)")
    i.add_argument("--report", help="also write the ingest report (counts) to this JSON file")
    i.add_argument("--resolution", type=int, help="default: env.resolution")
    i.add_argument("--strict", action="store_true", help="a bad video is an error instead of a skipped file")
    add_force_arg(i)
    i.set_defaults(func=_ingest)

    n = sp.add_parser("inspect", help="validate robot episodes and summarise them as JSON")
    n.add_argument("root", help="a folder written by collect-metaworld, e.g. data/metaworld")
    n.add_argument("--out", help="write the summary here (default: stdout)")
    n.set_defaults(func=_inspect)

    li = sp.add_parser("import-lerobot", help="import a LeRobot dataset (v3.0, v2.1) into a vpdd episode store")
    li.add_argument("src", nargs="?", help="dataset folder or hub cache folder (default: data.robot.lerobot.path)")
    add_params_arg(li)
    li.add_argument("--out", required=True, help="episode store to write (replaced atomically)")
    li.add_argument("--camera", help="camera feature key (default: data.robot.lerobot.camera, else the only one)")
    li.add_argument("--resolution", type=int, help="frame size (default: env.resolution)")
    li.add_argument("--repo-id", help="dataset identity for lineage (default: data.robot.lerobot.repo_id)")
    li.add_argument("--revision", help="dataset revision for lineage (default: data.robot.lerobot.revision)")
    li.add_argument("--report", help="also write the import summary to this JSON file")
    add_force_arg(li)
    li.set_defaults(func=_import_lerobot)

    le = sp.add_parser("export-lerobot", help="write vpdd robot episodes as a LeRobot v3.0 dataset")
    le.add_argument("robot", nargs="?", default="data/metaworld", help="episode store (default: data/metaworld)")
    le.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    le.add_argument("--tasks", nargs="+", help="only these tasks (default: all)")
    le.add_argument("--camera-key", default="observation.image", help="video feature name (default: %(default)s, "
                    "LeRobot's Meta-World key)")
    le.add_argument("--fps", type=int, default=80, help="frames per second (default: %(default)s, Meta-World's rate)")
    le.add_argument("--crf", type=int, default=30, help="video quality, lower is better (default: %(default)s)")
    le.add_argument("--verify", action="store_true", help="read the dataset back and report the codec's PSNR")
    add_force_arg(le)
    le.set_defaults(func=_export_lerobot)

    f = sp.add_parser("fetch", help="make data/ match data.dvc: dvc pull, else regenerate and verify")
    add_params_arg(f)
    f.add_argument("--root", default="data", help="the raw-data folder pinned by ROOT.dvc (default: %(default)s)")
    f.add_argument("--repin", action="store_true", help="regenerate without pulling; pin the result even if it differs")
    f.set_defaults(func=_fetch)


def _collect(args: argparse.Namespace) -> int:
    from vpdd.data.collect import collect_metaworld
    from vpdd.data.defaults import collect_spec
    from vpdd.envs.tasks import MT50_TASKS

    cfg = params(args)
    overrides = {}
    if args.tasks:
        overrides["tasks"] = list(MT50_TASKS) if args.tasks == ["MT50"] else args.tasks
    for key, value in (("demos_per_task", args.demos), ("resolution", args.resolution), ("seed", args.seed)):
        if value is not None:
            overrides[key] = value
    if args.keep_failures:
        overrides["keep_failures"] = True
    report = collect_metaworld(collect_spec(cfg, **overrides), args.out, workers=args.workers or cfg.data.workers,
                               progress=sys.stderr.isatty(), force=args.force)
    print(json.dumps({k: report[k] for k in ("episodes", "frames", "attempts", "dropped_failures")}))
    return 0


def _render_corpus(args: argparse.Namespace) -> int:
    from vpdd.data.collect import render_actionless_corpus

    cfg = params(args)
    c = cfg.data.corpus
    report = render_actionless_corpus(
        list(c.tasks), c.videos_per_task, args.out, camera=c.camera, resolution=c.render_resolution, fps=c.fps,
        captioned_fraction=c.captioned_fraction, seed=c.seed, max_steps=cfg.data.robot.max_steps,
        render_backend=cfg.env.render_backend, progress=sys.stderr.isatty(), force=args.force,
    )
    print(json.dumps(report))
    return 0


def _render_task_video(args: argparse.Namespace) -> int:
    """data.task_video.episodes_per_task scripted episodes of each of data.robot.tasks, rendered like the
    demonstrations (env camera, crop, flip, resolution) on scenes that are neither the demonstrations' (another
    base seed) nor any evaluation's (skipped: vpdd.eval.scenes), written without actions."""
    from vpdd.data.collect import collect_metaworld
    from vpdd.data.defaults import collect_spec
    from vpdd.data.episodes import write_index
    from vpdd.eval.scenes import reserved_for_task_video
    from vpdd.utils.io import atomic_directory, atomic_write_json

    cfg = params(args)
    tv, tasks = cfg.data.task_video, list(cfg.data.robot.tasks)
    if tv.episodes_per_task == 0:
        with atomic_directory(args.out, marker="index.json", force=args.force) as tmp:
            write_index(tmp, [], actionless=True)
        report = {"episodes": 0, "frames": 0, "attempts": 0, "per_task": {}}
    else:
        reserved = reserved_for_task_video(cfg, tasks)
        spec = collect_spec(cfg, demos_per_task=tv.episodes_per_task, seed=tv.seed,
                            max_attempts_per_demo=tv.max_attempts_per_episode, actionless=True,
                            exclude_seeds={t: sorted(s) for t, s in reserved.items()})
        report = collect_metaworld(spec, args.out, workers=cfg.data.workers, progress=sys.stderr.isatty(),
                                   force=args.force)
        log.info("rendered %d actionless episodes in %.0f s", report["episodes"], report["seconds"])
        report = {k: report[k] for k in ("episodes", "frames", "attempts", "failures", "skipped_reserved_seeds",
                                         "per_task")}
    if args.report:
        atomic_write_json(args.report, report)
    print(json.dumps({k: v for k, v in report.items() if k != "per_task"}))
    return 0


def _render_standin(args: argparse.Namespace) -> int:
    """data.standin.videos_per_task stand-in videos of each of data.standin.tasks (vpdd/data/standin.py): a folder
    that `vpdd data ingest-videos` reads like real human video."""
    from vpdd.data.standin import render_standin, standin_spec
    from vpdd.utils.io import atomic_write_json

    report = render_standin(standin_spec(params(args)), args.out, progress=sys.stderr.isatty(), force=args.force)
    report.pop("seconds")  # logged by the library; the report file stays the same on a rerun
    if args.report:
        atomic_write_json(args.report, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("spec", "per_task", "per_video")}))
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from vpdd.data.corpus import ingest_videos
    from vpdd.utils.io import atomic_write_json

    cfg = params(args)
    ing = cfg.data.ingest
    report = ingest_videos(
        args.src, args.out, resolution=args.resolution or cfg.env.resolution, clip_length=ing.clip_length,
        clip_stride=ing.clip_stride, frame_step=ing.frame_step, min_frames=ing.min_frames,
        default_caption=ing.default_caption, strict=args.strict, progress=sys.stderr.isatty(),
        force=args.force,
    )
    if args.report:
        atomic_write_json(args.report, report)
    print(json.dumps({k: v for k, v in report.items() if k != "skipped"}))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vpdd.data.episodes import EpisodeStore
    from vpdd.utils.io import atomic_write_json

    store = EpisodeStore(args.root)
    lengths, per_task = [], {}
    for entry in store.entries:
        episode = store.load(entry)  # validates every file, not only the index
        lengths.append(len(episode))
        t = per_task.setdefault(episode.task, {"episodes": 0, "successes": 0, "frames": 0})
        t["episodes"] += 1
        t["successes"] += int(bool(episode.meta.get("success")))
        t["frames"] += len(episode)
    summary = {"episodes": len(lengths), "frames": sum(lengths), "tasks": len(per_task),
               "mean_length": round(sum(lengths) / len(lengths), 2), "per_task": per_task}
    if args.out:
        atomic_write_json(args.out, summary)
    else:
        print(json.dumps(summary, indent=2))
    return 0


def _import_lerobot(args: argparse.Namespace) -> int:
    from vpdd.data.lerobot import import_lerobot
    from vpdd.utils.io import atomic_write_json

    cfg = params(args)
    lr = cfg.data.robot.lerobot
    src = args.src or lr.path
    if not src:
        raise ValueError("import-lerobot: no dataset folder; pass one or set data.robot.lerobot.path")
    report = import_lerobot(src, args.out, camera=args.camera or lr.camera or None,
                            resolution=args.resolution or cfg.env.resolution, action_dim=cfg.model.actions.dim,
                            repo_id=args.repo_id or lr.repo_id or None, revision=args.revision or lr.revision or None,
                            progress=sys.stderr.isatty(), force=args.force)
    if args.report:
        atomic_write_json(args.report, report)
    print(json.dumps(report))
    return 0


def _export_lerobot(args: argparse.Namespace) -> int:
    from vpdd.data.lerobot_export import export_lerobot

    report = export_lerobot(args.robot, args.out, camera_key=args.camera_key, fps=args.fps, tasks=args.tasks,
                            crf=args.crf, verify=args.verify, force=args.force)
    print(json.dumps(report))
    return 0


def _dvc(*argv: str, check: bool = False) -> subprocess.CompletedProcess:
    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    return subprocess.run([exe, *argv], capture_output=True, text=True, check=check)


def _pinned_md5(dvc_file: Path) -> str | None:
    import yaml

    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def _fetch(args: argparse.Namespace) -> int:
    from vpdd.data.defaults import generate_default_data

    root = Path(args.root)
    dvc_file = root.with_name(root.name + ".dvc")
    pinned = _pinned_md5(dvc_file)
    if pinned and not args.repin:
        status = _dvc("status", str(dvc_file), "--json")
        if status.returncode == 0 and status.stdout.strip() in ("{}", ""):
            print(f"{root}/ matches {dvc_file} ({pinned})")
            return 0
        pulled = _dvc("pull", str(dvc_file), "-q")
        if pulled.returncode == 0 and _dvc("status", str(dvc_file), "--json").stdout.strip() in ("{}", ""):
            print(f"{root}/ pulled from the DVC remote ({pinned})")
            return 0
        log.info("no DVC remote holds %s (%s); regenerating it", pinned, (pulled.stderr or "").strip()[:200])
    cfg = params(args)
    generate_default_data(cfg, root, progress=sys.stderr.isatty())
    before = dvc_file.read_text() if dvc_file.is_file() else None
    added = _dvc("add", str(root), "-q")
    if added.returncode != 0:
        raise RuntimeError(f"dvc add {root} failed: {(added.stderr or added.stdout).strip()}")
    got = _pinned_md5(dvc_file)
    if pinned and got != pinned and not args.repin:
        dvc_file.write_text(before)  # keep the pin: never re-pin silently
        raise ValueError(
            f"{root}/ was regenerated but differs from the version pinned in {dvc_file}: pinned {pinned}, "
            f"regenerated {got}. The renderer, MuJoCo or the collection settings differ from the machine that "
            f"pinned it. Get the pinned data from a DVC remote (`dvc pull`), or accept this version with "
            f"`vpdd data fetch --repin` and commit {dvc_file}."
        )
    pushed = _dvc("push", str(dvc_file), "-q")
    if pushed.returncode != 0:
        log.warning("dvc push to the default remote failed (data stays in the local cache): %s", pushed.stderr.strip())
    verdict = "matches the pin" if pinned == got else f"pinned as {got}"
    print(f"{root}/ regenerated; {verdict}")
    return 0
