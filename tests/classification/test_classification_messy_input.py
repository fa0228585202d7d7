"""What hospitals and research teams really feed the classification path: spreadsheet exports, repeated rows, two
spellings of a class, identifying columns, odd image files. Valid input is read as meant; bad input is one line
naming the file and the row, exit 2; no patient identifier reaches a report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsight.cli import main
from medsight.data.manifest import load_manifest
from medsight.errors import MedsightError
from medsight.evaluation.subgroups import audit, group_column
from medsight.io.images import read_image

TRAIN = ["train", "--task", "classification"]


def _images(root: Path, n: int = 24, seed: int = 0) -> list[str]:
    """``n`` 20 x 20 noise PNGs under ``root/img``, a bright square in every other one; their manifest paths."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = rng.normal(60, 10, (20, 20))
        if i % 2:
            img[4:12, 4:12] += 120
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        names.append(f"img/{i}.png")
    return names


def _table(root: Path, n: int = 24, seed: int = 0) -> pd.DataFrame:
    names = _images(root, n, seed)
    labels = ["lesion" if i % 2 else "clear" for i in range(n)]
    return pd.DataFrame({"path": names, "label": labels, "patient_id": [f"P{i:03d}" for i in range(n)]})


def _refused(csv: Path, *expected: str) -> str:
    with pytest.raises(MedsightError) as caught:
        load_manifest(csv)
    message = str(caught.value)
    assert caught.value.path == str(csv) and "\n" not in message
    for part in expected:
        assert part in message, message
    return message


# --- how spreadsheets write a CSV -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda t: t.to_csv(index=False, sep=";"), id="semicolon (European Excel)"),
        pytest.param(lambda t: t.to_csv(index=False, sep="\t"), id="tab"),
        pytest.param(lambda t: t.rename(columns={"label": " Label ", "path": "Path"}).to_csv(index=False), id="header"),
        pytest.param(lambda t: "\ufeff" + t.to_csv(index=False, lineterminator="\r\n") + ",,\r\n,,\r\n", id="excel"),
    ],
)
def test_spreadsheet_exports_are_read_as_meant(write: object, tmp_path: Path) -> None:
    """A semicolon or tab delimiter and a header written ``Label``/`` label`` were refused as having no 'path' or
    'label' column; the empty ``,,`` rows Excel leaves at the end were "row 26 has no label"."""
    table = _table(tmp_path)
    (tmp_path / "manifest.csv").write_text(write(table), encoding="utf-8")  # type: ignore[operator]
    data = load_manifest(tmp_path / "manifest.csv")
    assert data.label_names == ["clear", "lesion"] and sum(len(s) for s in data.splits.values()) == 24
    assert set().union(*(s.patient_ids or [] for s in data.splits.values())) == set(table["patient_id"])


def test_patient_id_spelled_otherwise_still_keeps_patients_together(tmp_path: Path) -> None:
    """A ``PatientID`` header was not the patient id: each image became its own patient (one patient's images split
    between train and test) and the ids became a subgroup attribute."""
    table = _table(tmp_path)
    table["patient_id"] = [f"P{i // 3:03d}" for i in range(24)]  # three images per patient
    table.rename(columns={"patient_id": "PatientID"}).to_csv(tmp_path / "manifest.csv", index=False)
    data = load_manifest(tmp_path / "manifest.csv")
    by_split = {name: set(part.patient_ids or []) for name, part in data.splits.items()}
    assert set().union(*by_split.values()) == {f"P{k:03d}" for k in range(8)}
    assert not (by_split["train"] & by_split.get("test", set()))
    assert all(part.attributes is not None and part.attributes.columns.empty for part in data.splits.values())


def test_a_column_given_twice_is_refused(tmp_path: Path) -> None:
    """A second ``label`` column was renamed ``label.1`` by pandas and kept, without a word, as an attribute."""
    table = _table(tmp_path)
    text = table.assign(extra="clear").to_csv(index=False).replace("extra", "Label", 1)
    (tmp_path / "manifest.csv").write_text(text)
    _refused(tmp_path / "manifest.csv", "'label' and 'Label' appears twice")


def test_a_non_utf8_manifest_says_how_to_fix_it(tmp_path: Path) -> None:
    table = _table(tmp_path).assign(site="Zürich")
    (tmp_path / "manifest.csv").write_bytes(table.to_csv(index=False).encode("latin-1"))
    _refused(tmp_path / "manifest.csv", "not UTF-8", "save the manifest as UTF-8")


# --- rows -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda t: pd.concat([t, t.iloc[[0]]]), "rows 2 and 26 name the same image (img/0.png):", id="dup"),
        pytest.param(
            lambda t: pd.concat([t, t.iloc[[0]].assign(label="lesion", patient_id="Q1")]),
            "labelled clear and lesion",
            id="two labels",
        ),
        pytest.param(
            lambda t: pd.concat([t, t.iloc[[0]].assign(path="./img/0.png", split="test")]).assign(
                split=["train"] * 16 + ["val"] * 4 + ["test"] * 5
            ),
            "in the train and test splits",
            id="two splits, spelled otherwise",
        ),
    ],
)
def test_one_image_listed_twice_is_refused(change: object, expected: str, tmp_path: Path) -> None:
    """The same file on two rows was counted twice in every metric, or trained on and tested on (the rows had no
    patient id in common, so nothing said so), or trained with two labels."""
    change(_table(tmp_path)).to_csv(tmp_path / "manifest.csv", index=False)  # type: ignore[operator]
    _refused(tmp_path / "manifest.csv", expected)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param(("Benign", "benign", "malignant"), "labels 'Benign' and 'benign' are two spellings", id="case"),
        pytest.param(("1", "1.0", "0"), "labels '1' and '1.0' are two spellings", id="number"),
    ],
)
def test_two_spellings_of_one_class_are_refused(labels: tuple[str, ...], expected: str, tmp_path: Path) -> None:
    """``Benign``/``benign`` and ``1``/``1.0`` were trained as different classes the model had to tell apart."""
    table = _table(tmp_path)
    table["label"] = [labels[0] if i % 4 == 0 else labels[1] if i % 2 == 0 else labels[2] for i in range(24)]
    table.to_csv(tmp_path / "manifest.csv", index=False)
    _refused(tmp_path / "manifest.csv", expected)


def test_windows_paths_and_split_names_are_read_as_meant(tmp_path: Path) -> None:
    """``img\\0.png`` (a manifest written on Windows) was a missing file, and ``Train``/``Validation`` unknown
    splits."""
    table = _table(tmp_path)
    table["path"] = [p.replace("/", "\\") for p in table["path"]]
    table["split"] = ["Train"] * 16 + ["Validation"] * 4 + [" test"] * 4
    table.to_csv(tmp_path / "manifest.csv", index=False)
    data = load_manifest(tmp_path / "manifest.csv")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 16, "val": 4, "test": 4}
    assert data.split_method == "manifest"


def test_a_row_without_a_path_is_named(tmp_path: Path) -> None:
    """A blank path was reported as "names a file that does not exist: nan"."""
    table = _table(tmp_path)
    table.loc[3, "path"] = ""
    table.to_csv(tmp_path / "manifest.csv", index=False)
    message = _refused(tmp_path / "manifest.csv", "row 5 has no path")
    assert "nan" not in message


def test_row_numbers_count_blank_lines(tmp_path: Path) -> None:
    """A blank line in the middle was skipped by pandas, so a later error named the wrong line."""
    table = _table(tmp_path)
    table.loc[9, "path"] = "img/not_there.png"
    lines = table.to_csv(index=False).splitlines()
    (tmp_path / "manifest.csv").write_text("\n".join([*lines[:3], "", *lines[3:]]) + "\n")
    _refused(tmp_path / "manifest.csv", "row 12 names a file that does not exist: img/not_there.png")


def test_a_label_that_reads_as_missing_says_so(tmp_path: Path) -> None:
    table = _table(tmp_path)
    table.loc[2, "label"] = "None"
    table.to_csv(tmp_path / "manifest.csv", index=False)
    _refused(tmp_path / "manifest.csv", "row 4 has no label ('None' reads as missing")


def test_a_3d_image_in_a_2d_manifest_is_named(tmp_path: Path) -> None:
    """ "manifest mixes 2D and 3D images" named neither the row nor the file."""
    import nibabel as nib

    table = _table(tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 6), np.float32), np.eye(4)), tmp_path / "img" / "vol.nii.gz")
    table.loc[5, "path"] = "img/vol.nii.gz"
    table.to_csv(tmp_path / "manifest.csv", index=False)
    _refused(tmp_path / "manifest.csv", "row 7 (img/vol.nii.gz) is 3D, 23 of 24 images are 2D")


def test_a_class_missing_from_validation_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = _table(tmp_path)
    table.loc[6, "label"] = "rare"
    table["split"] = ["train"] * 16 + ["val"] * 4 + ["test"] * 4
    table.to_csv(tmp_path / "manifest.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="medsight.data"):
        load_manifest(tmp_path / "manifest.csv")
    assert "the val split holds no image of 'rare' (1 in all)" in caplog.text
    assert "the test split holds no image of 'rare'" in caplog.text


# --- subgroup attributes ----------------------------------------------------------------------------------------


def test_identifying_columns_never_become_subgroups(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A ``patient_name`` column became a subgroup per patient, with every name in metrics.json and the card; a
    ``birth_date`` column was cut into date quartiles."""
    table = _table(tmp_path)
    table["Patient Name"] = [f"DOE^JANE{i}" for i in range(24)]
    table["birth_date"] = [f"19{50 + i}0101" for i in range(24)]
    table["MRN"] = [f"{900000 + i}" for i in range(24)]
    table["sex"] = ["F", "M"] * 12
    table.to_csv(tmp_path / "manifest.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="medsight.data"):
        data = load_manifest(tmp_path / "manifest.csv")
    assert all(list(part.attributes.columns) == ["sex"] for part in data.splits.values())  # type: ignore[union-attr]
    assert "'Patient Name' identifies patients" in caplog.text and "DOE^JANE" not in caplog.text


def test_a_column_with_a_value_per_case_is_not_audited(caplog: pytest.LogCaptureFixture) -> None:
    """Any column unknown to the identifier list (a file name, a scan date) is still no subgroup: groups of one
    case each would name them in the report."""
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 20)
    score = rng.random(40)
    attributes = pd.DataFrame({"scan_ref": [f"AB{i:04d}" for i in range(40)], "site": ["A", "B"] * 20})
    with caplog.at_level(logging.WARNING, logger="medsight"):
        report = audit(y, score, (score > 0.5).astype(int), attributes, n_boot=10)
    assert set(report) == {"site"} and "AB00" not in json.dumps(report) and "'scan_ref'" in caplog.text


def test_messy_attribute_values_group_as_meant() -> None:
    """An age column with ``unknown`` in it was text, so each age became a group of its own; ``F`` and ``F `` were
    two groups; a missing age became the group ``nan``; ``stage`` was cut into age bands."""
    ages = pd.Series([23, 45, "unknown", 67, 81, 12, 39, "", "NA", 59, "045Y"], name="Age")
    assert group_column(ages).tolist() == [
        "18-39", "40-59", "missing", "60-79", "80+", "<18", "18-39", "missing", "missing", "40-59", "40-59"
    ]  # fmt: skip
    numeric_ages = pd.Series([30.0, np.nan, 70.0], name="age")  # few values: still bands
    assert group_column(numeric_ages).tolist() == ["18-39", "missing", "60-79"]
    sex = pd.Series(["F", "F ", "f", "M", "m", None, " "], name="sex")
    assert group_column(sex).tolist() == ["F", "F", "F", "M", "M", "missing", "missing"]
    stage = pd.Series(np.arange(1, 13) % 4 + 1, name="stage")
    assert set(group_column(stage)) == {"1", "2", "3", "4"}


def test_manifest_attributes_with_blanks_and_na_are_grouped(tmp_path: Path) -> None:
    table = _table(tmp_path)
    table["age"] = [str(20 + 3 * i) if i % 5 else "unknown" for i in range(24)]
    table["site"] = ["A", "B", "NA", ""] * 6
    table.to_csv(tmp_path / "manifest.csv", index=False)
    data = load_manifest(tmp_path / "manifest.csv")
    attributes = pd.concat([p.attributes for p in data.splits.values()])  # type: ignore[misc]
    assert set(group_column(attributes["age"].reset_index(drop=True))) == {"18-39", "40-59", "60-79", "80+", "missing"}
    assert set(group_column(attributes["site"].reset_index(drop=True))) == {"A", "B", "missing"}


# --- image files ------------------------------------------------------------------------------------------------


def test_odd_array_files(tmp_path: Path) -> None:
    """A (rows, columns, 1) array was read as a 3D volume one voxel deep; a complex array lost its imaginary part
    with only a numpy warning."""
    np.save(tmp_path / "hw1.npy", np.arange(20 * 24, dtype=np.float32).reshape(20, 24, 1))
    image = read_image(tmp_path / "hw1.npy")
    assert image.shape == (1, 20, 24) and image[0, 1, 0] == 24
    np.save(tmp_path / "complex.npy", np.ones((20, 24), complex))
    with pytest.raises(MedsightError, match="complex128 values, not image intensities"):
        read_image(tmp_path / "complex.npy")


def test_16_bit_colour_tiff_keeps_its_values(tmp_path: Path) -> None:
    """Pillow reads a 16-bit RGB TIFF as 8-bit by keeping the high byte: values under 256 became a black image."""
    import tifffile  # pinned in requirements.txt: make test installs it, so a missing one fails here
    grey = (np.arange(20 * 24).reshape(20, 24) % 200).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", np.stack([grey, grey // 2, grey], axis=-1))
    image = read_image(tmp_path / "rgb16.tif")
    assert image.shape == (3, 20, 24) and np.array_equal(image[0], grey) and np.array_equal(image[1], grey // 2)


def test_a_folder_of_pngs_says_to_name_the_files(tmp_path: Path) -> None:
    _images(tmp_path, n=2)
    with pytest.raises(MedsightError, match=r"holds 2 \.png file\(s\): name the image files themselves"):
        read_image(tmp_path / "img")


# --- end to end ---------------------------------------------------------------------------------------------------


def test_excel_manifest_trains_and_evaluation_reports_no_identifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest as a hospital exports it (semicolons, BOM, CRLF, ``PatientID``, a name column, ages with
    ``unknown``) trains; the evaluation's subgroups are the age bands and sex, and no name reaches any file."""
    table = _table(tmp_path / "set", n=40)
    table["Patient Name"] = [f"DOE^JANE{i}" for i in range(40)]
    table["Age"] = [str(25 + i) if i % 7 else "unknown" for i in range(40)]
    table["sex"] = ["F", "M ", "m", "F"] * 10
    table = table.rename(columns={"patient_id": "PatientID", "label": "Label"})
    text = "\ufeff" + table.to_csv(index=False, sep=";", lineterminator="\r\n")
    (tmp_path / "set" / "manifest.csv").write_text(text, encoding="utf-8")
    bundle, out = tmp_path / "bundle", tmp_path / "eval"
    args = ["--epochs", "1", "--batch-size", "16", "--tta", "off", "--ensemble", "off"]
    assert main([*TRAIN, str(tmp_path / "set" / "manifest.csv"), "--out", str(bundle), *args]) == 0
    evaluate = ["evaluate", str(bundle), str(tmp_path / "set"), "--split", "train", "--out", str(out)]
    assert main([*evaluate, "--bootstrap", "10", "--no-shift"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["subgroups"]) == {"Age", "sex"}
    assert set(metrics["subgroups"]["sex"]["groups"]) == {"F", "M"}
    assert set(metrics["subgroups"]["Age"]["groups"]) <= {"18-39", "40-59", "60-79", "missing"}
    written = "".join(p.read_text(errors="ignore") for p in [*out.iterdir(), *bundle.iterdir()] if p.is_file())
    assert "DOE^JANE" not in written + capsys.readouterr().out


def test_a_listing_error_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = _table(tmp_path / "set")
    pd.concat([table, table.iloc[[3]]]).to_csv(tmp_path / "set" / "manifest.csv", index=False)
    assert main([*TRAIN, str(tmp_path / "set" / "manifest.csv"), "--out", str(tmp_path / "b"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("rows 5 and 26 name the same image (img/3.png): list each image once (several labels of "
                            "one image go in one cell, separated by '|')")  # fmt: skip
    assert not (tmp_path / "b").exists()


def test_a_multi_page_tiff_or_animated_gif_says_only_its_first_page_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stack saved as one multi-page TIFF (or an animated GIF) was read as its first page without a word."""
    from PIL import Image

    from medsight.io.images import read_image

    pages = [Image.fromarray(np.full((8, 8), 40 * k, np.uint8)) for k in range(3)]
    for name in ("stack.tif", "loop.gif"):
        pages[0].save(tmp_path / name, save_all=True, append_images=pages[1:])
        caplog.clear()
        with caplog.at_level("WARNING", logger="medsight"):
            image = read_image(tmp_path / name)
        assert image.shape == (1, 8, 8) and float(image.max()) == 0.0  # the first page
        assert any("holds 3 pages or frames; only the first is read" in r.getMessage() for r in caplog.records)
    caplog.clear()
    pages[0].save(tmp_path / "one.tif")
    with caplog.at_level("WARNING", logger="medsight"):
        read_image(tmp_path / "one.tif")
    assert not caplog.records


def test_evaluation_data_declaring_another_positive_class_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The evaluation manifest's sidecar named another positive class than the model's; the metrics were for the
    model's without a word, so a reader of them could take sensitivity for the other class's."""
    table = _table(tmp_path / "set", n=40)
    table.to_csv(tmp_path / "set" / "manifest.csv", index=False)
    (tmp_path / "set" / "manifest.json").write_text(json.dumps({"positive": "lesion"}))
    bundle = tmp_path / "bundle"
    args = ["--epochs", "1", "--batch-size", "16", "--tta", "off", "--ensemble", "off"]
    assert main([*TRAIN, str(tmp_path / "set" / "manifest.csv"), "--out", str(bundle), *args]) == 0
    (tmp_path / "set" / "manifest.json").write_text(json.dumps({"positive": "clear"}))
    evaluate = ["evaluate", str(bundle), str(tmp_path / "set"), "--split", "train", "--bootstrap", "10", "--no-shift"]
    with caplog.at_level("WARNING", logger="medsight"):
        assert main([*evaluate, "--out", str(tmp_path / "eval")]) == 0
    said = [r.getMessage() for r in caplog.records if "declare 'clear' as the positive class" in r.getMessage()]
    assert said and "the binary metrics are for 'lesion'" in said[0]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["positive_class"] == "lesion"
