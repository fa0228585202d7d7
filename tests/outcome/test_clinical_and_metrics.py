"""Clinical encoding with missing indicators (no patient dropped), the fusion rule, the concordance index, the
typed options and plan, and the typed model containers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsight import tasks
from medsight.cli import main
from medsight.data.clinical import ClinicalEncoder, FieldSpec
from medsight.errors import MedsightError
from medsight.tasks.outcome.data import read_cases
from medsight.tasks.outcome.evaluate import concordance_index
from medsight.tasks.outcome.models import FittedModels, Linear, OperatingPoint, Projection, Selection, select_model
from medsight.tasks.outcome.plan import OutcomeOptions, OutcomePlan, OutcomePlanner


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
    assert kept.selected == "fused_embedding" and kept.fusion_kept
    not_kept = select_model({"image": 0.70, "clinical": 0.80, "fused_embedding": 0.78, "fused_late": 0.80})
    assert not_kept.selected == "clinical" and not not_kept.fusion_kept
    assert Selection.from_json(json.loads(json.dumps(kept.to_json()))) == kept
    with pytest.raises(MedsightError, match="unknown selection rule"):
        select_model({"image": 0.7}, "best_of_all")


def test_linear_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int)
    m = Linear.fit(x, y)
    assert np.allclose(Linear.from_json(m.to_json()).proba(x), m.proba(x))


def test_fitted_models_round_trip_through_json() -> None:
    rng = np.random.default_rng(1)
    emb, logits = rng.normal(size=(40, 16)), rng.normal(size=(40, 2))
    table = pd.DataFrame({"age": [str(a) for a in rng.integers(20, 90, 40)], "sex": ["M", "F"] * 20})
    enc = ClinicalEncoder([FieldSpec("age", "numeric"), FieldSpec("sex", "categorical")]).fit(table)
    x = enc.transform(table)
    y = (x[:, 0] + emb[:, 0] > 0).astype(int)
    fitted = FittedModels.fit(1.3, enc, emb, x, y, c=0.3, components=4, seed=0)
    assert isinstance(fitted.projection, Projection) and fitted.projection.components.shape == (4, 16)
    back = FittedModels.from_json(json.loads(json.dumps(fitted.to_json())))
    a, b = fitted.probabilities(logits, emb, x), back.probabilities(logits, emb, x)
    assert set(a) == {"image", "clinical", "fused_embedding", "fused_late"}
    assert all(np.allclose(a[k], b[k]) for k in a)
    op = OperatingPoint.choose(y, a["clinical"], None, "clinical")
    assert op.method == "youden" and OperatingPoint.from_json(op.to_json()) == op
    with pytest.raises(MedsightError, match="'models'"):
        FittedModels.from_json({"temperature": 1.0})


def test_planner_fills_what_the_options_leave_and_the_plan_round_trips() -> None:
    y = np.array([0] * 30 + [1] * 10)
    plan = OutcomePlanner(OutcomeOptions(seed=3, image_size=96, epochs=5), y).plan()
    assert (plan.image_size, plan.epochs, plan.batch_size, plan.lr) == (96, 5, 32, 1e-3)
    assert plan.class_weights == pytest.approx([40 / 60, 40 / 20])
    assert plan.selection_rule == "fusion_beats_both" and plan.operating_point_method == "youden"
    assert plan.network["num_classes"] == 2 and "seed 3" in plan.split
    assert OutcomePlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    with pytest.raises(MedsightError, match="missing"):
        OutcomePlan.from_json({k: v for k, v in plan.to_json().items() if k != "image_size"})
    with pytest.raises(MedsightError, match="--target-sensitivity"):
        OutcomePlanner(OutcomeOptions(target_sensitivity=1.5), y).plan()


def test_an_option_the_task_does_not_take_is_rejected_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MedsightError, match="--fold"):
        tasks.get("outcome").Options.from_mapping({"fold": 1}, "outcome")
    argv = ["train", str(tmp_path / "data#icu"), "--task", "outcome", "--out", str(tmp_path / "b"), "--fold", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not take --fold" in err
    assert not (tmp_path / "b").exists()


def test_predict_inputs_csv_and_sidecar(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    (tmp_path / "a.png.json").write_text(json.dumps({"age": 0, "sex": None}))
    (tmp_path / "t.csv").write_text("image,age\na.png,71\n")
    cases = read_cases([image, tmp_path / "t.csv"], ["age", "sex"])
    assert [c.fields for c in cases] == [{"age": "0", "sex": ""}, {"age": "71", "sex": ""}]
    assert cases[0].missing(["age", "sex"]) == ["sex"]
    (tmp_path / "bad.csv").write_text("path\nx.png\n")
    with pytest.raises(MedsightError, match="'image' column"):
        read_cases([tmp_path / "bad.csv"], ["age"])
    with pytest.raises(MedsightError, match="not found"):
        read_cases([tmp_path / "missing.png"], ["age"])
