"""The subgroup audit: a real gap is flagged and a null one is not, for binary and multi-class classification and for
segmentation (Dice by group), with the p-values corrected for the number of groups compared (Holm)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medsight.evaluation.subgroups import audit, audit_cases, group_column


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm's step-down adjustment: sorted p_(i) * (m - i), made monotone, capped at 1."""
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


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
    gap = report["site"]["gaps"]["auc"]
    assert gap["flagged"] is True and gap["highest"] == "A" and gap["p_holm"] < 0.05
    assert report["site"]["groups"]["A"]["n"] == 200
    assert report["sex"]["gaps"]["auc"]["flagged"] is False


def test_many_groups_are_corrected_for_the_number_of_comparisons() -> None:
    # Twelve sites with the same model quality: any "gap" is chance. Uncorrected tests find some (66 pairs per
    # metric); after Holm none may remain.
    rng = np.random.default_rng(3)
    n = 1200
    y = rng.integers(0, 2, n)
    score = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    decision = (score >= 0.5).astype(int)
    site = pd.DataFrame({"site": [f"s{k:02d}" for k in rng.integers(0, 12, n)]})
    report = audit(y, score, decision, site, n_boot=200)["site"]
    assert report["correction"].startswith("Holm")
    raw_hits = 0
    for metric, pairs in report["comparisons"].items():
        assert len(pairs) == 66, metric
        raw = [c["p_raw"] for c in pairs]
        assert np.allclose([c["p_holm"] for c in pairs], holm_by_hand(raw)), metric
        raw_hits += sum(p < 0.05 for p in raw)
        assert not any(c["significant"] for c in pairs), metric
        assert report["gaps"][metric]["flagged"] is False
        assert report["gaps"][metric]["n_comparisons"] == 66
    assert raw_hits > 0  # the correction is what keeps these chance gaps from being flagged


def test_multiclass_audit_uses_one_vs_rest_auc_and_accuracy() -> None:
    rng = np.random.default_rng(1)
    n, k = 600, 3
    y = rng.integers(0, k, n)
    site = np.where(rng.random(n) < 0.5, "A", "B")
    good = np.eye(k)[y] * 3 + rng.normal(0, 1, (n, k))
    bad = rng.normal(0, 1, (n, k))
    logits = np.where((site == "A")[:, None], good, bad)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = audit(y, probs, probs.argmax(1), pd.DataFrame({"site": site}), n_boot=200, task_type="multiclass")
    groups = report["site"]["groups"]
    assert set(groups["A"]) == {"n", "auc", "accuracy"}
    a = site == "A"
    assert groups["A"]["accuracy"]["value"] == np.mean(probs[a].argmax(1) == y[a])
    for metric in ("auc", "accuracy"):
        gap = report["site"]["gaps"][metric]
        assert gap["flagged"] is True and gap["highest"] == "A", metric
    assert groups["B"]["auc"]["value"] < 0.6 < 0.9 < groups["A"]["auc"]["value"]


def test_segmentation_dice_by_group() -> None:
    rng = np.random.default_rng(2)
    scanner = np.array(["X"] * 30 + ["Y"] * 30 + ["Z"] * 30)
    dice = np.concatenate([rng.normal(0.85, 0.04, 30), rng.normal(0.62, 0.08, 30), rng.normal(0.85, 0.04, 30)])
    report = audit_cases({"dice": dice}, pd.DataFrame({"scanner": scanner}), n_boot=300)["scanner"]
    assert report["groups"]["Y"]["dice"]["value"] == float(np.mean(dice[30:60]))
    assert report["groups"]["Y"]["n"] == 30
    gap = report["gaps"]["dice"]
    assert gap["flagged"] is True and gap["lowest"] == "Y" and gap["n_comparisons"] == 3
    pairs = {tuple(c["groups"]): c for c in report["comparisons"]["dice"]}
    assert pairs[("X", "Z")]["significant"] is False
    assert pairs[("X", "Y")]["significant"] is True and pairs[("Y", "Z")]["significant"] is True


def test_age_becomes_bands() -> None:
    bands = group_column(pd.Series(np.arange(5, 95, 3), name="age"))
    assert set(bands) == {"<18", "18-39", "40-59", "60-79", "80+"}
