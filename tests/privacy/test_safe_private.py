"""Retain Safe Private keeps only rows of PS3.15 Table E.3.10-1, and only values that are what the row says."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from medsight.privacy.engine import Deidentifier
from medsight.privacy.safe_private import SafePrivate, load_table

KEY = bytes(range(32))
# SHA-256 of the table's rows as canonical JSON (keys sorted, no whitespace, UTF-8): the digest published
# with an independent machine-readable rendering of the same 2026d edition, so a transcription slip fails.
TABLE_DIGEST = "7acb26dbab0e3124c02d075cbf8c5510354a20ded9f89ee4765976a905d92f63"
KEPT_VRS = {"AT", "CS", "DS", "FD", "FL", "IS", "SL", "SS", "UL", "US"}


def test_shipped_table_is_the_standards_table_e_3_10_1() -> None:
    rows = load_table()
    assert len(rows) == 479
    canonical = json.dumps([asdict(r) for r in rows], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == TABLE_DIGEST
    assert all(r.group % 2 == 1 for r in rows)


def test_every_kept_private_attribute_is_a_row_of_the_table_with_a_safe_vr() -> None:
    table = {(r.private_creator.strip().upper(), r.group, r.element): r.vr for r in load_table()}
    kept = SafePrivate.load().rows()
    assert kept, "the policy keeps nothing"
    for creator, group, element, vr in kept:
        where = f"({group:04X},xx{element:02X}) {creator}"
        assert table.get((creator, group, element)) == vr, f"{where} is not in Table E.3.10-1"
        assert vr in KEPT_VRS
    # the table's numeric rows are all there, bar the two withheld timestamps
    numeric = {k for k, vr in table.items() if vr in KEPT_VRS}
    assert numeric - {(c, g, e) for c, g, e, _ in kept} == {
        ("SIEMENS ULTRASOUND SC2000", 0x0149, 0x02), ("SIEMENS ULTRASOUND SC2000", 0x0149, 0x03)}


def _object() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7777.7"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7777.8"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7777.9"
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = "Doe^Jane", "DOE-1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_only_table_rows_with_clean_values_survive_retain_safe_private() -> None:
    ds = _object()
    ds.add_new(0x00190010, "LO", "GEMS_ACQU_01")
    ds.add_new(0x001910BB, "DS", "0.5")            # on the old list, not in the table
    ds.add_new(0x00191023, "DS", "39.375")         # Table Speed: kept
    ds.add_new(0x0019109E, "LO", "DOE JANE T1")    # a text row of the table: removed
    ds.add_new(0x00290010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0029100C, "IS", "1000")           # right creator, wrong group: removed
    ds.add_new(0x00430010, "LO", "GEMS_PARM_01")
    ds.add_new(0x00431039, "IS", [1000, 0, 0, 0])  # B value: kept
    ds.add_new(0x00431027, "SH", "0.984:1")        # SH row: removed
    ds.add_new(0x70530010, "LO", "Philips PET Private Group")
    ds.add_new(0x70531000, "DS", "0.000123")       # SUV factor: kept
    ds.add_new(0x00990010, "LO", "NQHeader")
    ds.add_new(0x00991002, "UI", "1.2.826.0.1.3680043.9.7777.9")  # a UID row: removed
    ds.add_new(0x00991004, "SS", 0)                 # Return Code: kept
    Deidentifier(KEY, ["retain_safe_private"]).apply(ds)
    private = {int(t) for t in ds.keys() if t.group & 1}  # noqa: SIM118
    assert private == {0x00190010, 0x00191023, 0x00430010, 0x00431039, 0x70530010, 0x70531000,
                       0x00990010, 0x00991004}


def test_a_name_typed_into_a_numeric_safe_row_is_removed() -> None:
    ds = _object()
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019100C, "UN", b"Jane Doe")      # B Value (IS) carrying a name
    ds.add_new(0x0019100D, "CS", "doe jane")       # Diffusion Directionality (CS) in lower case: not a code
    ds.add_new(0x0019100E, "UN", b"\x00" * 12)     # Diffusion Gradient Direction (FD), 12 bytes: not whole FDs
    ds.add_new(0x00191027, "FD", [1.0] * 6)        # B Matrix: kept
    Deidentifier(KEY, ["retain_safe_private"]).apply(ds)
    private = {int(t) for t in ds.keys() if t.group & 1}  # noqa: SIM118
    assert private == {0x00190010, 0x00191027}
