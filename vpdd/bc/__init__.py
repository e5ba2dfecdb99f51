"""The plain behaviour-cloning baseline VPDD is compared against (docs/evaluation.md).

* :mod:`vpdd.bc.data` -- the fine-tuning demonstrations as (frame window, task, action-bin chunk) samples;
* :mod:`vpdd.bc.model` -- :class:`BCNet` (CNN + task embedding + MLP) and the ``vpdd-bc`` checkpoint format;
* :mod:`vpdd.bc.policy` -- :class:`BCPolicy`, the policy contract of :class:`~vpdd.policy.VPDDPolicy`;
* :mod:`vpdd.bc.train` -- :func:`train_bc` on the training skeleton (:mod:`vpdd.runtime.skeleton`).
"""

from vpdd.bc.model import KIND_BC, BCNet
from vpdd.bc.policy import BCPolicy

__all__ = ["KIND_BC", "BCNet", "BCPolicy"]
