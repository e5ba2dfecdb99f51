"""The VPDD policy (LeRobot-style contract).

* :mod:`vpdd.policy.policy` -- :class:`VPDDPolicy`: ``from_pretrained``, ``save_pretrained``, ``reset``,
  ``select_action``, ``predict_action_chunk``, ``predict_video``, ``forward``;
* :mod:`vpdd.models.checkpoint` (re-exported here) -- the ``vpdd-pretrain`` / ``vpdd-policy`` checkpoint
  directories.
"""

from vpdd.models.checkpoint import CheckpointMismatch, load_vpdd_checkpoint
from vpdd.policy.policy import PolicyError, PolicyOutput, VPDDPolicy

__all__ = ["CheckpointMismatch", "PolicyError", "PolicyOutput", "VPDDPolicy", "load_vpdd_checkpoint"]
