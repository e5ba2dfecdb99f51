"""The video tokenizer: a VideoGPT-style 3-D VQ-VAE shared by actionless and robot video, and the token
cache the diffusion stages train on (docs/tokenizer.md).

* :mod:`vpdd.tokenizer.model` / :mod:`vpdd.tokenizer.codebook`: the network and its EMA codebook;
* :mod:`vpdd.tokenizer.train`: the resumable, DDP-ready training loop (``vpdd tokenizer train``);
* :mod:`vpdd.tokenizer.cache` / :mod:`vpdd.tokenizer.encode`: the token cache (``vpdd tokenizer encode``)
  and its loader, :class:`~vpdd.tokenizer.cache.TokenCache`;
* :mod:`vpdd.tokenizer.pretrained`: :func:`load_tokenizer` for inference (encoding observations at
  evaluation time);
* :mod:`vpdd.tokenizer.reconstruct`, :mod:`vpdd.tokenizer.benchmark`: side-by-side videos, throughput.
"""

from vpdd.tokenizer.cache import TokenCache, TokenSource, load_token_cache
from vpdd.tokenizer.model import VQVAE, VQVAEArch, to_model_input, to_uint8
from vpdd.tokenizer.pretrained import load_tokenizer

__all__ = [
    "VQVAE",
    "TokenCache",
    "TokenSource",
    "VQVAEArch",
    "load_token_cache",
    "load_tokenizer",
    "to_model_input",
    "to_uint8",
]
