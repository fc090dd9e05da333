"""Preference alignment of the generator: OneRec's Iterative Preference Alignment (IPA) with DPO.

Pure torch / numpy (no I/O): the round that loads versions, generates, scores and publishes is
:mod:`actors.aligner`.

* :mod:`models.alignment.config` — :class:`AlignConfig`, the one frozen config of a round;
* :mod:`models.alignment.logprob` — a whole session's log-probability by teacher forcing;
* :mod:`models.alignment.dpo` — the DPO loss (Rafailov et al., 2023), the bounded feedback loss
  (OneRec-V2's GBPO) and the KL to the reference;
* :mod:`models.alignment.pairs` — chosen / rejected pairs from scored candidates, ±1 advantages from
  real feedback;
* :mod:`models.alignment.train` — the training step (NTP + λ·DPO) and the loop every worker runs.
"""
