"""Offline evaluation: leave-one-out splits, ranking metrics, the ``Ranker`` protocol, training budgets."""
