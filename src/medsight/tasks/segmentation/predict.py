"""The warm segmentation model: a bundle loaded once (ONNX Runtime session, plan, post-processing), masks in each
input's own geometry out. ``predict`` returns typed results and writes nothing; ``save`` writes NIfTI / label PNG /
DICOM SEG and an overlay per input."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from medsight import config
from medsight.data import segmentation as segdata
from medsight.errors import MedsightError
from medsight.runtime.results import Result
from medsight.tasks.segmentation.data import Loaded
from medsight.tasks.segmentation.inference import (
    Predictor,
    onnx_predictor,
    postprocess,
    predict_case,
    torch_predictor,
)
from medsight.tasks.segmentation.lesions import Region, regions
from medsight.tasks.segmentation.overlay import overlay, view
from medsight.tasks.segmentation.plan import SegmentationPlan
from medsight.tasks.segmentation.uncertainty import Mirrors, disagreement, flag
from medsight.training.bundle import Bundle

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from medsight.serving.codes import Code
    from medsight.serving.provenance import AlgorithmIdentity


@dataclass
class InputImage:
    """An input read and checked: image ``(C, *spatial)``, spacing, and what writing results in its geometry needs."""

    path: Path
    kind: str  # "nifti", "volume", "raster", "dicom" (a series with geometry) or "dicom2d" (one image without)
    image: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    volume: Any = None  # the DICOM series (medsight.io.dicom.Volume) for a DICOM input


@dataclass
class SegmentationResult(Result):
    """One input's mask (class indices on the input's own grid) and the amount of each class."""

    labels: list[str] = field(default_factory=list)
    engine: str = ""
    unit: str = ""
    amounts: dict[str, float] = field(default_factory=dict)
    mask: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8), repr=False)
    spacing: tuple[float, ...] = ()
    affine: np.ndarray = field(default_factory=lambda: np.eye(4), repr=False)
    source: InputImage | None = field(default=None, repr=False)
    #: Test-time-mirroring disagreement (``uncertainty.py``); None when not computed (plan without test-time flips).
    uncertainty: float | None = None
    #: Uncertainty above the threshold chosen on validation at training; None without uncertainty or threshold.
    flag_for_review: bool | None = None
    #: Per foreground class, the highest probability the model gave it anywhere in the image (the SR's probability
    #: for a class it found nowhere).
    peak_probability: dict[str, float] = field(default_factory=dict)
    #: Each connected region of each foreground class, largest first (``lesions.py``): one SR finding each.
    regions: list[Region] = field(default_factory=list)
    #: Per class, how many smaller regions were left out of ``regions`` (``lesions.MAX_REGIONS_PER_CLASS``).
    regions_omitted: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = ", ".join(f"{n} {v:.0f} {self.unit}" for n, v in self.amounts.items()) + f" ({self.engine})"
        return text + (f"; flagged for review (uncertainty {self.uncertainty:.3f})" if self.flag_for_review else "")

    def payload(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "labels": list(self.labels),
            "shape": list(self.mask.shape),
            "spacing": [float(s) for s in self.spacing],
            "amounts": {"unit": self.unit, **self.amounts},
            "uncertainty": self.uncertainty,
            "flag_for_review": self.flag_for_review,
            "regions": [region.payload() for region in self.regions],
            "regions_omitted": dict(self.regions_omitted),
        }


def read_input(path: Path) -> InputImage:
    """Read one input (NIfTI/NRRD/MHA, any 2D image Pillow reads, a DICOM file or series folder) and check it."""
    from medsight.io.images import check_pixels

    found = _read_input(path)
    check_pixels(found.image, path)
    return found


def _read_input(path: Path) -> InputImage:
    name = path.name.lower()
    if not path.exists():
        raise MedsightError("no such file or folder", path)
    if path.is_dir() or name.endswith(".dcm") or (path.is_file() and _is_dicom(path)):
        from medsight.io.dicom import read_series, to_metatensor

        volume = read_series(path)
        if volume.geometry is None and len(volume.files) == 1:  # a file, or a folder holding one image
            return _one_dicom_image(path, volume)
        if volume.geometry is None or volume.array.ndim != 3:
            raise MedsightError("DICOM input must be a greyscale series with patient geometry", path)
        mt = to_metatensor(volume)
        affine = np.asarray(mt.affine, dtype=float)
        image = np.asarray(mt.detach().cpu().numpy(), dtype=np.float32)
        return InputImage(path, "dicom", image, segdata.spacing_of(affine), affine, volume)
    if name.endswith(segdata.VOLUME_SUFFIXES):
        arr, affine = segdata._read_volume(path)
        arr = np.asarray(arr, dtype=np.float32)
        image = np.moveaxis(arr, -1, 0) if arr.ndim == 4 else arr[None]
        kind = "nifti" if ".nii" in name else "volume"
        return InputImage(path, kind, image, segdata.spacing_of(affine), affine)
    if name.endswith(segdata.RASTER_SUFFIXES):
        return InputImage(path, "raster", segdata._read_raster(path), (1.0, 1.0), np.eye(4))
    raise MedsightError(
        "not an input segmentation can read (NIfTI, NRRD/MHA, a 2D image Pillow reads such as PNG/TIFF/JPEG/BMP/"
        "PPM/PGM/WebP, DICOM)",
        path,
    )


def _one_dicom_image(path: Path, volume: Any) -> InputImage:
    """A DICOM image without patient geometry (ultrasound, a radiograph) already read as ``volume``: a 2D image in its
    own pixels, like a PNG (a 2D model was trained on pixels, so no spacing is applied); the SEG and SR reference it.
    A multi-frame one is a cine loop, which ``medsight stream`` segments frame by frame."""
    from medsight.io.images import volume_image

    frames = int(np.asarray(volume.array).shape[0])
    if frames > 1:
        raise MedsightError(
            f"a multi-frame image without patient geometry ({frames} frames, a cine loop?): "
            "'medsight stream BUNDLE FILE' segments it frame by frame",
            path,
        )
    return InputImage(path, "dicom2d", volume_image(volume), (1.0, 1.0), np.eye(4), volume)


def _is_dicom(path: Path) -> bool:
    from medsight.io.images import is_dicom_file

    return is_dicom_file(path)


def ort_providers() -> list[str]:
    """ONNX Runtime's execution providers here (empty when it is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def inference_engine(device: str, onnx_usable: bool, providers: list[str]) -> str:
    """``onnx`` or ``torch``: ONNX Runtime where it runs on the chosen device, else PyTorch on that device.

    On a GPU the CPU build of ONNX Runtime would run 3D inference on the CPU (measured on an H100: 2-2.5 s per
    Hippocampus case), so without its CUDA provider PyTorch on CUDA runs it.
    """
    if not onnx_usable:
        return "torch"
    if device.startswith("cuda") and "CUDAExecutionProvider" not in providers:
        return "torch"
    return "onnx"


class SegmentationModel:
    """A segmentation bundle loaded once; ONNX Runtime when the bundle has a checked export, else PyTorch.

    ``uncertainty`` (default: on when the plan has test-time flips, which then cost nothing extra; off for a plan
    that turned them off for real-time use, where it would add one pass per axis) gives each result its test-time
    mirroring uncertainty and the review flag from the bundle's validation threshold."""

    def __init__(self, bundle: Bundle, uncertainty: bool | None = None) -> None:
        self.bundle = bundle
        self.plan = bundle.plan(SegmentationPlan)
        self.uncertainty = self.plan.test_time_flips if uncertainty is None else uncertainty
        self.review_threshold: float | None = (bundle.meta.get("uncertainty") or {}).get("threshold")
        self.labels = bundle.label_names
        post = bundle.meta["postprocessing"]
        self.keep: list[int] = [int(k) for k in post["keep_largest_component"]]
        #: per class, the gate that drops an unsure prediction (chosen on validation; none in older bundles)
        self.unsure: dict[str, dict[str, float]] = dict(post.get("drop_unsure") or {})
        onnx_info = bundle.meta.get("onnx") or {}
        device = config.device()
        self.predictor: Predictor
        choice = inference_engine(device, "error" not in onnx_info and bundle.onnx_path.is_file(), ort_providers())
        if choice == "onnx":
            self.predictor, self.engine = onnx_predictor(bundle.onnx_path, config.num_threads()), "ONNX Runtime"
        else:
            self.predictor = torch_predictor(bundle.network(device), device)
            self.engine = "PyTorch" if device == "cpu" else f"PyTorch ({device})"

    # --- the shared inference path (evaluate uses it too) --------------------------------------------------------
    def case(self, case: Loaded, mirrors: Mirrors | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(post-processed mask, probabilities)`` of a case on its own grid (``mirrors`` collects the test-time
        passes for the uncertainty). A plan with a field of view finds it when the case has no region-of-interest
        mask, and nothing outside it is segmented."""
        if self.plan.field_of_view is not None and case.roi is None:
            from dataclasses import replace

            from medsight.tasks.segmentation.fundus import find_fov

            case = replace(case, roi=find_fov(case.image))
        mask, probs = predict_case(case, self.plan, self.predictor, mirrors=mirrors)
        if self.plan.field_of_view is not None and case.roi is not None:
            probs = probs.copy()
            probs[:, ~case.roi] = 0.0
            probs[0][~case.roi] = 1.0  # outside the FOV is background with certainty
        return postprocess(mask, self.keep, case.roi, probs, self.unsure), probs

    def segment(self, image: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, float | None]:
        """The post-processed mask of ``image`` ``(C, *spatial)`` and its uncertainty (None when off); a 2D model
        runs slice by slice on a volume."""
        mask, spread, _, _ = self._segment(image, spacing, details=False)
        return mask, spread

    def _segment(
        self, image: np.ndarray, spacing: tuple[float, ...], details: bool = True
    ) -> tuple[np.ndarray, float | None, np.ndarray, np.ndarray]:
        """:meth:`segment` plus each class's peak probability over the image (what the SR reports for a class it
        did not find) and, per voxel, the probability of the class the mask assigns there (for its regions').
        ``details=False`` (a stream's frames, which need neither) returns empty arrays for both and skips the work."""
        dims = self.plan.spatial_dims
        n_classes = len(self.labels)
        if image.ndim - 1 == dims:
            mirrors = Mirrors() if self.uncertainty else None
            mask, probs = self.case(Loaded("input", image, None, spacing, np.eye(4)), mirrors)
            spread = None if mirrors is None else disagreement(mirrors, n_classes)
            if not details:
                return mask, spread, np.zeros(0, np.float32), np.zeros(0, np.float32)
            return mask, spread, _peaks(probs), _assigned(probs, mask)
        if dims == 2 and image.ndim == 4:
            out = np.zeros(image.shape[1:], np.uint8)
            confidence = np.zeros(image.shape[1:], np.float32)
            peaks = np.zeros(n_classes, np.float32)
            slices: list[Mirrors] = []
            for k in range(image.shape[-1]):
                mirrors = Mirrors() if self.uncertainty else None
                # A volume is (C, x, y, z): x runs along a row. A 2D model learnt images as rows x columns (rasters, and
                # a DICOM image read alone), so each slice is shown to it that way, not transposed, and put back.
                plane = np.ascontiguousarray(np.swapaxes(image[..., k], 1, 2))
                mask, probs = self.case(Loaded("input", plane, None, (spacing[1], spacing[0]), np.eye(4)), mirrors)
                out[..., k] = mask.T
                peaks = np.maximum(peaks, _peaks(probs))
                confidence[..., k] = _assigned(probs, mask).T
                slices += [mirrors] if mirrors is not None else []
            spread = disagreement(Mirrors.stack(slices), n_classes) if slices else None
            return out, spread, peaks, confidence
        raise MedsightError(f"a {image.ndim - 1}D image, but the model segments {dims}D images")

    # --- the Model protocol ----------------------------------------------------------------------------------------
    def predict(self, inputs: Sequence[Path], explain: bool = False) -> list[SegmentationResult]:
        """One mask per input, in order. ``explain`` is accepted for the common interface: the overlay that
        ``save`` writes is a segmentation's explanation."""
        if not inputs:
            raise MedsightError("no input files given")
        read = [read_input(Path(p)) for p in tqdm(inputs, desc="read", unit="input", disable=len(inputs) < 4)]
        for r in read:
            if r.image.shape[0] not in (1, 3, self.plan.network.in_channels):
                raise MedsightError(
                    f"{r.image.shape[0]} channels; the model takes {self.plan.network.in_channels}", r.path
                )
        results = []
        for k, r in enumerate(tqdm(read, desc="segment", unit="input", disable=len(read) < 2)):
            try:
                mask, spread, peaks, confidence = self._segment(r.image, r.spacing)
            except MedsightError as exc:  # e.g. a 2D image given to a 3D model: say which input
                if exc.path:
                    raise
                raise MedsightError(exc.problem, r.path) from exc
            raster = r.kind in ("raster", "dicom2d")  # in pixels
            unit = "mm³" if len(r.spacing) == 3 else ("pixels" if raster else "mm²")
            size = 1.0 if raster else float(np.prod(r.spacing))
            amounts = {self.labels[c]: float((mask == c).sum()) * size for c in range(1, len(self.labels))}
            found, omitted = regions(mask, confidence, list(self.labels), tuple(r.spacing), unit)
            results.append(
                SegmentationResult(
                    input=r.path.name,
                    index=k,
                    labels=list(self.labels),
                    engine=self.engine,
                    unit=unit,
                    amounts=amounts,
                    mask=mask,
                    spacing=tuple(r.spacing),
                    affine=r.affine,
                    source=r,
                    uncertainty=spread,
                    flag_for_review=flag(spread, self.review_threshold),
                    peak_probability={self.labels[c]: float(peaks[c]) for c in range(1, len(self.labels))},
                    regions=found,
                    regions_omitted=omitted,
                )
            )
        return results

    def label_file_values(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` (class numbers) in the values the training data's label files used for each class: a data set
        declaring 0, 1 and 3 is trained on classes 0, 1, 2, and its predicted label maps say 3 again."""
        values = [int(v) for v in (self.bundle.meta.get("data") or {}).get("label_values") or []]
        if len(values) != len(self.labels) or values == list(range(len(values))):
            return mask.astype(np.uint8)
        return np.asarray(values, dtype=np.uint8 if max(values) < 256 else np.uint16)[mask]

    def save(self, results: Sequence[Result], folder: Path) -> None:
        """NIfTI in → NIfTI (same affine and header); raster in → label PNG; DICOM in → DICOM SEG, a TID 1500 SR
        (each class's peak probability, referencing the series) and a NIfTI in the series' geometry; an overlay PNG
        for every input."""
        from medsight.evaluation.plots import png_image

        for r in results:
            assert isinstance(r, SegmentationResult) and r.source is not None
            src, stem = r.source, r.stem
            if src.kind in ("raster", "dicom2d"):
                from PIL import Image

                buf = io.BytesIO()
                Image.fromarray(self.label_file_values(r.mask)).save(buf, format="PNG")
                (folder / f"{stem}_mask.png").write_bytes(buf.getvalue())
                r.files["mask"] = f"{stem}_mask.png"
            else:
                import nibabel as nib

                header: Any = None
                values = self.label_file_values(r.mask)
                if src.kind == "nifti":
                    header = nib.load(str(src.path)).header.copy()
                    header.set_data_dtype(values.dtype)
                    header.set_xyzt_units(xyz="mm")  # the affine is in mm whatever unit the input named
                name = f"{stem}_seg.nii.gz"
                nib.save(nib.Nifti1Image(values, r.affine, header), str(folder / name))
                r.files["mask"] = name
            if src.kind in ("dicom", "dicom2d"):
                from medsight.io.dicom import read_datasets
                from medsight.serving.codes import bundle_codes
                from medsight.serving.dicom_objects import for_input, write_seg
                from medsight.serving.provenance import AlgorithmIdentity

                seg_name = f"{stem}_seg.dcm"
                datasets = read_datasets(src.volume.files)  # the series' headers, read once for the SEG and the SR
                identity = AlgorithmIdentity.of(
                    self.bundle, f"medsight {self.bundle.meta['data']['source']} segmentation"
                )
                codes = bundle_codes(self.bundle.meta)
                planes = r.mask[None] if src.kind == "dicom2d" else np.transpose(r.mask, (2, 1, 0))
                with for_input(src.path):
                    write_seg(
                        np.ascontiguousarray(planes).astype(np.uint8),
                        datasets,
                        self.labels[1:],
                        folder / seg_name,
                        identity=identity,
                        codes=codes,
                    )
                    r.dicom["seg"] = seg_name
                    r.dicom["sr"] = self._write_sr(r, folder, datasets, identity, codes)
            img, _unused, shown = view(src.image, None, r.mask)
            (folder / f"{stem}_overlay.png").write_bytes(png_image(overlay(img, shown)))
            r.files["overlay"] = f"{stem}_overlay.png"

    def _write_sr(
        self,
        r: SegmentationResult,
        folder: Path,
        datasets: list[Dataset],
        identity: AlgorithmIdentity,
        codes: dict[str, Code],
    ) -> str:
        """A TID 1500 SR beside the SEG (same series ``datasets``, algorithm ``identity`` and ``codes``): one
        measurement group per connected region of a class (``lesions.py``: "nodule 1", "nodule 2"..., each with its
        volume or area, the highest probability of its class inside it and references to the slices it lies on), and
        one per class found nowhere (its peak probability over the image, referencing every slice)."""
        from medsight.serving.dicom_objects import Finding, write_sr

        per_slice = r.mask.ndim == 3 and len(datasets) == r.mask.shape[2]  # one file per slice, in slice order
        size_unit = {"mm³": "mm3", "mm²": "mm2"}.get(r.unit)  # pixels have no physical size to report
        findings = []
        for c in range(1, len(self.labels)):
            label = self.labels[c]
            found = [region for region in r.regions if region.label == label]
            for region in found:
                findings.append(
                    Finding(
                        label=label,
                        probability=region.peak_probability,
                        image_indices=(region.slices if per_slice else None) or None,
                        identifier=region.name,
                        size=(region.size, size_unit) if size_unit else None,
                    )
                )
            if not found:
                findings.append(
                    Finding(label=label, probability=min(1.0, max(0.0, r.peak_probability.get(label, 0.0))))
                )
        name = f"{r.stem}_sr.dcm"
        write_sr(
            findings,
            datasets,
            folder / name,
            identity=identity,
            codes=codes,
        )
        return name


def _assigned(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per voxel, the probability of the class ``mask`` assigns there: ``probs`` ``(n_classes, *spatial)``."""
    index = np.clip(mask.astype(np.int64), 0, probs.shape[0] - 1)[None]
    return np.asarray(np.take_along_axis(probs, index, axis=0)[0], np.float32)


def _peaks(probs: np.ndarray) -> np.ndarray:
    """Each class's highest probability over the image: ``(n_classes,)``."""
    return np.asarray(probs.reshape(probs.shape[0], -1).max(axis=1), np.float32)
