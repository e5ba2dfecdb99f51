"""VPDD's networks (algorithm.md §4-§5): the Perceiver IO video network, the GPT-2 action network, their
combination as one denoiser for the discrete diffusion, language encoders and action tokens.

* :mod:`vpdd.models.video_net` -- :class:`VideoNet` (p_θ1), trained in pre-training, frozen afterwards;
* :mod:`vpdd.models.action_net` -- :class:`ActionNet` (p_θ2), trained in fine-tuning;
* :mod:`vpdd.models.model` -- :class:`VPDDModel`, :class:`ModelSpec`, :func:`diffusion_loss`,
  :func:`sample_tokens`;
* :mod:`vpdd.models.language` -- text encoders (offline MiniLM, open_clip CLIP) and the cached
  :class:`InstructionTable`;
* :mod:`vpdd.models.actions` -- :class:`ActionDiscretizer` (quantile bins + gripper classes, chunks).

Heavy imports (transformers, sentence-transformers, open_clip) happen only when a network or encoder is
built.
"""

from vpdd.models.actions import ActionDiscretizer
from vpdd.models.model import ModelSpec, VPDDModel, diffusion_loss, sample_tokens

__all__ = ["ActionDiscretizer", "ModelSpec", "VPDDModel", "diffusion_loss", "sample_tokens"]
