"""The ``tokenize`` stage: encode every robot episode and corpus video with a trained tokenizer.

Checks before any work: the checkpoint is complete and a tokenizer; the data's frame size equals the
checkpoint's resolution; the requested window equals the checkpoint's ``encode_window`` (a multiple of its
temporal downsampling); corpus clips are at least one window long. Each failure names both sides.
The manifest records the checkpoint hash and the raw-data version (``data.dvc``), so a cache can always
be traced to the model and data that made it.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vpdd.config.tokenizer import TokenizerConfig
from vpdd.data.episodes import DataFormatError
from vpdd.lineage import data_md5 as data_version
from vpdd.lineage import index_digest
from vpdd.runtime.checkpoint import checkpoint_hash
from vpdd.tokenizer import data as tdata
from vpdd.tokenizer.cache import write_token_cache
from vpdd.tokenizer.pretrained import config_dict, differing_keys, load_tokenizer

log = logging.getLogger(__name__)


class TokenizerMismatch(DataFormatError):
    """The checkpoint and the data (or the params) disagree on resolution or clip length."""


def check_against_params(tokenizer_dir: str | Path, saved: TokenizerConfig, params: TokenizerConfig) -> None:
    diff = differing_keys(saved, params, ("resolution", "encode_window", "n_codes", "downsample"))
    if diff:
        raise TokenizerMismatch(
            f"{tokenizer_dir}: the checkpoint does not match params.yaml tokenizer settings (" + "; ".join(diff) + ")"
        )


def encode_dataset(
    tokenizer_dir: str | Path,
    out: str | Path,
    robot: str | Path | None = None,
    corpus: str | Path | None = None,
    *,
    task_video: str | Path | None = None,
    params: TokenizerConfig | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    data_dvc: str | Path | None = "data.dvc",
    progress: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the token cache for ``robot`` and/or ``corpus`` to ``out``; returns its manifest. ``task_video``
    (actionless episodes of the tasks) joins the ``robot`` source, its items marked ``actionless``.

    ``out`` follows the output-folder rule (:func:`vpdd.utils.io.check_output_dir`), checked before any work."""
    from vpdd.tokenizer.cache import MANIFEST
    from vpdd.utils.io import check_output_dir

    guard = {"inputs": [tokenizer_dir, robot, corpus, task_video], "marker": MANIFEST, "force": force}
    check_output_dir(out, **guard)
    if robot is None and corpus is None:
        raise DataFormatError("nothing to encode: pass a robot episode folder and/or an ingested corpus")
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    model, cfg, ckpt = load_tokenizer(tokenizer_dir, dev)
    if params is not None:
        check_against_params(tokenizer_dir, cfg, params)
    window = cfg.encode_window
    sources: dict[str, list[tdata.VideoItem]] = {}
    inputs: dict[str, Any] = {}
    what = f"checkpoint {tokenizer_dir}"
    if robot is not None:
        sources["robot"] = tdata.load_robot_items(robot)
        tdata.check_resolution(sources["robot"], cfg.resolution, what, robot)
        inputs["robot"] = {"root": str(robot), "index_sha256": index_digest(robot)}
    if task_video is not None:  # actionless video of the tasks: more robot-source items, marked actionless
        items = tdata.load_task_video_items(task_video)
        tdata.check_resolution(items, cfg.resolution, what, task_video)
        sources["robot"] = tdata.merge_robot_items(sources.get("robot", []), items, task_video)
        inputs["task_video"] = {"root": str(task_video), "index_sha256": index_digest(task_video),
                                "episodes": len(items)}
    if corpus is not None:
        items, clip_length = tdata.load_corpus_items(corpus)
        if clip_length < window:
            raise TokenizerMismatch(
                f"clip length mismatch: {corpus} holds clips of {clip_length} frames, but "
                f"the tokenizer ({what}) encodes windows of {window} frames"
            )
        tdata.check_resolution(items, cfg.resolution, what, corpus)
        sources["corpus"] = items
        inputs["corpus"] = {
            "root": str(corpus),
            "index_sha256": index_digest(corpus),
            "clip_length": clip_length,
        }
    t0 = time.time()
    manifest = {
        "tokenizer": {
            "path": str(tokenizer_dir),
            "checkpoint_hash": checkpoint_hash(tokenizer_dir),
            "step": ckpt.step,
            **{k: v for k, v in config_dict(cfg).items() if k != "input"},
        },
        "data_version": data_version(data_dvc),
        "inputs": inputs,
        "versions": {"torch": torch.__version__},
    }
    show = sys.stderr.isatty() if progress is None else progress
    manifest = write_token_cache(
        out,
        model,
        sources,
        window=window,
        batch_size=batch_size or cfg.encode_batch_size,
        manifest=manifest,
        device=dev,
        progress=show,
        inputs=guard["inputs"],
        force=force,
    )
    rows = sum(s["rows"] for s in manifest["sources"].values())
    log.info(
        "encoded %d windows in %.1f s (%.1f windows/s) -> %s",
        rows,
        time.time() - t0,
        rows / max(time.time() - t0, 1e-9),
        out,
    )
    return manifest
