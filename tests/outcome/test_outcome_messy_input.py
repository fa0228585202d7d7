"""Messy outcome tables and prediction inputs: refused before training with one line naming the file, the column
and the problem (never a patient identifier), or read and reported honestly; never silently dropped."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsight import runtime
from medsight.cli import main
from medsight.data.clinical import load_outcome
from medsight.errors import MedsightError
from medsight.tasks.outcome.plan import OutcomeOptions
from medsight.tasks.outcome.predict import OutcomeModel, OutcomeResult
from medsight.tasks.outcome.train import train

Row = dict[str, str]


def _rows(n: int = 24) -> list[Row]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": f"img{i:02d}.png",
            "patient_id": f"p{i:02d}",
            "died": str(int(i % 3 == 0)),
            "age": f"{rng.normal(75 if i % 3 == 0 else 55, 8):.1f}",
            "sex": "MF"[i % 2],
            "days": str(int(rng.integers(1, 100))),
        }
        for i in range(n)
    ]


def _task(
    root: Path,
    edit_rows: Callable[[list[Row]], None] | None = None,
    edit_spec: Callable[[dict[str, object]], None] | None = None,
    n: int = 24,
    images: bool = False,
) -> Path:
    """A task file and its table (no images unless asked: loading never reads them)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = _rows(n)
    if edit_rows:
        edit_rows(rows)
    if images:
        rng = np.random.default_rng(1)
        for r in rows:
            px = rng.integers(0, 80, size=(24, 24)).astype(np.uint8)
            if r["died"] == "1":
                px[6:12, 6:12] = 220
            Image.fromarray(px).save(root / r["image"])
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(f'"{r[h]}"' for h in header) for r in rows]
    (root / "clinical.csv").write_text("\n".join(lines) + "\n")
    spec: dict[str, object] = {
        "table": "clinical.csv",
        "image_column": "image",
        "patient_column": "patient_id",
        "target": {"column": "died", "positive": ["1"], "negative": ["0"], "name": "died"},
        "fields": {"age": "numeric", "sex": "categorical"},
        "attributes": ["sex", "age"],
        "time_column": "days",
    }
    if edit_spec:
        edit_spec(spec)
    path = root / "task.json"
    path.write_text(json.dumps(spec))
    return path


# ------------------------------------------------------------------------------------------------ the table (03)


def test_decimal_commas_in_a_numeric_field_are_refused_naming_field_and_line(tmp_path: Path) -> None:
    def comma(rows: list[Row]) -> None:
        for r in rows:
            r["age"] = r["age"].replace(".", ",")

    path = _task(tmp_path, comma)
    with pytest.raises(MedsightError, match=r"numeric field 'age'.*24 value\(s\).*line 2, 3.*decimal comma") as err:
        load_outcome(str(path))
    assert "task.json" in str(err.value) and "p00" not in str(err.value)
    # through the CLI: one line, exit 2, before any training
    assert main(["train", str(path), "--out", str(tmp_path / "b"), "--epochs", "1"]) == 2
    assert not (tmp_path / "b").exists()


def test_text_in_a_numeric_field_is_refused_but_missing_markers_are_missing(tmp_path: Path) -> None:
    def text(rows: list[Row]) -> None:
        rows[3]["age"] = "eighty"
        rows[4]["age"] = "NA"
        rows[5]["age"] = ""

    with pytest.raises(MedsightError, match=r"numeric field 'age'.*1 value\(s\).*line 5\b.*'eighty'"):
        load_outcome(str(_task(tmp_path / "a", text)))

    def markers(rows: list[Row]) -> None:
        rows[4]["age"] = "NA"
        rows[5]["age"] = ""
        rows[6]["age"] = "?"

    data = load_outcome(str(_task(tmp_path / "b", markers)))
    assert len(data.y) == 24  # missing values never drop a row


# ------------------------------------------------------------------------------------ columns of the table (04, 12)


def test_a_declared_field_absent_from_the_table_is_refused(tmp_path: Path) -> None:
    path = _task(tmp_path, edit_spec=lambda s: s.update(fields={"Age": "numeric", "sex": "categorical"}))
    with pytest.raises(MedsightError, match=r"'Age' \(field\).*not in clinical.csv.*did you mean 'age'") as err:
        load_outcome(str(path))
    assert str(err.value).startswith(str(path))


def test_a_patient_column_absent_from_the_table_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    path = _task(tmp_path, edit_spec=lambda s: s.update(patient_column="patient"))
    with pytest.raises(MedsightError, match=r"'patient' \(patient_column\).*not in clinical.csv.*'patient_id'"):
        load_outcome(str(path))
    assert main(["train", str(path), "--out", str(tmp_path / "b"), "--epochs", "1"]) == 2


def test_absent_image_time_and_attribute_columns_are_refused_together(tmp_path: Path) -> None:
    def edit(s: dict[str, object]) -> None:
        s.update(image_column="img", time_column="time", attributes=["sex", "ethnicity"])

    with pytest.raises(MedsightError, match=r"'img' \(image_column\).*'time' \(time_column\).*'ethnicity'"):
        load_outcome(str(_task(tmp_path, edit_spec=edit)))


# ---------------------------------------------------------------------------------------- patient ids (14)


def test_rows_without_a_patient_id_are_each_their_own_patient_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def blank(rows: list[Row]) -> None:
        for i in range(0, len(rows), 4):
            rows[i]["patient_id"] = " " if i == 4 else ""

    caplog.set_level(logging.INFO)
    data = load_outcome(str(_task(tmp_path, blank)))
    assert len(set(data.patient_ids)) == 24 and Counter(data.patient_ids).most_common(1)[0][1] == 1
    assert all(p.strip() for p in data.patient_ids)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("6 row(s) without a patient id" in m and "line 2, 6, 10" in m for m in warned), warned
    assert not any("p01" in m for m in warned)


# ------------------------------------------------------------------------------------------------ times (15)


def test_negative_times_are_refused(tmp_path: Path) -> None:
    def negative(rows: list[Row]) -> None:
        for i in range(0, len(rows), 5):
            rows[i]["days"] = "-" + rows[i]["days"]

    with pytest.raises(MedsightError, match=r"time column 'days'.*5 negative.*line 2, 7, 12"):
        load_outcome(str(_task(tmp_path / "a", negative)))

    def text(rows: list[Row]) -> None:
        rows[2]["days"] = "soon"

    with pytest.raises(MedsightError, match=r"time column 'days'.*not numbers.*line 4"):
        load_outcome(str(_task(tmp_path / "b", text)))

    def zero_and_blank(rows: list[Row]) -> None:
        rows[2]["days"] = "0"
        rows[3]["days"] = ""

    data = load_outcome(str(_task(tmp_path / "c", zero_and_blank)))
    assert data.time is not None and data.time[2] == 0 and np.isnan(data.time[3])


# ---------------------------------------------------------------------------------------------- outcomes (19)


def test_numerically_equal_outcome_values_are_matched_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def spreadsheet(rows: list[Row]) -> None:
        for i in range(0, len(rows), 6):
            rows[i]["died"] += ".0"  # half of the deaths: "1.0"
        rows[1]["died"] = " 0.00 "

    caplog.set_level(logging.INFO)
    data = load_outcome(str(_task(tmp_path, spreadsheet)))
    assert len(data.y) == 24 and int(data.y.sum()) == 8 and data.excluded["outcome not recorded"] == 0
    said = caplog.text
    assert "'1.0'" in said and "'1'" in said and "4 row(s)" in said


def test_an_unlisted_outcome_value_is_refused_and_not_recorded_ones_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def unlisted(rows: list[Row]) -> None:
        rows[3]["died"] = "yes"
        rows[7]["died"] = "2"

    with pytest.raises(MedsightError, match=r"outcome column 'died'.*2 row\(s\).*'2', 'yes'.*line 5, 9.*unknown"):
        load_outcome(str(_task(tmp_path / "a", unlisted)))

    def unrecorded(rows: list[Row]) -> None:
        rows[3]["died"] = ""
        rows[7]["died"] = "unknown"
        rows[8]["died"] = "pending"

    caplog.set_level(logging.INFO)

    def listed(s: dict[str, object]) -> None:
        s["target"] = {"column": "died", "positive": ["1"], "negative": ["0"], "unknown": ["pending"]}

    data = load_outcome(str(_task(tmp_path / "b", unrecorded, listed)))
    assert len(data.y) == 21 and data.excluded["outcome not recorded"] == 3
    assert "3 row(s) with no recorded outcome" in caplog.text


# ------------------------------------------------------------------------------------ predict (05, 16): one bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on 30 tiny images at 32 px (a couple of seconds)."""
    root = tmp_path_factory.mktemp("messy")
    task = _task(root / "data", n=30, images=True)
    out = root / "bundle"
    train(str(task), out, OutcomeOptions(seed=0, epochs=1, image_size=32, batch_size=16))
    return out


def test_predict_reports_values_the_model_cannot_use(
    bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = bundle.parent / "data" / "img00.png"
    table = tmp_path / "new.csv"
    table.write_text(f'image,age,sex\n{image},eighty,M\n{image},80,female\n{image},,M\n{image},"72,5",F\n')
    model = runtime.load(bundle)
    assert isinstance(model, OutcomeModel)
    caplog.set_level(logging.INFO)
    results = model.predict([table])
    assert all(isinstance(r, OutcomeResult) for r in results)
    text, unseen, empty, comma = (r for r in results if isinstance(r, OutcomeResult))
    assert text.missing_fields == ["age"] and set(text.unusable_fields) == {"age"}
    assert "'eighty' is not a number" in text.unusable_fields["age"]
    assert unseen.missing_fields == [] and set(unseen.unusable_fields) == {"sex"}
    assert "'female'" in unseen.unusable_fields["sex"] and "not seen in training" in unseen.unusable_fields["sex"]
    assert empty.missing_fields == ["age"] and empty.unusable_fields == {}
    assert "decimal comma" in comma.unusable_fields["age"]
    assert "1 unusable" in text.summary() and "2 fields" not in text.summary()
    assert any("3 of 4 case(s)" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    pred = tmp_path / "pred"
    assert main(["predict", str(bundle), str(table), "--out", str(pred)]) == 0
    written = json.loads((pred / "predictions.json").read_text())["predictions"]
    assert written[0]["missing_fields"] == ["age"] and "age" in written[0]["unusable_fields"]
    assert written[1]["unusable_fields"]["sex"] == unseen.unusable_fields["sex"]
    assert written[2]["unusable_fields"] == {}


def test_predict_on_a_3d_volume_says_the_model_takes_2d_images(bundle: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 12, 12)).astype(np.float32), np.eye(4)), volume)
    with pytest.raises(MedsightError, match="a 3D image, but the model takes 2D images"):
        runtime.load(bundle).predict([volume])
    assert main(["predict", str(bundle), str(volume), "--out", str(tmp_path / "pred")]) == 2
