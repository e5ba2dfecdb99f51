"""The diffusion training stages: pre-training and fine-tuning (:mod:`vpdd.train.loop`) on the training
skeleton of :mod:`vpdd.runtime`, their sequence sources (:mod:`vpdd.train.datasets`) and the EMA."""
