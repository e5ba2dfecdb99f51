"""The VPDD policy (LeRobot-style contract) and its checkpoint format.

* :mod:`vpdd.policy.policy` -- :class:`VPDDPolicy`: ``from_pretrained``, ``save_pretrained``, ``reset``,
  ``select_action``, ``predict_action_chunk``, ``predict_video``, ``forward``;
* :mod:`vpdd.models.checkpoint` -- the ``vpdd-pretrain`` / ``vpdd-policy`` checkpoint directories and the
  compatibility check fine-tuning runs on a pre-trained model.
"""

from vpdd.models.checkpoint import CheckpointMismatch, load_vpdd_checkpoint
from vpdd.policy.policy import PolicyError, PolicyOutput, VPDDPolicy

__all__ = ["CheckpointMismatch", "PolicyError", "PolicyOutput", "VPDDPolicy", "load_vpdd_checkpoint"]
