"""Clinical encoding with missing indicators (no patient dropped), the fusion rule, and the concordance index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsight.data.clinical import ClinicalEncoder, FieldSpec
from medsight.pipelines.outcome import select_model
from medsight.tasks.outcome import Linear, concordance_index


def test_missing_values_become_indicators_not_dropped_rows() -> None:
    train = pd.DataFrame({"age": ["60", "", "80"], "sex": ["M", "F", ""]})
    enc = ClinicalEncoder([FieldSpec("age", "numeric"), FieldSpec("sex", "categorical")]).fit(train)
    assert enc.feature_names_ == ["age", "age_missing", "sex=F", "sex=M", "sex=missing"]
    x = enc.transform(pd.DataFrame({"age": ["", "70", "90"], "sex": ["X", "M", ""]}))
    assert x.shape == (3, 5)
    assert x[:, 1].tolist() == [1, 0, 0]  # missing age flagged, imputed with the train median (70) -> z = 0
    assert x[0, 0] == pytest.approx(0.0) and x[1, 0] == pytest.approx(0.0)
    assert x[0, 2:].tolist() == [0, 0, 0]  # unseen category: all zeros
    assert x[2, 2:].tolist() == [0, 0, 1]
    again = ClinicalEncoder.from_json(enc.to_json()).transform(train)
    assert np.allclose(again, enc.transform(train))


def test_a_field_absent_from_the_table_is_all_missing() -> None:
    enc = ClinicalEncoder([FieldSpec("lactate", "numeric")]).fit(pd.DataFrame({"other": [1, 2]}))
    assert enc.transform(pd.DataFrame({"other": [3]})).tolist() == [[0.0, 1.0]]


def test_concordance_index_hand_computed() -> None:
    # comparable pairs (earlier time had the event): (1 vs 2,3,4), (3 vs 4) -> 4 pairs.
    time = np.array([1, 2, 3, 4])
    event = np.array([1, 0, 1, 0])
    risk = np.array([0.9, 0.5, 0.3, 0.3])  # 1>2 ok, 1>3 ok, 1>4 ok, 3 == 4 tie -> 0.5
    assert concordance_index(time, event, risk) == pytest.approx(3.5 / 4)
    assert np.isnan(concordance_index(time, np.zeros(4), risk))


def test_fusion_is_kept_only_when_it_beats_both_parts() -> None:
    kept = select_model({"image": 0.70, "clinical": 0.75, "fused_embedding": 0.78, "fused_late": 0.74})
    assert kept["selected"] == "fused_embedding" and kept["fusion_kept"]
    not_kept = select_model({"image": 0.70, "clinical": 0.80, "fused_embedding": 0.78, "fused_late": 0.80})
    assert not_kept["selected"] == "clinical" and not not_kept["fusion_kept"]


def test_linear_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int)
    m = Linear.fit(x, y)
    assert np.allclose(Linear.from_json(m.to_json()).proba(x), m.proba(x))
