"""The training runtime: what every training stage (tokenizer, pre-training, fine-tuning, RLBench) runs on.

* :mod:`vpdd.runtime.checkpoint` -- self-describing checkpoint directories, written atomically;
* :mod:`vpdd.runtime.distributed` -- torchrun / DDP set-up and the collectives the loops use;
* :mod:`vpdd.runtime.guard` -- the stop flag and the errors a run ends with (:class:`TrainingDiverged`,
  :class:`TrainingInterrupted`);
* :mod:`vpdd.runtime.seeding` -- per-step seeds and global RNG states (exact resume);
* :mod:`vpdd.runtime.fingerprint` -- run fingerprints and code digests (what a resume must match);
* :mod:`vpdd.runtime.live` -- DVCLive logging;
* :mod:`vpdd.runtime.skeleton` -- the one training loop (:class:`Trainer`, :class:`Loop`).

It imports nothing of vpdd but :mod:`vpdd.utils`, so every package that trains can use it.
"""
