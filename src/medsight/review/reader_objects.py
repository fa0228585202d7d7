"""The reader's assessment as DICOM a PACS keeps beside the AI's: an SR of the verdict and, for a mask, a SEG.

Why DICOM and not only the database row: the PACS is where the clinical record lives, and a later reader (or an
auditor) looking at the study must see that a radiologist checked the AI's result and what they decided, without
medsight. Both objects are built by highdicom (valid by construction, same patient and study as the sources).

The SR is a Comprehensive 3D SR holding a TID 1500 Measurement Report whose observer is the *person* (the reader,
by login name), verified by that reader. One measurement group (TID 1501) states the finding the reader settled on
(coded through :mod:`medsight.serving.codes`), the AI's finding and the decision as qualitative evaluations, and the
comment as a TEXT item (DCM 121106 Comment). Agreement and disagreement are coded with DICOM's own "Agreement with
prior findings" (DCM 122775) and "Disagreement with prior findings" (DCM 122776); an edit, for which no standard
code exists, with a ``99MEDSIGHT`` code declared in Coding Scheme Identification. Reader boxes become planar ROI
groups on their images. The AI's SR is referenced twice: as evidence of the document and in the Predecessor
Documents Sequence (PS3.3 C.17.2: an SR "whose content has been ... included in this document with or without
modification"), which is exactly what the reader did with it.

The SEG is a binary segmentation of the reader's mask over the source images it was drawn on, its segment
``MANUAL`` (drawn by a person), its series description naming the reader's edit.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

from medsight import __version__
from medsight.errors import MedsightError
from medsight.io.atomic import atomic_path
from medsight.serving import codes as label_codes
from medsight.serving.dicom_objects import (
    MANUFACTURER,
    character_set,
    names_stay_out_of_warnings,
    resolve_label,
    with_type2,
)

#: The reader's verdict (concept name) and the edit value: no standard codes exist, so medsight's local scheme.
VERDICT = Code("RVERDICT", label_codes.LOCAL_SCHEME, "Reader verdict on AI finding")
AI_FINDING = Code("AIFINDING", label_codes.LOCAL_SCHEME, "AI finding reviewed")
EDITED = Code("EDITED", label_codes.LOCAL_SCHEME, "AI finding edited by reader")
DECISION_CODES = {
    "agree": dicom_codes.DCM.AgreementWithPriorFindings,
    "disagree": dicom_codes.DCM.DisagreementWithPriorFindings,
    "edit": EDITED,
}
COMMENT = dicom_codes.DCM.Comment
READER_SR_SERIES = 9101
READER_SEG_SERIES = 9102


@dataclass(frozen=True)
class ReaderBox:
    """A box the reader drew on one source image, in DICOM 2D image coordinates (x = column, y = row); ``frame``
    (1-based) says which frame of a multi-frame image (a box without one would lie on every frame)."""

    sop_uid: str
    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    frame: int | None = None


def decode_mask(encoded: str, rows: int, columns: int) -> np.ndarray:
    """A base64 PNG (nonzero = foreground) as a ``rows x columns`` bool array; a MedsightError otherwise.

    "Nonzero" is the stored value: a palette PNG's index (a label map's palette may draw index 0 white, and its
    brightness would invert the mask), a grey or colour PNG's samples (any channel, where the alpha, if any, is not
    zero: a transparent pixel was not painted).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        data = base64.b64decode(encoded.split(",", 1)[-1] if encoded.startswith("data:") else encoded, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise MedsightError(f"a mask must be a PNG, not {image.format}")
            array = _foreground(image)
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise MedsightError("a mask is not a base64-encoded PNG") from None
    if array.shape != (rows, columns):
        raise MedsightError(f"a mask is {array.shape[1]}x{array.shape[0]} but its image is {columns}x{rows}")
    return array


def _foreground(image: Any) -> np.ndarray:
    """The pixels of a PNG whose stored value is nonzero (see :func:`decode_mask`)."""
    if image.mode in ("P", "PA"):
        return np.asarray(image.getchannel(0)) > 0  # the palette index, never its colour
    bands = image.getbands()
    if "A" in bands:
        alpha = np.asarray(image.getchannel("A")) > 0
        colour = [b for b in bands if b != "A"]
        return alpha & np.any(np.stack([np.asarray(image.getchannel(b)) > 0 for b in colour]), axis=0)
    if len(bands) > 1:
        return np.any(np.asarray(image) > 0, axis=-1)
    return np.asarray(image) > 0


def mask_png(mask: np.ndarray) -> bytes:
    """A bool mask as an 8-bit PNG (0 / 255), the file kept for training."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


#: Single-byte character sets whose Python codec is exactly the DICOM repertoire (ISO_IR 13 is not: pydicom
#: writes it as Shift JIS, whose kanji a reader of JIS X 0201 cannot decode).
_SINGLE_BYTE = frozenset(f"ISO_IR {n}" for n in (100, 101, 109, 110, 126, 127, 138, 144, 148, 166, 203))


def text_character_set(source: Dataset, texts: Sequence[str]) -> str | list[str] | None:
    """The character set of a reader's object: the source's (:func:`character_set`) when it holds the reader's own
    text too (comment, labels, login), else UTF-8 (``ISO_IR 192``), which holds the source's names as well.

    Why: highdicom writes the object in the set it is given, and pydicom replaced every character that set lacks
    with ``?``: a comment in another script than the patient's name (or any non-ASCII comment on a study in the
    default repertoire) reached the PACS as question marks."""
    from pydicom.charset import convert_encodings

    chosen = character_set(source)
    text = "".join(texts)
    if text.isascii() or chosen == "ISO_IR 192":
        return chosen
    if isinstance(chosen, str) and chosen in _SINGLE_BYTE:
        try:
            text.encode(convert_encodings([chosen])[0])
            return chosen
        except (UnicodeEncodeError, LookupError):
            pass
    return "ISO_IR 192"


def person_name(login: str) -> str:
    """A login name as a DICOM person name of one component (the trailing ``^`` says it is one on purpose)."""
    return login.replace("^", " ")[:63] + "^"


def _save(obj: Dataset, out_path: Path) -> Path:
    with atomic_path(out_path) as tmp:
        obj.save_as(tmp, enforce_file_format=True)
    return out_path


def _concept(label: str) -> hd.sr.CodedConcept:
    code = resolve_label(label).concept()
    return hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)


def _region(box: ReaderBox, source: Dataset) -> hd.sr.ImageRegion:
    columns, rows = float(source.Columns), float(source.Rows)
    x0, x1 = sorted((float(box.x0), float(box.x1)))
    y0, y1 = sorted((float(box.y0), float(box.y1)))
    if not (0.0 <= x0 <= x1 <= columns and 0.0 <= y0 <= y1 <= rows):
        raise MedsightError(
            f"a box ({box.x0}, {box.y0}, {box.x1}, {box.y1}) lies outside its {columns:g}x{rows:g} image"
        )
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames > 1 and box.frame is None:
        raise MedsightError(f"a box on a multi-frame image ({frames} frames) needs its frame (1-based)")
    if box.frame is not None and not 1 <= box.frame <= frames:
        raise MedsightError(f"a box is on frame {box.frame} of an image of {frames} frame(s)")
    data = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=data,
        source_image=hd.sr.SourceImageForRegion.from_source_image(
            source, referenced_frame_numbers=[box.frame] if frames > 1 and box.frame is not None else None
        ),
    )


@names_stay_out_of_warnings
def write_reader_sr(
    ai_sr: Dataset | None,
    sources: Sequence[Dataset],
    out_path: Path,
    *,
    reader: str,
    decision: str,
    ai_label: str,
    reader_label: str,
    comment: str = "",
    boxes: Sequence[ReaderBox] = (),
    finding_id: str = "",
) -> Path:
    """Write the reader's assessment of one AI finding (see the module docstring); returns ``out_path``.

    ``ai_sr`` is the AI's SR the finding came from (None when the model wrote none, e.g. a detector that found
    nothing: the reader's SR then references the images only)."""
    if decision not in DECISION_CODES:
        raise MedsightError(f"decision must be one of {', '.join(DECISION_CODES)}, not {decision!r}")
    if not sources:
        raise MedsightError("the reader's SR needs the source images the finding is about")
    sources = with_type2(sources)
    by_sop = {str(s.SOPInstanceUID): s for s in sources}
    reader_concept = _concept(reader_label or ai_label)
    evaluations = [
        hd.sr.QualitativeEvaluation(name=AI_FINDING, value=_concept(ai_label)),
        hd.sr.QualitativeEvaluation(name=VERDICT, value=DECISION_CODES[decision]),
    ]
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"reader verdict {finding_id}"[:64])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=reader_concept,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in sources],
        qualitative_evaluations=evaluations,
    )
    if comment:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(name=COMMENT, value=comment, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        )
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]
    groups = [group]
    for n, box in enumerate(boxes, start=1):
        if box.sop_uid not in by_sop:
            raise MedsightError(f"box {n} is on an image that is not one of the finding's images")
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"reader box {n}"),
                referenced_region=_region(box, by_sop[box.sop_uid]),
                finding_type=_concept(box.label or reader_label or ai_label),
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=VERDICT, value=EDITED)],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=person_name(reader), login_name=reader
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=dicom_codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*sources, *([ai_sr] if ai_sr is not None else [])],
            content=report,
            series_instance_uid=hd.UID(),
            series_number=READER_SR_SERIES,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_verified=True,
            verifying_observer_name=person_name(reader),
            verifying_organization="medsight review",
            previous_versions=[ai_sr] if ai_sr is not None else None,
            series_description=f"medsight reader verdict: {decision}"[:64],
            specific_character_set=text_character_set(
                sources[0], [reader, ai_label, reader_label, comment, finding_id, *(b.label for b in boxes)]
            ),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise MedsightError(f"cannot build the reader's SR: {exc}", out_path) from exc
    used = [
        Code(reader_concept.value, reader_concept.scheme_designator, reader_concept.meaning),
        VERDICT,
        DECISION_CODES[decision],
        dicom_codes.SCT.ImagingProcedure,
    ]
    sr.CodingSchemeIdentificationSequence = [
        _scheme_item(item) for item in label_codes.coding_scheme_identification(used)
    ]
    sr.SoftwareVersions = f"medsight {__version__}"
    return _save(sr, out_path)


def _scheme_item(values: Mapping[str, str]) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


@names_stay_out_of_warnings
def write_reader_seg(
    masks: Mapping[str, np.ndarray],
    sources: Sequence[Dataset],
    out_path: Path,
    *,
    reader: str,
    label: str,
) -> Path:
    """A binary SEG of the reader's mask: ``masks`` maps each source SOP Instance UID drawn on to its bool mask."""
    by_sop = {str(s.SOPInstanceUID): s for s in with_type2(sources)}
    unknown = [uid for uid in masks if uid not in by_sop]
    if unknown:
        raise MedsightError(f"{len(unknown)} mask(s) are on images that are not the finding's images")
    if not masks:
        raise MedsightError("a mask edit needs at least one image's mask")
    chosen = sorted(masks, key=lambda uid: (int(by_sop[uid].get("InstanceNumber", 0) or 0), uid))
    if any(int(by_sop[uid].get("NumberOfFrames", 1) or 1) > 1 for uid in chosen):
        raise MedsightError("masks on multi-frame images are not supported; draw on single-frame images")
    pixels = np.stack([np.asarray(masks[uid], dtype=bool) for uid in chosen]).astype(np.uint8)
    resolved = resolve_label(label)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label[:64] or "reader mask",
        segmented_property_category=resolved.category or dicom_codes.SCT.Tissue,
        segmented_property_type=resolved.concept(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=[by_sop[uid] for uid in chosen],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=READER_SEG_SERIES,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="medsight review",
            software_versions=f"medsight {__version__}",
            device_serial_number="0",
            series_description=f"medsight reader mask ({reader})"[:64],
            content_label="READER",
            content_creator_name=person_name(reader),
            specific_character_set=text_character_set(by_sop[chosen[0]], [reader, label]),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise MedsightError(f"cannot build the reader's SEG: {exc}", out_path) from exc
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        # General Image, type 2C without patient geometry (e.g. a CR): the source's, else present and empty
        seg.PatientOrientation = by_sop[chosen[0]].get("PatientOrientation") or None
    return _save(seg, out_path)
