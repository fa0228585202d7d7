"""Segmentation bundles of one fold combined into one: their softmax probabilities averaged.

Two trainings of one setting that differ only in the seed differ by a few Dice points on validation (BUSI:
``docs/benchmarks.md``); averaging their probabilities, as nnU-Net does across its models, keeps what they agree on.
The members must read the image the same way (spacing, normalisation, patch, image size) and must have been
validated on the same cases, because the ensemble's post-processing (largest component, unsure-lesion gate) and its
review threshold are chosen again on that validation split, exactly as training chooses them. The result is an
ordinary bundle (one network, one ONNX file) that predict, evaluate, stream and the service use unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medsight import config
from medsight.data.fingerprint import case_hash
from medsight.errors import MedsightError
from medsight.io.atomic import atomic_dir, write_json
from medsight.runtime.onnx_export import export_onnx
from medsight.tasks.segmentation.data import Loaded, SegmentationDataset, open_dataset, read_cases
from medsight.tasks.segmentation.inference import onnx_predictor, torch_predictor
from medsight.tasks.segmentation.network import PROBABILITY_AVERAGE, ProbabilityAverage
from medsight.tasks.segmentation.plan import NETWORK, SegmentationPlan
from medsight.tasks.segmentation.train import validation_postprocessing
from medsight.training.bundle import (
    BUNDLE_JSON,
    ONNX,
    WEIGHTS,
    Bundle,
    library_versions,
    load_bundle,
    now_iso,
    write_bundle_json,
)

log = logging.getLogger("medsight.segmentation")

#: Plan entries that decide how an image reaches the network; every member must agree on them.
READS_THE_IMAGE = (
    "spatial_dims",
    "target_spacing",
    "resample",
    "normalisation",
    "patch_size",
    "field_of_view",
    "image_pixels",
)


def check_members(bundles: Sequence[Bundle]) -> None:
    """Refuse members that cannot be averaged: not segmentation, nested, reading images differently, taking other
    input (channels, dimensions, modality), or validated on other cases (other ids, or the same ids of other data)."""
    if len(bundles) < 2:
        raise MedsightError(f"an ensemble needs at least 2 bundles, got {len(bundles)}")
    first = bundles[0]
    for b in bundles:
        where = b.path / BUNDLE_JSON
        if b.task != "segmentation":
            raise MedsightError(f"a {b.task} bundle; only segmentation bundles combine here", where)
        if b.meta["network"]["name"] != NETWORK:
            raise MedsightError(f"its network is {b.meta['network']['name']}, not one {NETWORK}", where)
        if b.label_names != first.label_names:
            raise MedsightError(f"its labels {b.label_names} differ from {first.label_names}", where)
        for key in READS_THE_IMAGE:
            if b.meta["plan"].get(key) != first.meta["plan"].get(key):
                raise MedsightError(f"its plan reads images differently from {first.path} ({key})", where)
        if b.meta["data"].get("val_ids") != first.meta["data"].get("val_ids"):
            raise MedsightError(f"it was validated on other cases than {first.path} (another fold?)", where)
        _check_same_input(b, first)
        _check_same_data(b, first)
    seen: dict[str, Path] = {}
    for b in bundles:  # the same weights twice (one folder given twice, or a copy) would count one model double
        digest = hashlib.sha256((b.path / WEIGHTS).read_bytes()).hexdigest() if (b.path / WEIGHTS).is_file() else ""
        if digest and digest in seen:
            raise MedsightError(f"the same model as {seen[digest]} (identical weights): give each member once", b.path)
        seen[digest] = b.path


def _check_same_input(b: Bundle, first: Bundle) -> None:
    """The members take the same input: channels, dimensions and the modality they were trained on (a CT and an MR
    model with one plan would be averaged silently, and members of other channels cannot run on one tensor)."""
    where = b.path / BUNDLE_JSON
    for key in ("spatial_dims", "n_channels"):
        if b.input.get(key) != first.input.get(key):
            raise MedsightError(
                f"its input {key} {b.input.get(key)!r} differs from {first.input.get(key)!r} ({first.path})", where
            )
    mine, theirs = (str(x.meta["data"].get("modality") or "unknown") for x in (b, first))
    if "unknown" not in (mine, theirs) and mine.upper() != theirs.upper():
        raise MedsightError(f"it was trained on {mine} images, {first.path} on {theirs}", where)


def _check_same_data(b: Bundle, first: Bundle) -> None:
    """The members' validation cases are the same images, not only the same names: two data sets may both call
    their cases case_001..., and the ensemble's post-processing is chosen on one of them."""
    mine, theirs = ((x.meta["data"].get("case_hashes") or {}).get("val") for x in (b, first))
    if mine is not None and theirs is not None and list(mine) != list(theirs):
        raise MedsightError(
            f"its validation cases have the same names as {first.path}'s but other pixels: it was trained on "
            "other data",
            b.path / BUNDLE_JSON,
        )


def _validation_cases(data: str, first: Bundle) -> tuple[SegmentationDataset, list[Loaded]]:
    """The members' validation cases read from ``data``, checked against the hashes training recorded."""
    ds = open_dataset(data)
    ids = list(first.meta["data"]["val_ids"])
    known = {c.id for c in (*ds.train, *ds.test)}
    missing = [i for i in ids if i not in known]
    if missing:
        raise MedsightError(f"{len(missing)} of the bundles' {len(ids)} validation cases are not in the data", data)
    cases = read_cases(ds, ids)
    recorded = (first.meta["data"].get("case_hashes") or {}).get("val")
    if recorded is not None and [case_hash(cases[i].image) for i in ids] != list(recorded):
        raise MedsightError("its validation cases differ from those the bundles were validated on", data)
    return ds, [cases[i] for i in ids]


def combine(
    members: Sequence[str | Path], data: str, out: str | Path, test_time_flips: bool | None = None
) -> dict[str, Any]:
    """Write to ``out`` one bundle that averages the members' probabilities; return its ``bundle.json``.

    ``data`` is the data the members were trained on (their validation split is read from it and checked);
    ``test_time_flips`` sets whether the ensemble predicts mirrored (default: as the first member).
    """
    torch.set_num_threads(config.num_threads())
    bundles = [load_bundle(Path(m)) for m in members]
    check_members(bundles)
    first = bundles[0]
    plan = first.plan(SegmentationPlan)
    if test_time_flips is not None:
        plan = plan.with_overrides({"test_time_flips": test_time_flips})
    model = ProbabilityAverage([b.meta["network"]["kwargs"] for b in bundles])
    for slot, b in zip(model.members, bundles, strict=True):
        slot.load_state_dict(b.network().state_dict())
    model.eval()
    ds, val_cases = _validation_cases(data, first)
    log.info("combining %d bundles; choosing the post-processing on %d validation cases", len(bundles), len(val_cases))

    out = Path(out)
    with atomic_dir(out) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        example = torch.randn(2, plan.network.in_channels, *plan.patch_size)
        try:
            onnx = export_onnx(model, example, tmp / ONNX)
            predictor = onnx_predictor(tmp / ONNX, torch.get_num_threads())
        except Exception as exc:  # as training: the bundle still works through PyTorch
            log.warning("ONNX export failed (%s); predict and evaluate will use PyTorch", exc)
            onnx = {"error": f"{type(exc).__name__}: {exc}"}
            predictor = torch_predictor(model)
        post, val_metrics, review = validation_postprocessing(ds, val_cases, plan, predictor)
        log.info("validation Dice of the ensemble: %s", ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
        meta = _meta(bundles, plan, model, onnx)
        meta |= {"postprocessing": post, "metrics": {"val": val_metrics}, "uncertainty": review}
        for name in ("splits.json", "plan.txt"):
            if (first.path / name).is_file():
                shutil.copy2(first.path / name, tmp / name)
        write_json(tmp / "plan.json", plan.to_json())
        write_bundle_json(tmp, meta)
    log.info("ensemble bundle written to %s", out)
    return meta


def _meta(
    bundles: Sequence[Bundle], plan: SegmentationPlan, model: torch.nn.Module, onnx: dict[str, Any]
) -> dict[str, Any]:
    """The first member's record (task, input, data, split), with the ensemble's network, plan and members."""
    from medsight.serving.provenance import bundle_checksum  # the checksum the service's results carry

    meta = copy.deepcopy(bundles[0].meta)
    for key in ("postprocessing", "metrics", "uncertainty", "parent"):
        meta.pop(key, None)
    trainings = [b.meta["training"] for b in bundles]
    meta["plan"] = plan.to_json()
    meta["network"] = {
        "name": PROBABILITY_AVERAGE,
        "kwargs": {"members": [b.meta["network"]["kwargs"] for b in bundles]},
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    meta["training"] = {k: v for k, v in trainings[0].items() if k != "history"} | {
        "seconds": round(sum(float(t.get("seconds", 0.0)) for t in trainings), 1),
        "warnings": sorted({w for t in trainings for w in t.get("warnings", [])}),
    }
    meta["ensemble"] = {
        "combination": "mean of the members' softmax probabilities (ProbabilityAverage)",
        "members": [
            {
                "bundle_sha256": bundle_checksum(b.path),
                "seed": b.meta["training"].get("seed"),
                "iterations": b.meta["training"].get("iterations"),
                "seconds": b.meta["training"].get("seconds"),
                "val_dice": (b.meta.get("metrics") or {}).get("val", {}).get("dice"),
                "created": b.meta.get("created"),
            }
            for b in bundles
        ],
    }
    meta["onnx"] = onnx
    meta["versions"] = library_versions()
    meta["created"] = now_iso()
    return meta
