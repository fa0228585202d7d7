"""LIDC-IDRI chest CT with the four readers' nodule outlines, read in place (``$MEDSIGHT_DATA/lidc_idri_ct``).

The set (its SOURCE.md) holds two patients as NIfTI cut from the original DICOM series: ``ct.nii.gz`` (int16 HU),
``nodule_reader_count.nii.gz`` (how many of the 4 readers outlined each voxel as a nodule of 3 mm or more),
``nodule_instances.nii.gz`` (which physical nodule, numbered as in ``nodules.csv``), ``cases.json`` (UIDs, scanner,
crop) and an ``MD5SUMS`` that :func:`locate` checks. Why a module of its own: the reference standard is LIDC's
consensus rule, not a mask file: a nodule counts when at least 2 of the 4 readers outlined it (the "50 %" rule),
and the consensus voxels of a nodule are those at least 2 readers share. :func:`consensus_nodules` applies it
(1 nodule in 0001 and 3 in 0003; 0003's nodule 4 was outlined by one reader), with each nodule's centre (voxel and
LPS mm) and its diameter (the sphere of the consensus volume).

LIDC-IDRI comes from TCIA as DICOM; medsight does not download and convert it. Put the prepared folder under
``$MEDSIGHT_DATA`` (see docs/ct.md).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.config import data_root
from medsight.data.checksums import md5sum
from medsight.errors import MedsightError
from medsight.io.geometry import LPS_TO_RAS, nifti_affine_mm

FOLDER = "lidc_idri_ct"
CASES = ("LIDC-IDRI-0001", "LIDC-IDRI-0003")
#: LIDC's usual consensus: a voxel (and a nodule) counts when at least this many of the 4 readers marked it.
CONSENSUS_READERS = 2
FILES = ("ct.nii.gz", "nodule_reader_count.nii.gz", "nodule_instances.nii.gz")


@dataclass(frozen=True)
class Nodule:
    """One consensus nodule: its number in ``nodules.csv``, readers, ratings, and where and how big it is."""

    case: str
    number: int
    n_readers: int
    malignancy: tuple[int, ...]
    voxels: int
    volume_mm3: float
    centre_ijk: tuple[float, float, float]
    centre_lps: tuple[float, float, float]

    @property
    def diameter_mm(self) -> float:
        """Diameter of the sphere with the consensus volume (LUNA16 hits fall within half of it)."""
        return float((6.0 * self.volume_mm3 / math.pi) ** (1.0 / 3.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "n_readers": self.n_readers,
            "malignancy": list(self.malignancy),
            "consensus_voxels": self.voxels,
            "volume_mm3": round(self.volume_mm3, 1),
            "diameter_mm": round(self.diameter_mm, 2),
            "centre_ijk": [round(v, 2) for v in self.centre_ijk],
            "centre_lps_mm": [round(v, 2) for v in self.centre_lps],
        }


@dataclass
class LidcCase:
    """A case read in: CT (HU, axes i, j, k as the NIfTI), reader-count and instance maps, the RAS affine."""

    id: str
    ct: np.ndarray = field(repr=False)
    reader_count: np.ndarray = field(repr=False)
    instances: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    info: dict[str, Any] = field(repr=False)
    rows: list[dict[str, str]] = field(repr=False)
    folder: Path = field(repr=False)

    @property
    def affine_lps(self) -> np.ndarray:
        """Voxel index (i, j, k) → DICOM patient coordinates (LPS mm), as LIDC and LUNA16 give positions."""
        return LPS_TO_RAS @ self.affine  # the flip is its own inverse

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return float(s[0]), float(s[1]), float(s[2])

    @property
    def consensus(self) -> np.ndarray:
        """The consensus mask (at least :data:`CONSENSUS_READERS` readers), uint8."""
        return (self.reader_count >= CONSENSUS_READERS).astype(np.uint8)

    def nodules(self, min_readers: int = CONSENSUS_READERS) -> list[Nodule]:
        return consensus_nodules(self, min_readers)


def locate(root: Path | None = None, verify: bool = True) -> Path:
    """The LIDC folder under the data root (``$MEDSIGHT_DATA``), its files checked against its ``MD5SUMS``."""
    folder = Path(root) if root is not None else data_root() / FOLDER
    if not (folder / "cases.json").is_file():
        raise MedsightError(
            "no LIDC-IDRI folder here (cases.json missing); set MEDSIGHT_DATA to the folder that holds "
            f"{FOLDER}/ (medsight does not download LIDC-IDRI: it comes from TCIA as DICOM, see docs/ct.md)",
            folder,
        )
    if verify:
        verify_md5(folder)
    return folder


def verify_md5(folder: Path) -> None:
    """Every file ``MD5SUMS`` lists exists and has its MD5 (about 40 MB: a fraction of a second)."""
    sums = folder / "MD5SUMS"
    if not sums.is_file():
        raise MedsightError("MD5SUMS missing: cannot check the files are the published ones", folder)
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split(maxsplit=1)
        path = folder / name.strip().removeprefix("./")
        if not path.is_file():
            raise MedsightError("listed in MD5SUMS but missing", path)
        got = md5sum(path)
        if got != expected:
            raise MedsightError(f"MD5 {got} does not match MD5SUMS ({expected}): not the published file", path)


def cases_info(folder: Path) -> dict[str, dict[str, Any]]:
    try:
        return dict(json.loads((folder / "cases.json").read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedsightError(f"cannot read cases.json ({exc})", folder / "cases.json") from exc


def read_case(case_id: str, root: Path | None = None, verify: bool = False) -> LidcCase:
    """Read one case; the three volumes must share one grid and affine."""
    import nibabel as nib

    folder = locate(root, verify=verify)
    info = cases_info(folder)
    if case_id not in info:
        raise MedsightError(f"no case {case_id!r} in cases.json (cases: {', '.join(sorted(info))})", folder)
    arrays: list[np.ndarray] = []
    affine = np.eye(4)
    for k, name in enumerate(FILES):
        path = folder / case_id / name
        if not path.is_file():
            raise MedsightError("file missing", path)
        try:
            img: Any = nib.load(str(path))
            arr = np.asarray(img.dataobj)
        except Exception as exc:
            raise MedsightError(f"not a readable NIfTI file ({exc})", path) from exc
        if arr.ndim != 3:
            raise MedsightError(f"expected a 3D volume, got shape {arr.shape}", path)
        if k == 0:
            affine = nifti_affine_mm(img)
        elif arr.shape != arrays[0].shape or not np.allclose(nifti_affine_mm(img), affine, atol=1e-4):
            raise MedsightError(f"grid differs from ct.nii.gz ({arr.shape})", path)
        arrays.append(arr)
    with open(folder / "nodules.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("case") == case_id]
    ct, count, instances = arrays
    return LidcCase(
        case_id, ct, count.astype(np.uint8), instances.astype(np.uint8), affine, info[case_id], rows, folder
    )


def consensus_nodules(case: LidcCase, min_readers: int = CONSENSUS_READERS) -> list[Nodule]:
    """The nodules at least ``min_readers`` readers outlined, each from its consensus voxels (instance ∩ count ≥
    ``min_readers``), numbered as in ``nodules.csv``: 1 in LIDC-IDRI-0001, 3 in LIDC-IDRI-0003 at the usual 2."""
    by_number = {int(r["nodule"]): r for r in case.rows}
    voxel_mm3 = float(abs(np.linalg.det(case.affine[:3, :3])))
    out: list[Nodule] = []
    shared = case.reader_count >= min_readers
    for number in sorted(int(v) for v in np.unique(case.instances) if v):
        where = np.argwhere((case.instances == number) & shared)
        if len(where) == 0:
            continue  # fewer than min_readers readers share any voxel: not a consensus nodule
        centre = where.mean(axis=0)
        lps = case.affine_lps @ np.append(centre, 1.0)
        row = by_number.get(number, {})
        ratings = tuple(int(v) for v in str(row.get("malignancy_ratings", "")).split())
        out.append(
            Nodule(
                case=case.id,
                number=number,
                n_readers=int(row.get("n_readers", 0) or 0),
                malignancy=ratings,
                voxels=len(where),
                volume_mm3=len(where) * voxel_mm3,
                centre_ijk=(float(centre[0]), float(centre[1]), float(centre[2])),
                centre_lps=(float(lps[0]), float(lps[1]), float(lps[2])),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------- prepared for a model


@dataclass
class Prepared:
    """A case after the lung CT chain (``transforms.ct_lung_preparation``): HU image, consensus label and lung mask
    ``(x, y, z)`` on the resampled lung crop, with its RAS affine."""

    id: str
    image: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    lung: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return float(s[0]), float(s[1]), float(s[2])


def prepare(case: LidcCase, spacing: tuple[float, float, float], margin_mm: float = 10.0) -> Prepared:
    """The case through the lung CT chain: HU floored at -1024, cropped to the lungs + margin, resampled."""
    import torch
    from monai.data import MetaTensor

    from medsight.transforms import ct_lung_preparation

    affine = torch.as_tensor(case.affine, dtype=torch.float64)
    data = {
        "image": MetaTensor(torch.as_tensor(case.ct[None], dtype=torch.float32), affine=affine),
        "label": MetaTensor(torch.as_tensor(case.consensus[None], dtype=torch.float32), affine=affine),
    }
    out = ct_lung_preparation(spacing, margin_mm)(data)
    image, label, lung = out["image"], out["label"], out["lung"]
    return Prepared(
        case.id,
        np.asarray(image[0].numpy(), np.float32),
        np.asarray(label[0].numpy() > 0.5, np.uint8),
        np.asarray(lung[0].numpy() > 0.5),
        np.asarray(image.affine, dtype=float),
    )


def split_lungs(p: Prepared) -> tuple[int, dict[str, tuple[slice, np.ndarray]]]:
    """Cut a prepared case between its lungs (the middle of the lung mask along x, the patient's right-left axis):
    the index and, per side, the x-slice and its affine. A consensus nodule across the cut is an error."""
    from scipy import ndimage

    xs = np.flatnonzero(p.lung.any(axis=(1, 2)))
    if len(xs) == 0:
        raise MedsightError("no lung found (nothing below -400 HU inside the body)", p.id)
    cut = (int(xs[0]) + int(xs[-1]) + 1) // 2
    components, n = ndimage.label(p.label)
    for k in range(1, n + 1):
        x = np.flatnonzero((components == k).any(axis=(1, 2)))
        if x[0] < cut <= x[-1]:
            raise MedsightError(f"a consensus nodule lies across the cut between the lungs (x = {cut})", p.id)
    # the NIfTI's i axis runs to the patient's left when the affine's first column points to -R (LPS-like storage)
    left_is_high = p.affine[0, 0] < 0
    low, high = slice(0, cut), slice(cut, p.image.shape[0])
    sides = {"right": low, "left": high} if left_is_high else {"right": high, "left": low}
    out: dict[str, tuple[slice, np.ndarray]] = {}
    for name, sl in sides.items():
        affine = p.affine.copy()
        affine[:3, 3] += affine[:3, 0] * (sl.start or 0)
        out[name] = (sl, affine)
    return cut, out


def write_training_folder(case: LidcCase, out: Path, spacing: tuple[float, float, float]) -> dict[str, Any]:
    """An MSD folder (imagesTr/labelsTr, dataset.json, medsight_splits.json) for training on one patient.

    With one patient there is no second patient to validate on, so its lungs are two cases: the lung holding more
    consensus nodule voxels trains, the other validates (post-processing, validation Dice), and the test patient
    stays out of the folder entirely. Images stay in HU (int16); labels are the consensus (1 = nodule). Returns what
    was written: the case ids and their nodule voxels."""
    import nibabel as nib

    from medsight.io.atomic import atomic_dir, write_json

    p = prepare(case, spacing)
    _, sides = split_lungs(p)
    voxels = {name: int(p.label[sl].sum()) for name, (sl, _) in sides.items()}
    train_side = max(voxels, key=lambda s: (voxels[s], s == "left"))
    val_side = "right" if train_side == "left" else "left"
    ids = {name: f"{case.id}-{name}" for name in sides}
    with atomic_dir(out) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for name, (sl, affine) in sides.items():
            image = np.clip(np.rint(p.image[sl]), -32768, 32767).astype(np.int16)
            nib.save(nib.Nifti1Image(image, affine), str(tmp / "imagesTr" / f"{ids[name]}_0000.nii.gz"))
            nib.save(
                nib.Nifti1Image(p.label[sl].astype(np.uint8), affine), str(tmp / "labelsTr" / f"{ids[name]}.nii.gz")
            )
        write_json(
            tmp / "dataset.json",
            {
                "name": "LIDC-IDRI lung nodules (consensus of >= 2 of 4 readers)",
                "channel_names": {"0": "CT"},
                "labels": {"0": "background", "1": "nodule"},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            },
        )
        write_json(
            tmp / "medsight_splits.json",
            {
                "method": f"one training patient: fold 0 trains on its {train_side} lung and validates on its "
                f"{val_side} lung; the test patient is not in this folder",
                "folds": [[ids[val_side]], [ids[train_side]]],
                "test": [],
                "patients": {ids[s]: case.id for s in sides},
            },
        )
    return {"train": ids[train_side], "val": ids[val_side], "nodule_voxels": {ids[s]: v for s, v in voxels.items()}}
