"""Checkpoint directories of the pre-trained video model and of the policy (one format, two kinds).

Both are :mod:`vpdd.runtime.checkpoint` directories (written atomically, hashed in ``meta.json``) that
describe themselves completely, so :func:`load_vpdd_checkpoint` rebuilds everything from the directory
alone, without params.yaml or the tokenizer directory::

    config.json          kind ("vpdd-pretrain" | "vpdd-policy"), format, stage,
                         model      ModelSpec: token layout, codebook/language widths, video/action net configs
                         scheduler  MaskReplaceScheduler.to_dict() (schedule, truncation, sampling stride)
                         tokenizer  {checkpoint_hash, config}: the VQ-VAE that made the tokens
                         language   encoder identity (name, width, weights sha256), its config, the texts
                                    whose embeddings are stored
                         actions    ActionDiscretizer.to_dict() (policy only): bin edges, values, gripper classes
                         train      the stage config; data: token cache and demonstrations used;
                         pretrained {path, checkpoint_hash} (policy); fingerprint (what a resume must match);
                         provenance {git, params_sha256, tokenizer_hash, token_cache_manifest_sha256}
    model.safetensors    model.*      the EMA weights of the network (video net, action net)
                         tokenizer.*  the VQ-VAE inference weights (encode observations, decode predictions)
                         text.embeddings  (n_texts, lang_dim) frozen language features of config language.texts
    training_state.pt    raw weights, EMA, optimizer, scheduler history per rank, step (absent when stripped)
    lineage.json         vpdd.lineage record (data version, upstream artefacts, params hash, git, versions); the
                         same record is in the model.safetensors metadata (``vpdd.lineage`` and its dotted
                         leaves, :func:`vpdd.lineage.lineage_metadata`), so the weights file alone says
                         where it came from
    meta.json            step, metrics, versions, file hashes, checkpoint_hash

:func:`check_pretrained_compatible` is what fine-tuning calls before it loads a pre-trained model: a
different vocabulary, token layout, tokenizer, language encoder or video network is an error that names
both values (the released code loaded with ``strict=False`` and hid a 48 vs 256 action-vocabulary
mismatch, algorithm.md §9).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vpdd.diffusion import MaskReplaceScheduler, TokenLayout
from vpdd.models.actions import ActionDiscretizer
from vpdd.models.language import InstructionTable
from vpdd.models.model import ModelSpec, VPDDModel
from vpdd.runtime.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_config, save_checkpoint

log = logging.getLogger(__name__)

KIND_PRETRAIN = "vpdd-pretrain"
KIND_POLICY = "vpdd-policy"
KINDS = (KIND_PRETRAIN, KIND_POLICY)
FORMAT = 1
LINEAGE_FILE = "lineage.json"


class CheckpointMismatch(CheckpointError):
    """A pre-trained checkpoint that does not fit the fine-tuning run (names both values)."""


def save_vpdd_checkpoint(
    path: str | Path,
    *,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    tokenizer_state: dict[str, torch.Tensor],
    text_vectors: torch.Tensor,
    training_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
) -> Path:
    """Write a ``vpdd-pretrain`` / ``vpdd-policy`` checkpoint; ``lineage`` (a :mod:`vpdd.lineage` record) goes
    to ``lineage.json`` and into the weights file's metadata."""
    if config.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind {config.get('kind')!r}: expected one of {KINDS}")
    weights = {f"model.{k}": v for k, v in model_state.items()}
    weights.update({f"tokenizer.{k}": v for k, v in tokenizer_state.items()})
    weights["text.embeddings"] = text_vectors.float()
    extra = metadata = None
    if lineage is not None:
        from vpdd.lineage import lineage_metadata

        lineage = json.loads(json.dumps(lineage, default=str))  # the record as both copies read back
        extra = {LINEAGE_FILE: (json.dumps(lineage, indent=2, sort_keys=True) + "\n").encode()}
        metadata = lineage_metadata(lineage)  # the same record inside model.safetensors
    return save_checkpoint(path, config={"format": FORMAT, **config}, weights=weights,
                           training_state=training_state, meta=meta, extra_files=extra, weights_metadata=metadata)


@dataclass
class LoadedCheckpoint:
    path: Path
    config: dict[str, Any]
    spec: ModelSpec
    model: VPDDModel  # EMA weights, eval mode
    scheduler: MaskReplaceScheduler
    tokenizer: Any  # vpdd.tokenizer.VQVAE, eval mode
    table: InstructionTable
    discretizer: ActionDiscretizer | None
    checkpoint: Checkpoint

    @property
    def kind(self) -> str:
        return self.config["kind"]


def _split(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def read_vpdd_config(path: str | Path, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    config = read_config(path)
    if config.get("kind") not in kinds:
        raise CheckpointError(f"{path}: a {config.get('kind')!r} checkpoint, expected one of {list(kinds)}")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: vpdd checkpoint format {config.get('format')!r}, this code reads format "
                              f"{FORMAT}; load it with the vpdd version that wrote it, or train it again")
    return config


def load_vpdd_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", training_state: bool = False,
    kinds: tuple[str, ...] = KINDS, kernel_impl: str = "auto",
) -> LoadedCheckpoint:
    """Rebuild the network (EMA weights), scheduler, tokenizer, text table and discretizer of a checkpoint.
    ``kernel_impl`` is the ``kernel.impl`` setting the scheduler runs with (a runtime choice, not stored)."""
    from vpdd.tokenizer.pretrained import build_model, config_from_checkpoint

    path = Path(path)
    read_vpdd_config(path, kinds)
    ckpt = load_checkpoint(path, training_state=training_state, map_location="cpu")
    config = ckpt.config
    spec = ModelSpec.from_dict(config["model"])
    model = VPDDModel(spec)
    model.load_state_dict(_split(ckpt.weights, "model."), strict=True)
    scheduler = MaskReplaceScheduler.from_dict(config["scheduler"], device=device, kernel_impl=kernel_impl)
    tok_cfg = config_from_checkpoint(config["tokenizer"]["config"], path)
    vq = build_model(tok_cfg)
    vq.load_inference_state_dict(_split(ckpt.weights, "tokenizer."))
    lang = config["language"]
    table = InstructionTable(lang["dim"], lang["texts"], ckpt.weights["text.embeddings"])
    disc = ActionDiscretizer.from_dict(config["actions"]) if config.get("actions") else None
    return LoadedCheckpoint(path, config, spec, model.to(device).eval(), scheduler, vq.to(device).eval(), table,
                            disc, ckpt)


def _layout_text(lay: TokenLayout) -> str:
    return (f"K_v={lay.n_video_codes}, K_a={lay.n_action_bins} (C={lay.num_classes}), "
            f"N_v={lay.n_video_tokens}, N_a={lay.n_action_tokens}")


def check_pretrained_compatible(
    path: str | Path, config: dict[str, Any], *, layout: TokenLayout, tokenizer_hash: str,
    language: dict[str, Any], video: dict[str, Any], code_dim: int,
) -> None:
    """Raise :class:`CheckpointMismatch` unless the pre-trained ``config`` fits this run."""
    spec = ModelSpec.from_dict(config["model"])
    theirs, ours = spec.layout, layout
    if (theirs.n_video_codes, theirs.n_action_bins) != (ours.n_video_codes, ours.n_action_bins):
        raise CheckpointMismatch(
            f"{path}: vocabulary mismatch: pre-trained with {_layout_text(theirs)}, this run has "
            f"{_layout_text(ours)} (tokenizer.n_codes / model.actions.n_bins); pre-train again with these params"
        )
    if theirs != ours:
        raise CheckpointMismatch(
            f"{path}: token layout mismatch: pre-trained with {_layout_text(theirs)}, this run has "
            f"{_layout_text(ours)} (token grid / model.actions.chunk x dim); pre-train again with these params"
        )
    got = config["tokenizer"]["checkpoint_hash"]
    if got != tokenizer_hash:
        raise CheckpointMismatch(
            f"{path}: tokenizer mismatch: pre-trained on tokens of tokenizer {got[:12]}, this run's tokenizer is "
            f"{tokenizer_hash[:12]}; pre-train again on the current token cache"
        )
    keys = ("encoder", "model", "dim", "weights_sha256")
    theirs_lang = {k: config["language"].get(k) for k in keys}
    ours_lang = {k: language.get(k) for k in keys}
    if theirs_lang != ours_lang:
        raise CheckpointMismatch(
            f"{path}: language encoder mismatch: pre-trained with {theirs_lang}, this run uses {ours_lang} "
            "(model.language)"
        )
    if spec.video != video or spec.code_dim != code_dim:
        diff = {k: (spec.video.get(k), video.get(k)) for k in set(spec.video) | set(video)
                if spec.video.get(k) != video.get(k)}
        if spec.code_dim != code_dim:
            diff["code_dim"] = (spec.code_dim, code_dim)
        raise CheckpointMismatch(
            f"{path}: video network mismatch (pre-trained, this run): {diff} (model.video); pre-train again"
        )
