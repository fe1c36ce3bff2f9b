"""Training: the one resumable loop every training job runs (:mod:`relic.train.loop`), the train
states and jitted steps of each job, the divergence policy and the sweep helpers."""
