"""The warm outcome model: the CNN's ONNX Runtime session, the clinical encoder, the fitted linear models, the
selection, the operating point and the deferral rule, loaded once; ``predict`` returns typed :class:`OutcomeResult` s,
each with its conformal prediction set and ``defer_to_radiologist`` (rule fitted on validation patients)."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from medsight.errors import MedsightError
from medsight.evaluation.selective import SelectivePrediction
from medsight.explain.gradcam import gradcam, overlay
from medsight.io.atomic import write_bytes
from medsight.io.images import is_dicom_file
from medsight.runtime.onnx_export import OnnxPredictor
from medsight.runtime.results import NO_DEFERRAL_RULE, Deferral, Heatmap, Result
from medsight.tasks.classification.network import gradcam_layer
from medsight.tasks.outcome import data as outcome_data
from medsight.tasks.outcome.models import LABELS, FittedModels, OperatingPoint, Selection, two_class
from medsight.tasks.outcome.network import split_outputs
from medsight.tasks.outcome.plan import OutcomePlan
from medsight.training.bundle import BUNDLE_JSON, Bundle

log = logging.getLogger("medsight")


@dataclass(kw_only=True)
class OutcomeResult(Result):
    """p(outcome) of every model, the deployed model's probability and its decision at the operating point."""

    target: str
    model: str
    probability: float
    probabilities: dict[str, float]
    threshold: float
    positive: bool
    missing_fields: list[str]
    n_fields: int
    #: Fields whose value the model could not use, each with why and what it did instead (text in a numeric field:
    #: used as missing, so also in ``missing_fields``; a category not seen in training: encoded as none of them).
    unusable_fields: dict[str, str] = field(default_factory=dict)
    #: Kept in memory for ``save`` (heatmap overlay, DICOM SR); never written to predictions.json.
    source: Path | None = field(default=None, repr=False, compare=False)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def decision(self) -> str:
        return self.target if self.positive else f"not {self.target}"

    def summary(self) -> str:
        return (
            f"p({self.target}) = {self.probability:.3f} ({LABELS[self.model]}) -> "
            f"{'positive' if self.positive else 'negative'} at {self.threshold:.3f}; "
            f"{len(self.missing_fields)} of {self.n_fields} clinical fields missing"
            + (
                f", {len(self.unusable_fields)} unusable ({', '.join(self.unusable_fields)})"
                if self.unusable_fields
                else ""
            )
            + ("; defer to radiologist" if self.deferral is not None and self.deferral.defer_to_radiologist else "")
        )

    def payload(self) -> dict[str, Any]:
        return {
            "probabilities": dict(self.probabilities),
            "probability": self.probability,
            "model": self.model,
            "decision": self.decision,
            "operating_point": {"threshold": self.threshold, "on": self.model},
            "missing_fields": list(self.missing_fields),
            "unusable_fields": dict(self.unusable_fields),
            **({} if self.deferral is not None else NO_DEFERRAL_RULE),
        }


class OutcomeModel:
    """An outcome bundle loaded once. Inputs are image files with sidecar ``<file>.json`` field values, or CSVs
    (an ``image`` column plus field columns); see :func:`medsight.tasks.outcome.data.read_cases`."""

    def __init__(self, bundle: Bundle) -> None:
        where = str(bundle.path / BUNDLE_JSON)
        if bundle.task != "outcome":
            raise MedsightError(f"a {bundle.task} bundle, not an outcome one", bundle.path)
        self.bundle = bundle
        self.plan = bundle.plan(OutcomePlan)
        self.fitted = FittedModels.from_json(bundle.meta["models"], where)
        self.selection = Selection.from_json(bundle.meta["selection"], where)
        self.operating_point = OperatingPoint.from_json(bundle.meta["operating_point"], where)
        stored = bundle.meta.get("selective_prediction")
        #: Conformal sets and the deferral rule fitted on validation (None for bundles trained before them).
        self.selective = None if stored is None else SelectivePrediction.from_json(stored, where)
        self.label_names = list(bundle.label_names)
        self.target = str(bundle.meta["target"]["name"])
        self.fields = [str(f["name"]) for f in bundle.input.get("clinical_fields", [])]
        self.size = int(bundle.input["spatial_size"][0])
        if not bundle.onnx_path.is_file():
            raise MedsightError("bundle is missing model.onnx", bundle.path)
        self.session = OnnxPredictor(bundle.onnx_path)

    @cached_property
    def network(self) -> nn.Module:
        """The PyTorch CNN, loaded on first use: only Grad-CAM needs gradients, ONNX Runtime does the rest."""
        return self.bundle.network("cpu")

    # ------------------------------------------------------------------------------------------------ arrays

    def image_outputs(self, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embedding) of prepared images, from ONNX Runtime."""
        if len(images) == 0:
            return np.zeros((0, 2), np.float32), np.zeros((0, len(self.fitted.projection.mean)), np.float32)
        joined = np.concatenate([self.session.run(images[s : s + batch]) for s in range(0, len(images), batch)])
        return split_outputs(joined)

    def probabilities(self, images: np.ndarray, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """p(outcome) of each of the four models for prepared images and their raw clinical table."""
        logits, emb = self.image_outputs(images)
        return self.fitted.probabilities(logits, emb, self.fitted.encoder.transform(table))

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Grad-CAM of the image branch towards the outcome, one map in [0, 1] per image."""
        return gradcam(self.network, gradcam_layer(self.network), images, [1] * len(images))

    # -------------------------------------------------------------------------------------------- contract

    def predict(self, inputs: Sequence[Path], explain: bool = False) -> list[Result]:
        """Read every input (and its clinical fields) first, then run the four models on all of them."""
        if not inputs:
            raise MedsightError("no input files given")
        cases = outcome_data.read_cases([Path(p) for p in inputs], self.fields)
        return list(self.predict_cases(cases, explain))

    def predict_cases(self, cases: Sequence[outcome_data.Case], explain: bool = False) -> list[OutcomeResult]:
        """Typed results for cases already in memory (what a service hands over)."""
        images = outcome_data.read_images([c.image for c in cases], self.size)
        table = outcome_data.table(cases, self.fields)
        probs = self.probabilities(images, table)
        described = self.fitted.encoder.describe(table)
        unusable = sorted({f for _, bad in described for f in bad})
        if unusable:  # field names only: values and inputs are in predictions.json
            log.warning(
                "%d of %d case(s) hold clinical values the model cannot use (%s); see unusable_fields per case",
                sum(1 for _, bad in described if bad),
                len(cases),
                ", ".join(unusable),
            )
        heat = self.heatmaps(images) if explain and len(images) else None
        sel, thr = self.selection.selected, self.operating_point.threshold
        deferrals = self.deferrals(probs[sel])
        results = []
        for k, case in enumerate(cases):
            p = float(probs[sel][k])
            results.append(
                OutcomeResult(
                    input=case.name,
                    index=k,
                    target=self.target,
                    model=sel,
                    probability=p,
                    probabilities={m: float(v[k]) for m, v in probs.items()},
                    threshold=thr,
                    positive=p >= thr,
                    missing_fields=described[k][0],
                    unusable_fields=described[k][1],
                    n_fields=len(self.fields),
                    heatmap=None if heat is None else Heatmap(heat[k], self.target, "Grad-CAM"),
                    deferral=deferrals[k],
                    source=case.image,
                    image=images[k],
                )
            )
        return results

    def deferrals(self, p: np.ndarray) -> list[Deferral | None]:
        """Each case's prediction set over {not outcome, outcome} and its deferral under the stored rule."""
        if self.selective is None:
            return [None] * len(p)
        decided = (np.asarray(p) >= self.operating_point.threshold).astype(int)
        a = self.selective.assess(two_class(p), decided)
        target = 1 - self.selective.conformal.alpha
        return [
            Deferral([self.label_names[j] for j in np.flatnonzero(s)], float(c), bool(r), r, target)
            for s, c, r in zip(a.sets, a.confidence, a.reasons, strict=True)
        ]

    def save(self, results: Sequence[Result], folder: Path) -> None:
        """Grad-CAM overlays (PNG) and maps (npy); a TID 1500 SR with p(outcome) for each DICOM input."""
        for r in results:
            assert isinstance(r, OutcomeResult)
            if r.heatmap is not None and r.image is not None:
                rgb = overlay(r.image, r.heatmap.array)
                png = _png(np.kron(rgb, np.ones((2, 2, 1), np.uint8)))
                write_bytes(folder / f"{r.stem}_gradcam.png", png)
                buf = io.BytesIO()
                np.save(buf, r.heatmap.array)
                write_bytes(folder / f"{r.stem}_gradcam.npy", buf.getvalue())
                r.files.update({"heatmap_image": f"{r.stem}_gradcam.png", "heatmap_array": f"{r.stem}_gradcam.npy"})
            if r.source is not None and r.source.is_file() and is_dicom_file(r.source):
                from medsight.serving.dicom_objects import for_input

                with for_input(r.source):
                    self._write_sr(r, folder / f"{r.stem}_sr.dcm")
                r.dicom["sr"] = f"{r.stem}_sr.dcm"

    def _write_sr(self, r: OutcomeResult, path: Path) -> None:
        from medsight.io.dicom import read_datasets
        from medsight.serving.codes import bundle_codes
        from medsight.serving.dicom_objects import Finding, write_sr
        from medsight.serving.provenance import AlgorithmIdentity

        assert r.source is not None
        write_sr(
            [Finding(label=r.target, probability=r.probability)],
            [read_datasets([r.source])[0]],
            path,
            identity=AlgorithmIdentity.of(self.bundle, f"medsight {self.bundle.meta['data']['source']} outcome"),
            codes=bundle_codes(self.bundle.meta),
        )


def _png(rgb: np.ndarray) -> bytes:
    from medsight.evaluation.plots import png_image

    return png_image(rgb)
