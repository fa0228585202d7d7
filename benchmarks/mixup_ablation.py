"""Mixup in the classification recipe, decided on the validation split only (issue 13: the test split decides nothing).

Compares, on PneumoniaMNIST and BreastMNIST at 28 px, the validation-chosen loss and width of
``classification_ablation.py`` without and with mixup (``--mixup``; ``steps.make_step``):

* ``balanced-w16``: class-balanced cross-entropy, ResNet widths 16-128 (the default's network and loss);
* ``balanced-w16-mixup0.2``: the same with mixup, α = 0.2 (Zhang et al.'s value for ImageNet-scale training; one
  value only, to keep the comparison inside this machine's time).

Each run is one model as trained (no seed members, ensemble or test-time views), scored on the official
**validation** split at its best epoch: the AUC after temperature scaling. The test split is never loaded. BreastMNIST
trains 40 epochs; PneumoniaMNIST 15 (``--epochs``, one invocation per set), fewer than a default run's 19-23 per recipe,
for time.

Decision rule, fixed before the runs: mixup becomes the default (α 0.2) only if its validation AUC, averaged over the
seeds and then over the two data sets, beats ``balanced-w16``'s by more than 0.002; otherwise (a tie included) the
default stays without mixup, the simpler recipe.

Run: ``MEDSIGHT_DATA=../shared/data MEDSIGHT_THREADS=2 .venv/bin/python benchmarks/mixup_ablation.py --sets breastmnist
--epochs 40``, then ``--sets pneumoniamnist --epochs 15``. Writes ``benchmarks/results/mixup_ablation.json``, adding
runs to those already there.
"""

from __future__ import annotations

from pathlib import Path

from classification_ablation import SETTINGS, ablate

RESULTS = Path(__file__).resolve().parent / "results" / "mixup_ablation.json"
MIXUP_SETTINGS = {
    "balanced-w16": SETTINGS["balanced-w16"],
    "balanced-w16-mixup0.2": {**SETTINGS["balanced-w16"], "mixup": 0.2},
}
#: Without mixup first: a tie keeps the simpler recipe.
SIMPLICITY = list(MIXUP_SETTINGS)


if __name__ == "__main__":
    ablate(__doc__, "mixup_ablation.py", MIXUP_SETTINGS, SIMPLICITY, RESULTS)
