"""The subgroup audit flags a real gap and not a null one."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medsight.evaluation.subgroups import audit, group_column


def test_gap_flagged_only_where_real() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    site = np.where(np.arange(n) < n // 2, "A", "B")
    good = np.clip(y * 0.8 + rng.random(n) * 0.2, 0, 1)  # near-perfect
    noise = rng.random(n)  # chance level
    score = np.where(site == "A", good, noise)
    decision = (score >= 0.5).astype(int)
    sex = rng.choice(["F", "M"], n)  # unrelated to performance
    report = audit(y, score, decision, pd.DataFrame({"site": site, "sex": sex}), n_boot=200)
    assert report["site"]["gaps"]["auc"]["flagged"] is True
    assert report["site"]["gaps"]["auc"]["highest"] == "A"
    assert report["site"]["groups"]["A"]["n"] == 200
    assert report["sex"]["gaps"]["auc"]["flagged"] is False


def test_age_becomes_bands() -> None:
    bands = group_column(pd.Series(np.arange(5, 95, 3), name="age"))
    assert set(bands) == {"<18", "18-39", "40-59", "60-79", "80+"}
