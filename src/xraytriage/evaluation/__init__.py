"""Evaluation a clinical reviewer can check: metrics with patient-bootstrap intervals at a stated
operating point, per-subgroup gaps, calibration, the fairness gate, the data audit and the report.

Modules: ``metrics`` (point estimates, weighted engine), ``bootstrap`` (patient resampling),
``thresholds`` (operating-point policies), ``calibration`` (ECE, temperature scaling), ``subgroups``
and ``fairness`` (groups, gaps, gate), ``audit`` (manifest audit), ``report`` (all outputs), ``html``
and ``plots`` (report rendering). Submodules are imported on use to keep ``import xraytriage`` light.
"""
