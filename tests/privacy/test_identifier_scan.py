"""No original name, ID, date, address or UID survives anywhere in the output bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from medsight.privacy.profile import Profile
from medsight.privacy.run import deidentify

KEY = bytes(range(32))
#: VRs whose values identify when the table does not keep them.
IDENTIFYING_VRS = {"PN", "DA", "DT", "LO", "SH", "ST", "LT", "UT", "UI", "AE", "UC", "UR"}


def identifiers(ds: Dataset, found: set[bytes], options: tuple[str, ...] = (),
                kept: set[str] | None = None) -> None:
    """Every identifying value the table removes or replaces, at any depth, as bytes (4 chars or more).

    Values an option keeps (K) or cleans in place (C) are left out: test_engine checks those.
    """
    profile = Profile.load()
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                identifiers(item, found, options, kept)
            continue
        rule = profile.match(int(elem.tag))
        if rule is None or elem.VR not in IDENTIFYING_VRS or elem.tag.group & 1:
            continue
        if rule.action(options) in ("K", "C"):
            if kept is not None and rule.action(options) == "K":
                kept.add(str(elem.value))
            continue
        values = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
        for v in values:
            text = str(v).strip()
            pieces = [text, *text.split("^")] if elem.VR == "PN" else [text]
            # short all-digit values (a serial "9999") also occur by chance in numbers and pixel data
            found.update(p.encode() for p in pieces
                         if len(set(p)) > 1 and (len(p) >= 6 or (len(p) >= 4 and not p.isdigit())))


def scan(inputs: list[Path], out: Path, options: tuple[str, ...] = ()) -> None:
    wanted: set[bytes] = set()
    # values the standard or an option keeps (the manufacturer, Ethnic Group under Retain Patient
    # Characteristics) may contain a removed one ("TOSHIBA" as station name): those are not leaks
    kept: set[str] = set()
    for f in inputs:
        ds = pydicom.dcmread(f, force=True)
        identifiers(ds, wanted, options, kept)
        kept.update(str(ds.get(k, "")) for k in ("Manufacturer", "ManufacturerModelName"))
    wanted = {w for w in wanted if not any(w.decode() in k for k in kept)}
    # the report is made of the table's attribute names ("Date of Last ..."): scan it for the rest
    names = " ".join(r.name for r in Profile.load().rules)
    report_wanted = {w for w in wanted if w.decode() not in names}
    assert len(wanted) > 5
    outputs = sorted(out.rglob("*.dcm"))
    assert len(outputs) == len(inputs)
    for o in [*outputs, out / "deid_report.json", out / "deid_report.html"]:
        data = o.read_bytes()
        terms = wanted if o.suffix == ".dcm" else report_wanted
        leaks = sorted(w.decode() for w in terms if w in data)
        assert not leaks, f"{o.name} still holds {leaks}"


@pytest.fixture
def inputs(shared_data: Path, tmp_path: Path) -> Path:
    """One file per brain MR series plus the sample CT, MR, CR, US, SEG, SR and RT objects."""
    folder = tmp_path / "in"
    folder.mkdir()
    for series in sorted((shared_data / "udacity_brain_mr_dicom" / "Study3").iterdir()):
        first = sorted(series.glob("*.dcm"))[0]
        shutil.copy(first, folder / f"{series.name[:5]}_{first.name}")
    samples = shared_data / "dicom_samples"
    for name in ("pydicom_test_files/CT_small.dcm", "pydicom_test_files/MR_small.dcm",
                 "pydicom_test_files/examples_overlay.dcm", "pydicom_test_files/liver_1frame.dcm",
                 "pydicom_test_files/reportsi.dcm", "pydicom_test_files/rtstruct.dcm",
                 "pydicom_test_files/rtplan.dcm", "pydicom_data/US1_J2KR.dcm", "pydicom_data/RG3_J2KR.dcm",
                 "pydicom_data/emri_small.dcm"):
        shutil.copy(samples / name, folder / Path(name).name)
    # the all-attributes test object, written as a file
    from test_engine import make_object

    obj = make_object()
    for tag in [t for t in obj.keys() if t.group in (0, 2)]:  # noqa: SIM118 (command, meta elements)
        del obj[tag]
    # the free text test_engine seeds into every sequence is not a table row: the Basic Profile keeps it
    # where a sequence is kept (K, U*), so it has no place in a scan of what the table removes
    obj.walk(lambda d, e: d.__delitem__(e.tag) if e.tag == 0x0040A160 else None)
    obj.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: holds no pixel data
    obj.save_as(folder / "all_attributes.dcm", enforce_file_format=True)
    return folder


def test_no_identifier_left_in_output_bytes(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = deidentify(inputs, out, key=KEY, audit_log=None, progress=False, accept_burned_in=True)
    assert result.ok, result.report.rejected
    scan(sorted(inputs.iterdir()), out)


def test_no_identifier_left_with_cleaning_options(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = ("clean_descriptors", "clean_structured_content", "clean_graphics", "retain_modified_dates",
               "retain_patient_characteristics")
    result = deidentify(inputs, out, key=KEY, options=options, audit_log=None, progress=False,
                        accept_burned_in=True)
    assert result.ok
    scan(sorted(inputs.iterdir()), out, options)
