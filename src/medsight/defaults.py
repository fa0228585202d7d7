"""Defaults that command-line help shows, kept apart from the modules that use them.

The CLI registers every command at start-up; reading a default from, say, the metrics module would import
torch and scikit-learn first and make ``medsight --help`` (and every command) seconds slower.
"""

from __future__ import annotations

#: Bootstrap resamples for confidence intervals.
N_BOOTSTRAP = 1000
#: Conformal prediction: the sets hold the true label for at least 1 - alpha of cases.
DEFAULT_ALPHA = 0.1
