"""Standard codes for the labels medsight's bundles produce, so viewers and registries can read the findings.

A PACS, a registry or a FHIR server understands "SNOMED CT 17621005 Normal"; it does not understand the private
``99MEDSIGHT`` scheme. Each label is looked up in this order: the bundle's own map (``codes`` in ``bundle.json``:
label -> {scheme, value, meaning}), then :data:`DEFAULT_CODES` (SNOMED CT where a code exists, RadLex otherwise),
and only then the private scheme, which the SR declares as local (see :func:`is_private`).

Sources: codes marked ``PS3.16`` are taken at import time from pydicom's copy of the DICOM PS3.16 code tables
(``pydicom.sr.codedict.codes``, generated from the standard's CID tables), so a code that is not in the standard
fails here rather than reaching a PACS. The few SNOMED CT concepts the DICOM tables do not list (pneumonia, the left
and right lung, death, ICU admission) are given with their SNOMED CT International concept id and fully specified
name in a comment; nothing is invented.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

from medsight.errors import MedsightError

#: Coding scheme for model-specific labels that have no standard code (DICOM PS3.16 8.2: "99" prefix = local).
LOCAL_SCHEME = "99MEDSIGHT"
#: Schemes a bundle's map may name: SNOMED CT, RadLex, DICOM, LOINC, and the local one.
KNOWN_SCHEMES = ("SCT", "RADLEX", "DCM", "LN", LOCAL_SCHEME)


def _sct(value: str, meaning: str) -> Code:
    """A SNOMED CT concept the DICOM tables do not list; its source is the comment beside each use."""
    return Code(value, "SCT", meaning)


# --- SNOMED CT categories for SEG (PS3.16 CID 7150 "Segmentation Property Categories") ---
ANATOMY = dicom_codes.SCT.AnatomicalStructure  # 91723000, PS3.16 CID 7150
ABNORMAL = dicom_codes.SCT.MorphologicallyAbnormalStructure  # 49755003, PS3.16 CID 7150
FINDING = dicom_codes.SCT.Finding  # 404684003, PS3.16 CID 3769

#: Label (normalised: lower case, single spaces) -> (code, SEG category). Comments give each code's source.
DEFAULT_CODES: dict[str, tuple[Code, Code]] = {
    # MedMNIST PneumoniaMNIST: "normal" / "pneumonia"
    "normal": (dicom_codes.SCT.Normal, FINDING),  # 17621005, PS3.16 CID 222 "Normal-Abnormal"
    "pneumonia": (_sct("233604007", "Pneumonia"), FINDING),  # SNOMED CT 233604007 |Pneumonia (disorder)|
    # MedMNIST BreastMNIST / NoduleMNIST3D: "malignant" ("normal, benign" has no single code: local, below)
    "malignant": (dicom_codes.SCT.Malignant, FINDING),  # 21594007, PS3.16 CID 6063
    "benign": (dicom_codes.SCT.Benign, FINDING),  # 30807003, PS3.16 CID 6063
    # MSD Hippocampus: "Anterior" / "Posterior" (head and body/tail) - the structure is the hippocampus
    # COVID-19 chest X-ray lung boxes: "Right Lung" / "Left Lung"
    "left lung": (_sct("44029006", "Left lung"), ANATOMY),  # SNOMED CT 44029006 |Left lung structure (body structure)|
    "right lung": (_sct("3341006", "Right lung"), ANATOMY),  # SNOMED CT 3341006 |Right lung structure (body structure)|
    "lung": (dicom_codes.SCT.Lung, ANATOMY),  # 39607008, PS3.16 CID 7151
    # DRIVE retinal vessels
    "vessel": (dicom_codes.SCT.BloodVessel, ANATOMY),  # 59820001, PS3.16 CID 7166
    "retinal vessel": (dicom_codes.SCT.BloodVessel, ANATOMY),  # 59820001, PS3.16 CID 7166
    # mini-MIAS abnormality classes (Info.txt): calcification, circumscribed / spiculated / ill-defined masses,
    # architectural distortion, asymmetry, normal
    "calc": (dicom_codes.SCT.CalcificationOfBreast, ABNORMAL),  # 309587003, PS3.16 CID 6054
    "circ": (dicom_codes.SCT.CircumscribedLesion, ABNORMAL),  # 129738007, PS3.16 CID 6006
    "spic": (dicom_codes.SCT.SpiculatedLesion, ABNORMAL),  # 129742005, PS3.16 CID 6006
    "misc": (dicom_codes.SCT.MammographicBreastMass, ABNORMAL),  # 129788004, PS3.16 CID 6054 (ill-defined mass)
    "arch": (dicom_codes.SCT.ArchitecturalDistortionOfBreast, ABNORMAL),  # 129792006, PS3.16 CID 6054
    "asym": (dicom_codes.SCT.AsymmetricBreastTissue, ABNORMAL),  # 129790003, PS3.16 CID 6054
    "norm": (dicom_codes.SCT.Normal, FINDING),  # 17621005, PS3.16 CID 222
    "lesion": (dicom_codes.SCT.Lesion, ABNORMAL),  # 52988006, PS3.16 CID 7151
    "mass": (dicom_codes.SCT.Mass, ABNORMAL),  # 4147007, PS3.16 CID 7151
    "nodule": (dicom_codes.SCT.Nodule, ABNORMAL),  # 27925004, PS3.16 (pydicom codedict)
    # COVID-19 outcome bundles: "died" (survival = N) and "went to ICU"
    "died": (dicom_codes.SCT.Dead, FINDING),  # 419099009 |Dead (finding)|, PS3.16 (pydicom codedict)
    "death": (_sct("419620001", "Death"), FINDING),  # SNOMED CT 419620001 |Death (event)|
    "survival": (dicom_codes.SCT.Dead, FINDING),  # the survival target's positive class is "died" (clinical.py)
    "went to icu": (  # SNOMED CT 305351004 |Admission to intensive care unit (procedure)|
        _sct("305351004", "Admission to intensive care unit"),
        FINDING,
    ),
    "icu": (_sct("305351004", "Admission to intensive care unit"), FINDING),  # as above
    # Hippocampus parts: the structure is SNOMED CT 5366008 Hippocampus (PS3.16 CID 7140), but neither
    # "anterior hippocampus" nor "posterior hippocampus" has a code in the DICOM tables; they stay local
    # (LOCAL_SCHEME) and the SR declares that scheme as medsight's own.
}


@dataclass(frozen=True)
class CodedLabel:
    """A label with its code, its SEG category and where the code came from (bundle, standard or local)."""

    name: str
    code: Code
    category: Code
    source: str  # "bundle" | "default" | "local"

    @property
    def is_local(self) -> bool:
        return is_private(self.code)


def normalise(label: str) -> str:
    """Lower case with single spaces, so "Right_Lung", "right-lung" and "Right Lung" match one entry."""
    return re.sub(r"[\s_\-]+", " ", str(label)).strip().lower()


def is_private(code: Code) -> bool:
    return str(code.scheme_designator) == LOCAL_SCHEME


def local_code(label: str) -> Code:
    """The last resort: the label's own name in the local scheme (value: a safe short form of the name)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", label.strip()).strip("-")[:16] or "label"
    return Code(value, LOCAL_SCHEME, label[:64] or "label")


def bundle_codes(meta: Mapping[str, Any] | None) -> dict[str, Code]:
    """The ``codes`` map of a bundle's ``bundle.json`` (label -> {scheme, value, meaning}), checked."""
    raw = (meta or {}).get("codes") or {}
    if not isinstance(raw, Mapping):
        raise MedsightError("bundle.json 'codes' must map each label to {scheme, value, meaning}")
    out: dict[str, Code] = {}
    for label, entry in raw.items():
        if not isinstance(entry, Mapping) or not all(
            isinstance(entry.get(k), str) and entry[k] for k in ("scheme", "value", "meaning")
        ):
            raise MedsightError(f"bundle.json codes[{label!r}] needs non-empty scheme, value and meaning")
        if entry["scheme"] not in KNOWN_SCHEMES:
            raise MedsightError(
                f"bundle.json codes[{label!r}]: scheme {entry['scheme']!r} is not one of {', '.join(KNOWN_SCHEMES)}"
            )
        out[normalise(label)] = Code(entry["value"], entry["scheme"], entry["meaning"])
    return out


def code_for(label: str, overrides: Mapping[str, Code] | None = None) -> CodedLabel:
    """The code for ``label``: the bundle's map first, then the standard defaults, then the local scheme."""
    key = normalise(label)
    if overrides and key in overrides:
        code = overrides[key]
        default = DEFAULT_CODES.get(key)
        return CodedLabel(label, code, default[1] if default else FINDING, "bundle")
    if key in DEFAULT_CODES:
        code, category = DEFAULT_CODES[key]
        return CodedLabel(label, code, category, "default")
    return CodedLabel(label, local_code(label), FINDING, "local")


def coding_scheme_identification(used: list[Code]) -> list[dict[str, str]]:
    """Coding Scheme Identification items (SOP Common, PS3.3 C.12.1) for the schemes a document uses.

    The local scheme is described as medsight's own so that a reader knows it is not a standard terminology."""
    names = {
        "SCT": ("SNOMED CT", "IHTSDO"),
        "DCM": ("DICOM Controlled Terminology", "NEMA"),
        "RADLEX": ("RadLex", "RSNA"),
        "LN": ("LOINC", "Regenstrief Institute"),
        "UCUM": ("Unified Code for Units of Measure", "Regenstrief Institute"),
        LOCAL_SCHEME: ("medsight local labels: no standard code exists for these model labels", "medsight"),
    }
    out = []
    for scheme in dict.fromkeys(str(c.scheme_designator) for c in used):
        name, org = names.get(scheme, (scheme, ""))
        item = {"CodingSchemeDesignator": scheme, "CodingSchemeName": name}
        if org:
            item["CodingSchemeResponsibleOrganization"] = org
        out.append(item)
    return out
