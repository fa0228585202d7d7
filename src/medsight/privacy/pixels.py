"""Burned-in text: flag the files that may carry it, and blank known regions by rules kept as data.

Text written into the pixels escapes every header rule, so the report lists each file at risk; cleaning
only blanks regions a person has mapped for that device (``pixel_rules.json``), never guesses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from pydicom.dataset import Dataset

from medsight.io.dicom import peek

#: Modalities that often carry burned-in text whatever the header says.
RISKY_MODALITIES = {
    "US": "ultrasound",
    "ES": "endoscopy",
    "XC": "external camera",
    "OT": "other",
    "SM": "slide microscopy (labels)",
}
#: Projection radiography: burned-in markers and names are common unless the header says NO.
PROJECTION_MODALITIES = {"CR", "DX", "MG", "IO", "PX", "RF", "XA"}
SECONDARY_CAPTURE_ROOT = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class PixelRule:
    """One device's map of regions holding text."""

    name: str
    modality: str
    manufacturer: str
    model: str
    rows: int
    columns: int
    regions: tuple[tuple[int, int, int, int], ...]

    def matches(self, ds: Dataset) -> bool:
        """True when modality, device and image size all match."""
        return (
            str(ds.get("Modality", "")) == self.modality
            and int(ds.get("Rows", 0) or 0) == self.rows
            and int(ds.get("Columns", 0) or 0) == self.columns
            and re.fullmatch(self.manufacturer, str(ds.get("Manufacturer", "")).strip(), re.I) is not None
            and re.fullmatch(self.model, str(ds.get("ManufacturerModelName", "")).strip(), re.I) is not None
        )


@lru_cache(maxsize=1)
def load_rules() -> tuple[PixelRule, ...]:
    """The shipped rules (``pixel_rules.json``)."""
    text = resources.files("medsight.privacy").joinpath("pixel_rules.json").read_text(encoding="utf-8")
    return tuple(
        PixelRule(
            name=r["name"],
            modality=r["modality"],
            manufacturer=r["manufacturer"],
            model=r["model"],
            rows=int(r["rows"]),
            columns=int(r["columns"]),
            regions=tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in r["regions"]),
        )
        for r in json.loads(text)["rules"]
    )


def burned_in_reasons(ds: Dataset) -> list[str]:
    """Why this file may hold burned-in text or a recognisable face (empty list: no known reason)."""
    reasons = []
    burned = str(peek(ds, 0x00280301, "") or "").upper()  # Burned In Annotation
    modality = str(peek(ds, 0x00080060, "") or "")
    if burned == "YES":
        reasons.append("Burned In Annotation is YES")
    if modality in RISKY_MODALITIES and burned != "YES":
        reasons.append(f"{RISKY_MODALITIES[modality]} images often carry burned-in text")
    if str(peek(ds, 0x00080016, "")).startswith(SECONDARY_CAPTURE_ROOT) and burned != "NO":
        reasons.append("secondary capture (screen grab) may carry burned-in text")
    if modality in PROJECTION_MODALITIES and burned not in ("YES", "NO"):
        reasons.append(f"{modality} without Burned In Annotation = NO may carry burned-in markers or names")
    if has_faces(ds):
        reasons.append("Recognizable Visual Features is YES (not cleaned by medsight)")
    for group in range(0x6000, 0x6020, 2):
        if (group << 16 | 0x0010) in ds._dict and (group << 16 | 0x3000) not in ds._dict:
            reasons.append("an overlay is stored in unused bits of the pixel data (not removed)")
            break
    return reasons


def has_faces(ds: Dataset) -> bool:
    """True when the header says the image shows a recognisable face (never cleaned by a pixel rule)."""
    return str(peek(ds, 0x00280302, "") or "").upper() == "YES"  # Recognizable Visual Features


def find_rule(ds: Dataset) -> PixelRule | None:
    """The first rule that matches this file's device and image size."""
    return next((r for r in load_rules() if r.matches(ds)), None)


def clean(ds: Dataset, rule: PixelRule) -> int:
    """Blank the rule's regions in every frame (decompressing first); returns the pixels blanked per frame."""
    if "PixelData" not in ds:
        return 0
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    arr = ds.pixel_array.copy()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    view = arr if frames > 1 else arr[None, ...]
    blanked = 0
    for x0, y0, x1, y1 in rule.regions:
        y0, y1 = max(0, y0), min(rule.rows, y1)
        x0, x1 = max(0, x0), min(rule.columns, x1)
        view[:, y0:y1, x0:x1, ...] = 0
        blanked += max(0, y1 - y0) * max(0, x1 - x0)
    ds.PixelData = arr.tobytes()
    ds.BurnedInAnnotation = "NO"
    return blanked
