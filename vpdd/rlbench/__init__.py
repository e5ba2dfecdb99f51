"""Everything RLBench (docs/rlbench.md): PerAct-format data, multi-view tokens, keyframe actions, the
multi-view action network, its training hooks, the keyframe policy and the simulator adapter.

Data flows down this list; each module imports only the ones above it (and the shared packages):

* :mod:`~vpdd.rlbench.keyframes` -- keyframe discovery and targets, rotations, ``PoseActionCoder`` (action bins);
* :mod:`~vpdd.rlbench.reader` -- PerAct's on-disk episodes, read without RLBench (safe unpickler, validation);
* :mod:`~vpdd.rlbench.synthetic` -- generated demonstrations in PerAct's format (``vpdd rlbench generate``);
* :mod:`~vpdd.rlbench.tokens` -- every camera through the shared VQ-VAE: the multi-view token cache;
* :mod:`~vpdd.rlbench.network` -- ``MultiViewActionNet`` (built by ``vpdd.models`` for ``action_net="multiview"``);
* :mod:`~vpdd.rlbench.training` -- multi-view sequences, keyframe fine-tuning data and the ``StageHooks`` that
  plug them into the shared training stage (``train_rlbench_stage``);
* :mod:`~vpdd.rlbench.policy` -- ``RLBenchPolicy``, the policy contract of ``VPDDPolicy`` for keyframes;
* :mod:`~vpdd.rlbench.env` -- ``RLBenchEnv`` (RLBench imported lazily), ``rlbench_status``, the closed loop;
* :mod:`~vpdd.rlbench.commands` -- the offline keyframe report and closed-loop run behind ``vpdd rlbench``.

Nothing is imported here, so ``vpdd info`` can ask :func:`vpdd.rlbench.env.rlbench_status` cheaply.
"""
