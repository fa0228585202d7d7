"""Does a DICOM input's modality fit the model? A chest X-ray classifier given a CT slice still returns a confident
probability, so ``medsight predict`` refuses a DICOM input whose Modality (0008,0060) is not one of those the
bundle's training modality stands for, naming the file and both modalities (``--any-modality`` overrides it).

A manifest of DICOM images records the modality their Modality codes stand for (:func:`of_dicom`), unless its
sidecar declares one (``{"modality": "xray"}``). Only what can be known is checked: images without a DICOM header
(PNG, NIfTI, ...), DICOM objects whose Modality is empty or ``OT`` (other), and bundles whose modality has no DICOM
counterpart here (``unknown``, ``RGB``, a word of a user's manifest) pass. The service does not call this: its
routes state which modalities each bundle takes (``match.modality``), the operator's explicit choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError

#: The DICOM Modality codes (PS3.3 C.7.3.1.1.1 defined terms) each training modality stands for.
DICOM_MODALITIES: dict[str, frozenset[str]] = {
    "xray": frozenset({"CR", "DX", "RG"}),
    "x-ray": frozenset({"CR", "DX", "RG"}),
    "radiography": frozenset({"CR", "DX", "RG"}),
    "mammography": frozenset({"MG"}),
    "ultrasound": frozenset({"US"}),
    "us": frozenset({"US"}),
    "ct": frozenset({"CT"}),
    "mri": frozenset({"MR"}),
    "mr": frozenset({"MR"}),
    "oct": frozenset({"OCT", "OPT"}),
    "fundus": frozenset({"OP", "XC"}),
    "dermoscopy": frozenset({"XC"}),
    "pathology": frozenset({"SM", "GM"}),
    "microscopy": frozenset({"SM", "GM"}),
}
#: Modality values that say nothing about the acquisition, so nothing is checked.
UNDECIDED = frozenset({"", "OT"})
#: The training modality a DICOM Modality code stands for, recorded when a manifest's images are all DICOM (XC,
#: external-camera photography, is left out: it may be a fundus or a skin photograph).
WORDS: dict[str, str] = {
    "CR": "xray",
    "DX": "xray",
    "RG": "xray",
    "MG": "mammography",
    "US": "ultrasound",
    "CT": "ct",
    "MR": "mri",
    "OCT": "oct",
    "OPT": "oct",
    "OP": "fundus",
    "SM": "microscopy",
    "GM": "microscopy",
}


def trained_on(meta: dict[str, Any]) -> str:
    """The training modality a bundle's ``bundle.json`` records (``unknown`` when it records none)."""
    return str(meta["data"].get("modality", "unknown"))


def accepted(bundle_modality: str) -> frozenset[str] | None:
    """The DICOM modalities a bundle trained on ``bundle_modality`` takes; ``None`` when that cannot be told."""
    return DICOM_MODALITIES.get(bundle_modality.strip().lower())


def dicom_modality(path: Path) -> tuple[Path, str] | None:
    """``(file, Modality)`` of the image series a DICOM file or series folder is read as
    (:func:`medsight.io.dicom.image_series`, the choice of the reader itself), so that a DICOMDIR, a structured report
    or another object without an image beside it never speaks for the folder; ``None`` when the input holds no one
    image series (not DICOM, unreadable, several series): the reader that follows names that problem."""
    from medsight.io.dicom import image_series

    try:
        series = image_series(path)
    except MedsightError:
        return None
    return series.instances[0].path, series.modality.strip().upper()


def of_dicom(paths: Sequence[Path]) -> str | None:
    """The one training modality the DICOM Modality of every input stands for (:data:`WORDS`), or ``None`` when an
    input is not DICOM, has an undecided or unknown Modality, or they stand for different modalities."""
    words = set()
    for path in paths:
        found = dicom_modality(Path(path))
        if found is None or found[1] not in WORDS:
            return None
        words.add(WORDS[found[1]])
    return words.pop() if len(words) == 1 else None


def check(bundle_modality: str, inputs: Sequence[Path]) -> None:
    """Raise :class:`MedsightError` naming the first DICOM input whose Modality the bundle was not trained on."""
    codes = accepted(bundle_modality)
    if codes is None:
        return
    for path in inputs:
        found = dicom_modality(Path(path))
        if found is None or found[1] in UNDECIDED or found[1] in codes:
            continue
        file, code = found
        raise MedsightError(
            f"a DICOM {code} image, but this model was trained on {bundle_modality} ({', '.join(sorted(codes))}); "
            "give it images of that modality, or --any-modality to predict anyway",
            file,
        )
