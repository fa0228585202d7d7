"""The 3D segmentation path on a many-class CT: TotalSegmentator's example (41 of its 117 classes present, a model's
labels, 3 mm) trains for two iterations on a tiny patch, predicts on the CT as NIfTI and as a DICOM series, keeps
shapes and label names, and writes a SEG with one segment per class (the 41 present, renumbered 1..41)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from ct_plans import TINY_PLAN

from medsight import runtime
from medsight.io.nifti_to_dicom import write_ct_series
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions
from medsight.tasks.segmentation.predict import SegmentationResult

PLAN = {**TINY_PLAN, "target_spacing": [3.0, 3.0, 3.0]}  # the example CT is at 3 mm


@pytest.fixture(scope="module")
def example(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An MSD folder of the example (its two halves along x as two cases: one trains, one validates) and the
    class names of the labels present."""
    root = shared_data / "totalsegmentator_example"
    ct: Any = nib.load(str(root / "example_ct_sm.nii.gz"))
    seg = np.asarray(nib.load(str(root / "example_seg.nii.gz")).dataobj)  # type: ignore[attr-defined]
    names = json.loads((root / "labels_total.json").read_text())
    present = [int(v) for v in np.unique(seg) if v]
    lookup = np.zeros(int(seg.max()) + 1, np.uint8)
    lookup[present] = np.arange(1, len(present) + 1)
    labels = lookup[seg]
    folder = tmp_path_factory.mktemp("totalseg") / "msd"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    data = np.asarray(ct.dataobj).astype(np.int16)
    half = data.shape[0] // 2
    for name, sl in (("a", slice(0, half)), ("b", slice(half, None))):
        affine = ct.affine.copy()
        affine[:3, 3] += affine[:3, 0] * (sl.start or 0)
        nib.save(nib.Nifti1Image(data[sl], affine), str(folder / "imagesTr" / f"ts-{name}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(labels[sl], affine), str(folder / "labelsTr" / f"ts-{name}.nii.gz"))
    classes = [names[str(v)] for v in present]
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"0": "background", **{str(k): n for k, n in enumerate(classes, start=1)}},
            }
        )
    )
    (folder / "medsight_splits.json").write_text(json.dumps({"folds": [["ts-b"], ["ts-a"]], "test": []}))
    return {"folder": folder, "classes": classes, "ct": root / "example_ct_sm.nii.gz", "shape": data.shape}


@pytest.mark.slow
def test_many_class_ct_trains_predicts_and_writes_one_segment_per_class(
    example: dict[str, Any], tmp_path: Path
) -> None:
    classes = example["classes"]
    assert len(classes) == 41 and "liver" in classes and "spleen" in classes
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    bundle = tmp_path / "bundle"
    meta = segmentation.TASK.train(str(example["folder"]), bundle, SegmentationOptions(epochs=1, plan=plan, fold=0))
    assert meta["label_names"] == ["background", *classes]
    assert meta["network"]["kwargs"]["out_channels"] == 42
    assert meta["plan"]["normalisation"]["scheme"] == "ct"  # planned from CT: clip + foreground z-score

    series = tmp_path / "series"
    write_ct_series(example["ct"], series)
    model = runtime.load(bundle)
    results = model.predict([example["ct"], series])
    out = tmp_path / "out"
    runtime.write_predictions(model, results, out)
    for r in results:
        assert isinstance(r, SegmentationResult)
        assert r.mask.shape == example["shape"] and r.mask.dtype == np.uint8
        assert int(r.mask.max()) <= 41 and r.labels == ["background", *classes]
        assert set(r.amounts) == set(classes)
    dicom = results[1]
    seg = pydicom.dcmread(out / dicom.dicom["seg"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == classes
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == list(range(1, 42))
    first = pydicom.dcmread(sorted(series.glob("*.dcm"))[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert (out / dicom.dicom["sr"]).is_file()
    nifti: Any = nib.load(str(out / results[0].files["mask"]))
    assert np.allclose(nifti.affine, nib.load(str(example["ct"])).affine)  # type: ignore[attr-defined]
