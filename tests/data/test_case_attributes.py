"""Per-case attributes of case-folder data sets (attributes.csv), read in the order of the evaluated cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsight.data.case_attributes import case_attributes
from medsight.errors import MedsightError
from medsight.evaluation.subgroups import audit_cases


def test_attributes_follow_the_case_order_and_unlisted_cases_are_missing(tmp_path: Path) -> None:
    assert case_attributes(tmp_path, ["a"]) is None  # no file: no audit
    pd.DataFrame({"case_id": ["001", "002", "003"], "scanner": ["GE", "Siemens", "GE"], "age": [30, 50, 70]}).to_csv(
        tmp_path / "attributes.csv", index=False
    )
    rows = case_attributes(tmp_path, ["003", "001", "004"])
    assert rows is not None and list(rows.columns) == ["scanner", "age"]
    assert rows["scanner"].tolist()[:2] == ["GE", "GE"] and pd.isna(rows["scanner"].iloc[2])
    # feeds the Dice-by-group audit: unlisted cases form their own "missing" group
    report = audit_cases({"dice": np.array([0.9, 0.8, 0.4])}, rows[["scanner"]], n_boot=20)["scanner"]
    assert report["groups"]["GE"]["dice"]["value"] == pytest.approx(0.85)
    assert report["groups"]["missing"]["n"] == 1


def test_bad_attribute_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "attributes.csv").write_text("id,scanner\n1,GE\n")
    with pytest.raises(MedsightError, match="no 'case_id' column"):
        case_attributes(tmp_path, ["1"])
    (tmp_path / "attributes.csv").write_text("case_id,scanner\n1,GE\n1,GE\n")
    with pytest.raises(MedsightError, match="more than once") as info:
        case_attributes(tmp_path, ["1"])
    assert "attributes.csv" in str(info.value)
