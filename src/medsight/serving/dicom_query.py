"""C-FIND over the study store (Study Root and Patient Root, levels STUDY, SERIES, IMAGE): what a PACS or
``findscu`` asks to see which studies and results the service holds.

Matching is the store's (the same rows QIDO-RS answers from): single values, ``*``/``?`` wildcards on the text
keys, date ranges, lists of UIDs. Only the keys the identifier asks for are returned, plus the level's unique key,
as PS3.4 C.4.1 requires. Every query is audited (the caller's AE title, the level, the names of the keys matched,
never their values).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medsight.errors import MedsightError

if TYPE_CHECKING:
    from medsight.serving.audit import AuditLog
    from medsight.serving.store import InstanceRecord, SeriesRecord, StudyRecord, StudyStore

#: Identifier keyword → the store's study filter.
STUDY_FILTERS = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "AccessionNumber": "accession_number",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician",
    "StudyDate": "study_date",
    "ModalitiesInStudy": "modalities_in_study",
}
MAX_MATCHES = 1000


def _value(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword)
    if v is None:
        return ""
    if isinstance(v, list | tuple | MultiValue):  # a PersonName iterates over its characters: it is one value
        return "\\".join(str(x) for x in v)
    return str(v)


def _study_attrs(study: StudyRecord) -> dict[str, object]:
    return {
        "StudyInstanceUID": study.study_uid,
        "PatientID": study.patient_id or "",
        "PatientName": study.patient_name or "",
        "PatientBirthDate": study.patient_birth_date or "",
        "PatientSex": study.patient_sex or "",
        "AccessionNumber": study.accession_number or "",
        "StudyDate": study.study_date or "",
        "StudyTime": study.study_time or "",
        "StudyDescription": study.study_description or "",
        "ReferringPhysicianName": study.referring_physician or "",
        "ModalitiesInStudy": list(study.modalities),
        "NumberOfStudyRelatedSeries": study.n_series,
        "NumberOfStudyRelatedInstances": study.n_instances,
    }


def _series_attrs(series: SeriesRecord) -> dict[str, object]:
    return {
        "SeriesInstanceUID": series.series_uid,
        "Modality": series.modality or "",
        "SeriesNumber": "" if series.series_number is None else series.series_number,
        "SeriesDescription": series.series_description or "",
        "BodyPartExamined": series.body_part or "",
        "NumberOfSeriesRelatedInstances": series.n_instances,
    }


def _instance_attrs(instance: InstanceRecord) -> dict[str, object]:
    return {
        "SOPInstanceUID": instance.sop_uid,
        "SOPClassUID": instance.sop_class_uid,
        "InstanceNumber": "" if instance.instance_number is None else instance.instance_number,
    }


def _matches_text(pattern: str, value: str) -> bool:
    if not pattern or pattern == "*":
        return True
    import fnmatch

    return fnmatch.fnmatchcase(value.upper(), pattern.upper())


def _answer(identifier: Dataset, level: str, attrs: dict[str, object]) -> Dataset:
    out = Dataset()
    out.QueryRetrieveLevel = level
    for element in identifier:
        keyword = element.keyword
        if keyword and keyword in attrs:
            setattr(out, keyword, attrs[keyword])
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if key in attrs:
            setattr(out, key, attrs[key])
    return out


class StoreFinder:
    """``finder(identifier, calling_ae)`` for :class:`medsight.serving.listener.DicomListener`."""

    def __init__(self, store: StudyStore, audit: AuditLog | None = None) -> None:
        self.store = store
        self.audit = audit

    def __call__(self, identifier: Dataset, calling_ae: str) -> Iterator[Dataset]:
        level = str(identifier.get("QueryRetrieveLevel", "")).upper()
        if level not in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
            raise MedsightError(f"QueryRetrieveLevel {level or '(none)'} is not PATIENT/STUDY/SERIES/IMAGE")
        filters: dict[str, Any] = {}
        for keyword, name in STUDY_FILTERS.items():
            value = _value(identifier, keyword)
            if value and value != "*":
                filters[name] = value
        study_uids = _value(identifier, "StudyInstanceUID")
        if study_uids:
            filters["study_uids"] = study_uids.split("\\")
        if self.audit is not None:
            self.audit.append(
                actor=f"dicom:{calling_ae}",
                action="C-FIND",
                target={"level": level, "keys": sorted(e.keyword for e in identifier if e.keyword and e.value)},
            )
        studies = self.store.studies(limit=MAX_MATCHES, **filters)
        if level in ("PATIENT", "STUDY"):
            seen: set[str] = set()
            for study in studies:
                attrs = _study_attrs(study)
                if level == "PATIENT":
                    if study.patient_id in seen:
                        continue
                    seen.add(study.patient_id or "")
                    attrs = {k: v for k, v in attrs.items() if k.startswith("Patient")}
                yield _answer(identifier, level, attrs)
            return
        series_uid = _value(identifier, "SeriesInstanceUID")
        modality = _value(identifier, "Modality")
        for study in studies:
            for series in self.store.series(study.study_uid):
                if series_uid and series.series_uid not in series_uid.split("\\"):
                    continue
                if not _matches_text(modality, series.modality or ""):
                    continue
                if level == "SERIES":
                    yield _answer(identifier, level, {**_study_attrs(study), **_series_attrs(series)})
                    continue
                sop_uid = _value(identifier, "SOPInstanceUID")
                for instance in self.store.instances(study.study_uid, series.series_uid):
                    if sop_uid and instance.sop_uid not in sop_uid.split("\\"):
                        continue
                    yield _answer(
                        identifier,
                        level,
                        {**_study_attrs(study), **_series_attrs(series), **_instance_attrs(instance)},
                    )
