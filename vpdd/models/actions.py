"""Action tokens: quantile bins for continuous dimensions, data-fitted classes for the gripper (§5.1).

:class:`ActionDiscretizer` is fitted on the fine-tuning demonstrations and saved inside the policy
checkpoint (``config.json["actions"]``; JSON floats round-trip exactly). Nothing is written anywhere else
(the released ``QuantileDiscretizer`` wrote ``./tokenizer_48.npz`` as a side effect).

* **Continuous dimensions** (Meta-World: dx, dy, dz): ``n_bins`` (48) per-dimension quantile bins. The
  edges are the 0, 1/K, ..., 1 quantiles of the data; bin i is ``[e_i, e_{i+1})`` (the last bin also
  holds ``e_K``); values below/above the range fall in the first/last bin. A point mass (the scripted
  policies saturate at ±1, and the collector clips to [-1, 1]) makes repeated edges: the empty bins it
  leaves are never produced by ``encode``. A bin decodes to the **mean of the fitted data inside it**
  (the midpoint for a bin with no data), and every point mass gets a bin of its own (the last of a run of
  equal edges moves up by one ulp), so a saturated -1 or +1 decodes to exactly itself and
  ``|decode(encode(x)) - x|`` is at most the width of x's bin for every x in the fitted range.
* **Gripper** (the last dimension): the distinct values of the demonstrations (rounded to 1e-4) are the
  classes, in increasing order, and decode exactly. The released code hard-codes a 10-value lookup of the
  scripted policies' values; fitting them from the data handles the collector's clipping and any other
  scripted policy, and an unseen value maps to the nearest class. If the data holds more distinct
  values than ``n_bins``, the gripper falls back to quantile bins like the other dimensions (logged).
  A predicted bin index beyond the last class decodes to the last class.
* **Chunks**: the target of step s is the actions ``a_s .. a_{s+chunk-1}``, step-major
  (token index = step * D + dim). Past the end of an episode the chunk is padded with a *hold* action
  (zero motion, the last gripper command) instead of the released code's class-0 padding, which is a
  real bin (a large negative motion).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GRIPPER_DECIMALS = 4


@dataclass
class ActionDiscretizer:
    n_bins: int
    chunk: int
    edges: list[list[float]]  # per dim: n_bins + 1 quantile edges (empty for a class dimension)
    values: list[list[float]]  # per dim: the decoded value of each bin / class
    kinds: list[str] = field(default_factory=list)  # per dim: "quantile" | "classes"

    @property
    def dim(self) -> int:
        return len(self.values)

    @property
    def n_tokens(self) -> int:
        return self.chunk * self.dim

    # -------------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, actions: np.ndarray, n_bins: int = 48, chunk: int = 4, gripper: bool = True) -> ActionDiscretizer:
        """Fit on (n, D) actions; the last dimension is the gripper when ``gripper``."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or len(actions) == 0:
            raise ValueError(f"ActionDiscretizer.fit: expected (n, D) actions with n > 0, got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError("ActionDiscretizer.fit: the actions contain NaN or inf")
        edges, values, kinds = [], [], []
        for d in range(actions.shape[1]):
            x = actions[:, d]
            if gripper and d == actions.shape[1] - 1:
                classes = np.unique(np.round(x, GRIPPER_DECIMALS))
                if len(classes) <= n_bins:
                    edges.append([])
                    values.append([float(v) for v in classes])
                    kinds.append("classes")
                    continue
                log.warning("gripper has %d distinct values (> %d bins): using quantile bins", len(classes), n_bins)
            e = _atom_edges(np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)))
            b = _bin_of(x, e, n_bins)
            sums = np.bincount(b, weights=x, minlength=n_bins)
            counts = np.bincount(b, minlength=n_bins)
            mids = 0.5 * (e[:-1] + e[1:])
            v = np.where(counts > 0, sums / np.maximum(counts, 1), mids)
            edges.append([float(u) for u in e])
            values.append([float(u) for u in v])
            kinds.append("quantile")
        return cls(n_bins=n_bins, chunk=chunk, edges=edges, values=values, kinds=kinds)

    # ------------------------------------------------------------------------- encode/decode
    def encode(self, actions: np.ndarray) -> np.ndarray:
        """(..., D) continuous actions -> (..., D) int64 bins in [0, n_bins)."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape[-1] != self.dim:
            raise ValueError(f"expected actions with {self.dim} dimensions, got shape {actions.shape}")
        out = np.empty(actions.shape, dtype=np.int64)
        for d in range(self.dim):
            x = actions[..., d]
            if self.kinds[d] == "classes":
                cls = np.asarray(self.values[d])
                out[..., d] = np.abs(x[..., None] - cls).argmin(-1)
            else:
                out[..., d] = _bin_of(x, np.asarray(self.edges[d]), self.n_bins)
        return out

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """(..., D) bins -> (..., D) float32 actions."""
        bins = np.asarray(bins, dtype=np.int64)
        if bins.shape[-1] != self.dim:
            raise ValueError(f"expected bins with {self.dim} dimensions, got shape {bins.shape}")
        out = np.empty(bins.shape, dtype=np.float32)
        for d in range(self.dim):
            v = np.asarray(self.values[d], dtype=np.float64)
            out[..., d] = v[np.clip(bins[..., d], 0, len(v) - 1)]
        return out

    def bin_width(self, d: int, bins: np.ndarray) -> np.ndarray:
        """Width of the given bins of dimension ``d`` (0 for a class dimension)."""
        if self.kinds[d] == "classes":
            return np.zeros(np.shape(bins))
        e = np.asarray(self.edges[d])
        return e[np.asarray(bins) + 1] - e[np.asarray(bins)]

    # ------------------------------------------------------------------------------- chunks
    def hold_action(self, last: np.ndarray) -> np.ndarray:
        """Padding past an episode's end: zero motion, the last gripper command."""
        pad = np.zeros(self.dim, dtype=np.float32)
        if self.kinds[-1] == "classes":
            pad[-1] = last[-1]
        return pad

    def episode_chunks(self, actions: np.ndarray) -> np.ndarray:
        """(T, D) actions of one episode -> (T, chunk * D) bins: row s is a_s .. a_{s+chunk-1}, step-major."""
        actions = np.asarray(actions, dtype=np.float32)
        pad = np.repeat(self.hold_action(actions[-1])[None], self.chunk - 1, axis=0)
        padded = np.concatenate([actions, pad]) if self.chunk > 1 else actions
        bins = self.encode(padded)
        idx = np.arange(len(actions))[:, None] + np.arange(self.chunk)[None, :]
        return bins[idx].reshape(len(actions), self.chunk * self.dim)

    def decode_chunk(self, tokens: np.ndarray) -> np.ndarray:
        """(..., chunk * D) bins (step-major) -> (..., chunk, D) float32 actions."""
        tokens = np.asarray(tokens)
        return self.decode(tokens.reshape(*tokens.shape[:-1], self.chunk, self.dim))

    # ---------------------------------------------------------------------------- serialise
    def to_dict(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "chunk": self.chunk, "edges": self.edges, "values": self.values,
                "kinds": self.kinds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionDiscretizer:
        return cls(n_bins=int(data["n_bins"]), chunk=int(data["chunk"]), edges=[list(e) for e in data["edges"]],
                   values=[list(v) for v in data["values"]], kinds=list(data["kinds"]))


def _atom_edges(edges: np.ndarray) -> np.ndarray:
    """Give every point mass (a run of equal quantile edges) a bin of its own: the last edge of the run moves
    up by one ulp, so the bin before it holds only the atom and the next one starts just above it."""
    e = edges.copy()
    k = len(e) - 1
    i = 0
    while i < k:
        j = i
        while j + 1 <= k and e[j + 1] == e[i]:
            j += 1
        if j > i and j < k:
            e[j] = np.nextafter(e[j], np.inf)
        i = j + 1
    return e


def _bin_of(x: np.ndarray, edges: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1).astype(np.int64)
