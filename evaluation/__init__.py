"""Evaluation of vertebra segmentation and labelling against VerSe ground truth (Grand Challenge).

Modules: :mod:`evaluation.metrics` (pure metric functions), :mod:`evaluation.score` (one
case), :mod:`evaluation.aggregate` (leaderboard aggregates), :mod:`evaluation.discover`
(ground truth, GC jobs, prediction folders), :mod:`evaluation.run` (parallel scoring,
``metrics.json``), :mod:`evaluation.report` (HTML report), :mod:`evaluation.cli`.
"""
