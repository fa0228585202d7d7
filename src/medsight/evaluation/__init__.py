"""Metrics with bootstrap CIs, operating points, calibration, subgroup audit, plots, the model card."""
