"""Evaluation a clinical reviewer can check: metrics with intervals that count patients at a stated
operating point, per-subgroup comparisons with a reference group, calibration, the fairness gate
decided on interval bounds, the data audit and the report.

Modules: ``metrics`` (point estimates, weighted engine), ``intervals`` (cluster-adjusted interval
formulas), ``rates`` (rates and AUROC as estimates with intervals), ``bootstrap`` (patient
resampling), ``thresholds`` (operating-point policies and their guarantee), ``calibration`` (ECE,
temperature scaling), ``subgroups`` and ``fairness`` (groups, reference comparison, gate),
``results`` (the typed result every output renders), ``audit`` (manifest audit), ``report`` (all
outputs), ``html`` and ``plots`` (report rendering), ``simulation`` (seeded clustered data with a
known truth, for coverage checks). Submodules are imported on use to keep ``import xraytriage`` light.
"""
