"""Training infrastructure shared by the tokenizer, pre-training and fine-tuning loops: self-describing
checkpoint directories (:mod:`vpdd.train.checkpoint`) and torchrun/DDP set-up
(:mod:`vpdd.train.distributed`)."""
