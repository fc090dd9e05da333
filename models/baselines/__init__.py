"""Baselines every generator is measured against: SASRec (full-softmax CE) and popularity."""
