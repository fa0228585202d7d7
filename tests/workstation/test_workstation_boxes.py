"""Boxes and frames in the review workstation, in a real browser against a real ``medsight serve`` and Orthanc (the
site and browser of test_workstation_browser.py, imported). The review API needs a ``frame`` (1-based) on each box
of a verdict edit on a multi-frame image and the reader's SR references it (docs/review_api.md): a reader who moves
the AI's box and adds one on frame N of a multi-frame image must get a verdict and an SR on frame N, and the boxes
drawn on frame N only; on a single-frame image the edit carries no frame, as before.

medsight's detectors are 2D and routing keeps multi-frame instances away from 2D models, so the service never makes a
box finding on a multi-frame image by itself, and the findings API gives boxes no frame. The box finding here is a
detection result folder written by hand where the worker writes its own (``<results>/<study>/<route>-<job>/``), on a
real multi-frame sample (an Enhanced MR of 10 frames, sent with storescu; its Modality set to OT so that the site's
MR route does not segment it as a volume).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
import test_workstation_browser as browser_tests
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from test_workstation_browser import READER, Site, _login, _open_by_keyboard, _orthanc_has, _save, _settled, _wrap

from serving.test_service_end_to_end import _storescu, _wait

# the browser test's fixtures, shared by name (pytest finds fixtures among a module's names): one site per module
browser, site = browser_tests.browser, browser_tests.site
bundle, tiny_bundle = browser_tests.bundle, browser_tests.tiny_bundle

MULTIFRAME = ("dicom_samples", "pydicom_data", "emri_small.dcm")
ROUTE = "lesions"
FRAME = 7  # the frame (1-based) of the 10 the reader edits on


def _detection_result(at: Site, study: str, sop: str, boxes: list[list[float]], job: int) -> str:
    """A detection result on image ``sop`` as the worker writes it (no AI SR: the reader's SR then references the
    images only); returns the finding id."""
    folder = at.service.folder / "data" / "results" / study / f"{ROUTE}-{job}"
    folder.mkdir(parents=True)
    entry = {
        "input": f"{sop}.dcm",
        "threshold": 0.5,
        "summary": f"{len(boxes)} lesion(s)",
        "findings": [{"label": "lesion", "score": 0.9, "box": b} for b in boxes],
    }
    (folder / "predictions.json").write_text(json.dumps({"task": "detection", "bundle": "", "predictions": [entry]}))
    return f"{folder.name}/0"


def _multiframe_study(at: Site, shared: Path) -> tuple[str, str]:
    """(study, SOP instance) of the 10-frame sample with new UIDs, received by the service."""
    ds = pydicom.dcmread(shared.joinpath(*MULTIFRAME))
    assert int(ds.NumberOfFrames) == 10
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "WORKLIST^MULTIFRAME", "WS-MF-0003", "OT"
    path = _save(ds, at.service.folder / "sent" / "mf" / "mf.dcm")
    sent = _storescu(at.service.ns, at.service.dicom_port, [path])
    assert sent.returncode == 0, sent.stderr
    study = str(ds.StudyInstanceUID)
    _wait(
        "the multi-frame study in the store",
        lambda: at.service.get(f"/api/studies/{study}/review", headers=at.service.auth()).status_code == 200,
    )
    return study, str(ds.SOPInstanceUID)


def _screen(page: Any, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel position (x = column, y = row; (0, 0) the top-left corner of the top-left
    pixel) on the image shown, from the viewport's own world <-> canvas transform."""
    at = page.evaluate(
        """([x, y]) => { const vp = window.__medsight.viewport;
            const { origin, direction, spacing } = vp.getImageData();
            const row = direction.slice(0, 3), col = direction.slice(3, 6);
            const w = [0, 1, 2].map((k) =>
              origin[k] + row[k] * spacing[0] * (x - 0.5) + col[k] * spacing[1] * (y - 0.5));
            const c = vp.worldToCanvas(w); const r = document.querySelector('#overlay').getBoundingClientRect();
            return [r.left + c[0], r.top + c[1]]; }""",
        [x, y],
    )
    return float(at[0]), float(at[1])


def _drag(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*_screen(page, *start))
    page.mouse.down()
    page.mouse.move(*_screen(page, *end), steps=8)
    page.mouse.up()


def _show(page: Any, index: int) -> None:
    """Show image ``index`` (0-based, in display order) with the keys, and wait for it to be drawn."""
    page.keyboard.press("Home")
    for _ in range(index):
        page.keyboard.press("ArrowDown")
    page.wait_for_function(f"document.querySelector('#viewport-wrap').dataset.index === '{index}'")


def _drawn(page: Any, expected: int) -> None:
    page.wait_for_function(f"document.querySelector('#overlay').dataset.drawn === '{expected}'", timeout=10_000)


def _regions(sr: pydicom.Dataset) -> list[tuple[str, list[int] | None, list[float]]]:
    """(referenced SOP, referenced frame numbers or None, graphic data) of every image region (SCOORD) in the SR."""
    found = []
    is_multi = lambda v: isinstance(v, MultiValue | list)  # noqa: E731

    def walk(items: Any) -> None:
        for item in items:
            if item.get("ValueType") == "SCOORD":
                image = next(c for c in item.ContentSequence if c.ValueType == "IMAGE")
                ref = image.ReferencedSOPSequence[0]
                numbers = ref.get("ReferencedFrameNumber")
                frames = None if numbers is None else [int(f) for f in (numbers if is_multi(numbers) else [numbers])]
                found.append((str(ref.ReferencedSOPInstanceUID), frames, [float(v) for v in item.GraphicData]))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def _verdicts(at: Site, study: str, finding: str) -> list[dict[str, Any]]:
    review = at.service.get(f"/api/studies/{study}/review", headers=at.service.auth()).json()
    return next(f for f in review["findings"] if f["finding_id"] == finding)["verdicts"]


def _submit(page: Any, finding: Any) -> tuple[dict[str, Any], str]:
    """Submit the edit: (the JSON the page sent, the status line)."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/verdicts")) as sent:
        finding.locator("button.submit-edit").click()
    return sent.value.post_data_json, _settled(finding)


def _box(values: dict[str, Any]) -> list[float]:
    return [values[k] for k in ("x0", "y0", "x1", "y1")]


def test_a_box_moved_and_a_box_added_on_frame_n_of_a_multi_frame_image_are_on_frame_n(
    browser: Any,
    site: Site,
    shared_data: Path,
) -> None:
    study, sop = _multiframe_study(site, shared_data)
    fid = _detection_result(site, study, sop, [[10.0, 12.0, 30.0, 34.0]], job=900001)
    (ai,) = site.service.get(f"/api/studies/{study}/review", headers=site.service.auth()).json()["findings"]
    # the findings API gives the AI's boxes no frame (the detector's predictions.json has none either)
    assert ai["finding_id"] == fid and ai["overlay"]["boxes"][0].get("frame") is None

    page = _login(browser, site, READER)
    _open_by_keyboard(page, study)
    assert int(_wrap(page, "count")) == 10  # one image per frame
    finding = page.locator(f".finding[data-finding='{fid}']")
    finding.locator("h3").click()  # opens the finding (its time starts)
    finding.locator("button.edit").click()
    # the AI's box names no frame: it lies on every frame until the reader places it
    _show(page, FRAME - 1)
    _drawn(page, 1)
    finding.locator("button[data-tool='box-move']").click()
    page.wait_for_selector("#overlay.editing")
    _drag(page, (20, 23), (28, 27))  # moved by (+8, +4) on frame FRAME
    finding.locator("button[data-tool='box-add']").click()
    _drag(page, (40, 40), (56, 58))
    _drawn(page, 2)
    # both boxes are on frame FRAME only: none on the next frame or the first, both again on FRAME
    page.keyboard.press("ArrowDown")
    page.wait_for_function(f"document.querySelector('#viewport-wrap').dataset.index === '{FRAME}'")
    _drawn(page, 0)
    _show(page, 0)
    _drawn(page, 0)
    _show(page, FRAME - 1)
    _drawn(page, 2)

    body, status = _submit(page, finding)
    assert status.startswith("Saved: edit"), status
    sent = body["edit"]["boxes"]
    assert [b["frame"] for b in sent] == [FRAME, FRAME] and {b["sop_uid"] for b in sent} == {sop}
    assert _box(sent[0]) == pytest.approx([18, 16, 38, 38], abs=0.5)
    assert _box(sent[1]) == pytest.approx([40, 40, 56, 58], abs=0.5)

    # the verdict stored: both boxes on frame FRAME
    (verdict,) = _verdicts(site, study, fid)
    assert verdict["decision"] == "edit" and verdict["reader"] == READER
    stored = verdict["edit"]["boxes"]
    assert [(b["sop_uid"], b["frame"]) for b in stored] == [(sop, FRAME), (sop, FRAME)]
    assert _box(stored[1]) == pytest.approx([40, 40, 56, 58], abs=0.5)

    # the reader's SR, as the PACS got it: each box's region references frame FRAME of the image
    sr_uid = finding.get_attribute("data-reader-sr")
    assert sr_uid == verdict["reader_sr_sop_uid"]
    _wait("the reader's SR in Orthanc", lambda: _orthanc_has(site, sr_uid), timeout=120)
    sr = pydicom.dcmread(io.BytesIO(site.pacs.file(sr_uid)))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study
    regions = _regions(sr)
    assert [(s, f) for s, f, _ in regions] == [(sop, [FRAME]), (sop, [FRAME])]
    x0, y0 = regions[1][2][:2]
    assert (x0, y0) == pytest.approx((40, 40), abs=0.5)
    page.close()


def test_a_box_added_on_a_single_frame_image_carries_no_frame(browser: Any, site: Site) -> None:
    study = site.studies["ct"]
    ct = pydicom.dcmread(site.service.folder / "sent" / "ct" / "050.dcm", stop_before_pixels=True)
    sop = str(ct.SOPInstanceUID)
    fid = _detection_result(site, study, sop, [[20.0, 20.0, 50.0, 50.0]], job=900002)

    page = _login(browser, site, READER)
    _open_by_keyboard(page, study)
    finding = page.locator(f".finding[data-finding='{fid}']")
    finding.locator("h3").click()  # opens the finding (its time starts)
    finding.locator(".show-overlay").check()  # jumps to the slice the box is on (index 50 of 100)
    page.wait_for_function("document.querySelector('#viewport-wrap').dataset.index === '50'")
    _drawn(page, 1)
    finding.locator("button.edit").click()
    finding.locator("button[data-tool='box-add']").click()
    page.wait_for_selector("#overlay.editing")
    _drag(page, (70, 70), (100, 90))
    _drawn(page, 2)
    page.keyboard.press("ArrowDown")  # another slice (another image): no box there
    page.wait_for_function("document.querySelector('#viewport-wrap').dataset.index === '51'")
    _drawn(page, 0)
    page.keyboard.press("ArrowUp")
    page.wait_for_function("document.querySelector('#viewport-wrap').dataset.index === '50'")
    _drawn(page, 2)

    body, status = _submit(page, finding)
    assert status.startswith("Saved: edit"), status
    assert [sorted(b) for b in body["edit"]["boxes"]] == [["label", "sop_uid", "x0", "x1", "y0", "y1"]] * 2
    (verdict,) = _verdicts(site, study, fid)
    assert [b.get("frame") for b in verdict["edit"]["boxes"]] == [None, None]
    sr_uid = verdict["reader_sr_sop_uid"]
    _wait("the reader's SR in Orthanc", lambda: _orthanc_has(site, sr_uid), timeout=120)
    regions = _regions(pydicom.dcmread(io.BytesIO(site.pacs.file(sr_uid))))
    assert [(s, f) for s, f, _ in regions] == [(sop, None), (sop, None)]
    page.close()
