"""Random numbers a resumed run draws again exactly: per-step seeds and the global RNG states.

* :func:`step_seed`: every random draw of a diffusion micro-batch (batch composition, timesteps, noise,
  dropout) comes from seeds that are a pure function of ``(seed, rank, step, micro, stream)``, so a resumed
  run draws the same numbers as an uninterrupted one without saving RNG states.
* :func:`rng_state` / :func:`set_rng_state`: the global python, numpy and torch (CPU, CUDA) generators as a
  ``torch.save``-able dict, for loops that do draw from them (the tokenizer saves them in its checkpoint).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def step_seed(seed: int, rank: int, step: int, micro: int, stream: int = 0) -> int:
    """A 63-bit seed for one random stream of one micro-batch."""
    return int(np.random.SeedSequence([seed, rank, step, micro, stream, 7919]).generate_state(2, np.uint64)[0] >> 1)


def rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU and CUDA) as a torch.save-able dict."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype("int64")),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((state["python_version"], tuple(int(v) for v in py[:-1]), py[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
