"""Archive mode meets what PACS and CD exports carry beside the images: READMEs, empty files, a DICOMDIR, an SR.
These are skipped with their reason (once they counted as failed inputs and the run exited 1), and each input's
results are named by its key, never its file name (a file name may hold a patient's)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsight.cli import main
from needs import tool

NAME = "Zzyzx_Quintella"


def _archive(shared_data: Path, root: Path) -> Path:
    from PIL import Image

    archive = root / "archive"
    archive.mkdir()
    Image.fromarray(np.full((24, 24), 90, np.uint8)).save(archive / f"{NAME}.png")
    ds = pydicom.dcmread(shared_data / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm")
    pixels = ds.pixel_array[::8, ::8][:200, :200].astype(np.uint16)
    ds.PixelData, ds.Rows, ds.Columns = pixels.tobytes(), *pixels.shape
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(archive / "IM000001", enforce_file_format=True)
    subprocess.run(
        [tool("dcmmkdir", "dcmtk"), "--general-purpose", "IM000001"], cwd=archive, check=True, capture_output=True
    )
    shutil.copy(shared_data / "dicom_samples" / "pydicom_test_files" / "reportsi.dcm", archive / "SR000001")
    (archive / "README.txt").write_text("export notes")
    (archive / "empty").write_bytes(b"")
    (archive / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return archive


def test_strays_are_skipped_a_damaged_image_fails_and_names_stay_out(
    tiny_bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    archive = _archive(shared_data, tmp_path)
    out = tmp_path / "out"
    argv = ["predict", str(tiny_bundle), str(archive), "--out", str(out), "--workers", "1", "--any-modality"]
    assert main(argv) == 1  # the damaged PNG is a failure
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"written": 2, "skipped": 4, "failed": 1}
    reasons = sorted(f["reason"] for f in report["files"] if f["status"] == "skipped")
    assert reasons == [
        "a DICOM object without an image (Modality SR)",
        "a DICOMDIR (an index of the media's files, not an image)",
        "an empty file",
        "not an image file (neither DICOM nor an image format medsight reads)",
    ]
    written = [f for f in report["files"] if f["status"] == "written"]
    for record in written:
        folder = out / record["output"]
        entry = json.loads((folder / "predictions.json").read_text())["predictions"][0]
        assert entry["input"] == record["key"]
        assert all(record["key"] in p.name for p in folder.iterdir() if p.name != "predictions.json")
    everything = [str(p.relative_to(out)) for p in out.rglob("*")]
    assert not [p for p in everything if NAME in p or "IM000001" in p], everything
    assert NAME not in (out / "report.json").read_text()
    # without the damaged image the run is a success
    (archive / "broken.png").unlink()
    assert main([*argv[:4], str(tmp_path / "out2"), *argv[5:]]) == 0
