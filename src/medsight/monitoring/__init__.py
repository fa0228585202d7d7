"""Watching a deployed model: the drift monitor the service calls per model, the training fingerprint it compares
with, and the shift report of data from another site (``medsight evaluate``)."""

from medsight.monitoring.drift import DriftMonitor, DriftReport
from medsight.monitoring.reference import training_fingerprint

__all__ = ["DriftMonitor", "DriftReport", "training_fingerprint"]
