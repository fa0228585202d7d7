"""Findings carry standard codes (issue 11 §1 results out): every default code is in DICOM PS3.16 (as pydicom carries
it) or is one of the few SNOMED CT concepts listed with their source in codes.py; a bundle's own map wins; the local
scheme is the last resort and the SR declares it; the bundle schema takes the optional ``codes`` field and a bundle
without it still validates; the algorithm identity's checksum is the sha256 of the bundle's defining files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.sr._concepts_dict import concepts

from medsight.errors import MedsightError
from medsight.serving.codes import DEFAULT_CODES, LOCAL_SCHEME, bundle_codes, code_for
from medsight.serving.dicom_objects import Finding, read_sr, write_sr
from medsight.serving.provenance import AlgorithmIdentity, bundle_checksum
from medsight.training.bundle import load_bundle, validate_meta
from serving.test_service_type2 import dciodvfy
from training.test_bundle_schema import _bundle, _meta

#: SNOMED CT concepts codes.py gives with their source in a comment because PS3.16 does not list them.
STATED_OUTSIDE_PS316 = {"233604007", "44029006", "3341006", "419620001", "305351004"}


def test_every_default_code_is_in_the_dicom_tables_or_stated() -> None:
    in_ps316: dict[str, set[str]] = {}
    sct: dict[str, dict[str, tuple[str, list[int]]]] = concepts["SCT"]  # type: ignore[assignment]
    for entry in sct.values():
        for value, (meaning, _cids) in entry.items():
            in_ps316.setdefault(value, set()).add(meaning)
    for label, (code, category) in DEFAULT_CODES.items():
        assert code.scheme_designator == "SCT", label
        assert code.value in in_ps316 or code.value in STATED_OUTSIDE_PS316, f"{label}: {code.value} unverified"
        if code.value in in_ps316:
            assert code.meaning in in_ps316[code.value], label
        assert category.value in in_ps316, label


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("pneumonia", "233604007"),
        ("normal", "17621005"),
        ("malignant", "21594007"),
        ("Right Lung", "3341006"),
        ("Left Lung", "44029006"),
        ("vessel", "59820001"),
        ("CALC", "309587003"),
        ("SPIC", "129742005"),
        ("ARCH", "129792006"),
        ("died", "419099009"),
        ("went to ICU", "305351004"),
    ],
)
def test_the_labels_our_bundles_produce_get_snomed_codes(label: str, value: str) -> None:
    coded = code_for(label)
    assert (coded.code.scheme_designator, coded.code.value, coded.source) == ("SCT", value, "default")


def test_a_label_without_a_standard_code_is_local_and_a_bundle_map_wins() -> None:
    local = code_for("normal, benign")
    assert local.code.scheme_designator == LOCAL_SCHEME and local.code.meaning == "normal, benign" and local.is_local
    overrides = bundle_codes({"codes": {"Anterior": {"scheme": "RADLEX", "value": "RID6436", "meaning": "x"}}})
    mine = code_for("anterior", overrides)
    assert (mine.code.scheme_designator, mine.code.value, mine.source) == ("RADLEX", "RID6436", "bundle")
    assert code_for("anterior").is_local
    with pytest.raises(MedsightError, match="scheme 'ICD'"):
        bundle_codes({"codes": {"x": {"scheme": "ICD", "value": "1", "meaning": "m"}}})
    with pytest.raises(MedsightError, match="needs non-empty"):
        bundle_codes({"codes": {"x": {"scheme": "SCT", "value": ""}}})


def test_sr_codes_findings_and_declares_the_local_scheme(shared_data: Path, tmp_path: Path) -> None:
    ct = pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_test_files" / "CT_small.dcm")
    out = write_sr([Finding("pneumonia", 0.9), Finding("normal, benign", 0.1)], [ct], tmp_path / "sr.dcm")
    errors, _ = dciodvfy(out)
    assert errors == []
    back = read_sr(out)
    assert [(f.label, f.code[:2]) for f in back] == [
        ("pneumonia", ("233604007", "SCT")),
        ("normal, benign", ("normal-benign", LOCAL_SCHEME)),
    ]
    schemes = {item.CodingSchemeDesignator: item for item in pydicom.dcmread(out).CodingSchemeIdentificationSequence}
    assert {"SCT", "DCM", "UCUM", LOCAL_SCHEME} <= set(schemes)
    assert "no standard code" in schemes[LOCAL_SCHEME].CodingSchemeName


def test_bundle_schema_takes_optional_codes_and_a_bundle_without_them_still_loads(tmp_path: Path) -> None:
    meta = _meta()
    assert "codes" not in meta
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = load_bundle(_bundle(tmp_path / "old", meta))  # no 'codes': still a valid bundle
    assert bundle_codes(old.meta) == {}
    codes = {"pneumonia": {"scheme": "SCT", "value": "233604007", "meaning": "Pneumonia"}}
    folder = _bundle(tmp_path / "new", {**meta, "codes": codes})
    (folder / "model.onnx").write_bytes(b"onnx")
    new = load_bundle(folder)
    assert code_for("pneumonia", bundle_codes(new.meta)).source == "bundle"
    identity = AlgorithmIdentity.from_bundle(folder)
    assert identity.name == "medsight medmnist:pneumoniamnist classification" and identity.version == "0.1.0"
    assert identity.checksum == bundle_checksum(folder) == AlgorithmIdentity.of(new).checksum
    with pytest.raises(MedsightError, match="codes"):
        validate_meta({**meta, "codes": {"pneumonia": {"scheme": "SCT", "value": "233604007"}}}, "bundle.json")
    with pytest.raises(MedsightError, match="codes"):
        validate_meta({**meta, "codes": {"pneumonia": {**codes["pneumonia"], "scheme": "ICD10"}}}, "bundle.json")


def test_checksum_is_sha256_of_the_defining_files_and_changes_with_them(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text(json.dumps({"task": "x"}))
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    expected = hashlib.sha256(b"bundle.json\0" + (tmp_path / "bundle.json").read_bytes() + b"model.onnx\0onnx bytes")
    assert bundle_checksum(tmp_path) == expected.hexdigest()
    (tmp_path / "model.onnx.data").write_bytes(b"external weights")
    with_data = bundle_checksum(tmp_path)
    assert with_data != expected.hexdigest() and len(with_data) == 64
    (tmp_path / "model.onnx").write_bytes(b"other onnx bytes")
    assert bundle_checksum(tmp_path) != with_data
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(MedsightError, match=r"no model\.onnx"):
        bundle_checksum(tmp_path)
    identity = AlgorithmIdentity("m", "1", "ab" * 32)
    assert identity.parameters() == ["bundle-sha256=" + "ab" * 32]
