"""``medsight compare NEW OLD DATA``: both bundles scored on the same cases, paired statistics, a plain verdict.

Each bundle predicts through its own warm model (the path ``predict``, ``evaluate`` and the service use), on the
cases of one split defined once (by NEW's recorded split: the frozen validation split of a feedback export, or
NEW's validation folds for segmentation). Cases either model was trained on are refused, recognised by their pixels
(:func:`medsight.data.fingerprint.check_leakage`). Classification compares AUC (paired bootstrap + DeLong for a
binary model) and accuracy at each bundle's own operating point (paired bootstrap + McNemar); segmentation compares
mean per-case Dice (paired bootstrap + Wilcoxon signed-rank). Nothing here names a case by a path or an identifier:
per-case rows carry their position in the split only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.evaluation.metrics import (
    N_BOOTSTRAP,
    binary_metrics,
    bootstrap,
    multiclass_metrics,
    multilabel_metrics,
    quadratic_kappa,
)
from medsight.feedback import paired
from medsight.training.bundle import Bundle, load_bundle

TASKS = ("classification", "segmentation")


def identity(bundle: Bundle) -> dict[str, Any]:
    """How the report names a bundle: folder, checksum (the service's), parent checksum, validation metrics."""
    from medsight.serving.provenance import bundle_checksum

    return {
        "path": str(bundle.path),
        "checksum": bundle_checksum(bundle.path),
        "parent": (bundle.meta.get("parent") or {}).get("checksum"),
        "created": bundle.meta.get("created"),
        "source": bundle.meta.get("data", {}).get("source"),
    }


def compare(new: Path, old: Path, data: str, split: str = "val", n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Score NEW and OLD on ``split`` of ``data``; the result holds both scores, the paired statistics and the
    verdict (``compare.json``)."""
    if split == "train":  # the cases a bundle learnt from: a verdict on them measures memory, not skill
        raise MedsightError(
            "--split train holds the cases the bundles were trained on; compare on val or test (or another data set)"
        )
    nb, ob = load_bundle(new), load_bundle(old)
    if nb.task != ob.task:
        raise MedsightError(f"NEW is a {nb.task} bundle and OLD ({ob.path}) a {ob.task} one: nothing to compare", new)
    if nb.label_names != ob.label_names:
        raise MedsightError(f"NEW's labels {nb.label_names} are not OLD's {ob.label_names} ({ob.path})", new)
    if nb.task == "classification":
        result = _classification(nb, ob, data, split, n_boot)
    elif nb.task == "segmentation":
        result = _segmentation(nb, ob, data, split, n_boot)
    else:
        raise MedsightError(f"compare covers {' and '.join(TASKS)} bundles; {nb.task} is not covered", new)
    new_id, old_id = identity(nb), identity(ob)
    lineage = "NEW was fine-tuned from OLD" if new_id["parent"] == old_id["checksum"] else "NEW is not OLD's child"
    caveat = None
    if split == "val":
        caveat = (
            "scored on the validation split: NEW chose its best epoch, calibration and operating point on these "
            "cases (OLD did not see them), which favours NEW slightly; a test split, when the data hold one, "
            "does not"
        )
    return {
        "task": nb.task,
        "data": data if "://" not in data else "(url)",
        "split": split,
        "new": new_id,
        "old": old_id,
        "lineage": lineage,
        "caveat": caveat,
        "bootstrap": {"resamples": n_boot, "method": "paired percentile bootstrap over cases (same resample for both)"},
        **result,
    }


# ------------------------------------------------------------------------------------------------ classification


def _classification(nb: Bundle, ob: Bundle, spec: str, split: str, n_boot: int) -> dict[str, Any]:
    from medsight.data.fingerprint import case_hashes
    from medsight.data.splits import recorded_split_seed
    from medsight.tasks.classification.data import load_like
    from medsight.tasks.classification.predict import ClassificationModel, decided_labels, positive_index

    seed = recorded_split_seed(nb.meta)  # one split for both: NEW's
    part_new = load_like(nb, spec, seed).split(split)
    part_old = load_like(ob, spec, seed).split(split)
    if len(part_new) != len(part_old) or (part_new.sources is not None and part_new.sources != part_old.sources):
        raise MedsightError(f"the two bundles would see different {split} cases (OLD prepares data differently)", spec)
    labels = part_new.labels
    if not np.array_equal(labels, part_old.labels):
        raise MedsightError(f"the {split} labels differ between the two bundles' reading of the data", spec)
    leakage = {
        "new": _leakage(nb, case_hashes(part_new.images), split, spec),
        "old": _leakage(ob, case_hashes(part_old.images), split, spec),
    }
    mn, mo = ClassificationModel(nb), ClassificationModel(ob)
    pn, po = mn.probabilities(part_new.images), mo.probabilities(part_old.images)
    task_type = mn.task_type
    if task_type != "multilabel":  # each bundle decides at its own operating point
        dn, do = decided_labels(task_type, pn, mn.operating), decided_labels(task_type, po, mo.operating)
    out: dict[str, Any] = {"n": len(labels), "leakage": leakage, "task_type": task_type}
    if task_type == "binary":
        k = positive_index(mn.operating)
        if positive_index(mo.operating) != k:
            raise MedsightError("NEW and OLD take different labels as the positive finding", nb.path)
        truth = (labels == k).astype(int)
        sn, so = pn[:, k], po[:, k]
        hit_n, hit_o = (dn == k).astype(int), (do == k).astype(int)

        def scores(ix: np.ndarray) -> dict[str, float]:
            a = binary_metrics(truth[ix], sn[ix], 0.5)
            b = binary_metrics(truth[ix], so[ix], 0.5)
            a |= _decision(truth[ix], hit_n[ix])
            b |= _decision(truth[ix], hit_o[ix])
            return _pair(a, b, ("auc", "accuracy", "sensitivity", "specificity"))

        boot = bootstrap(scores, len(truth), labels, n_boot)
        metrics = paired.split_bootstrap(boot, ["auc", "accuracy", "sensitivity", "specificity"])
        tests: dict[str, dict[str, Any] | None] = {
            "auc": paired.delong(truth, sn, so),
            "accuracy": paired.mcnemar(hit_n == truth, hit_o == truth),
        }
        correct_n, correct_o = hit_n == truth, hit_o == truth
        out |= {"positive_class": mn.label_names[k]}
        per_case = [
            {"index": i, "truth": int(truth[i]), "score_new": float(sn[i]), "score_old": float(so[i]),
             "correct_new": bool(correct_n[i]), "correct_old": bool(correct_o[i])}
            for i in range(len(truth))
        ]  # fmt: skip
    elif task_type == "multiclass":
        # each model's own decisions: arg-max, or the ordinal decoding its bundle chose on validation
        dn, do = decided_labels(task_type, pn, mn.operating), decided_labels(task_type, po, mo.operating)
        ordinal = "decoding" in mn.operating or "decoding" in mo.operating
        names = ("auc", "accuracy", "qwk") if ordinal else ("auc", "accuracy")

        def decided(y: np.ndarray, p: np.ndarray, d: np.ndarray) -> dict[str, float]:
            out = multiclass_metrics(y, p) | {"accuracy": float(np.mean(d == y))}
            return out | ({"qwk": quadratic_kappa(y, d, p.shape[1])} if ordinal else {})

        def scores(ix: np.ndarray) -> dict[str, float]:
            return _pair(decided(labels[ix], pn[ix], dn[ix]), decided(labels[ix], po[ix], do[ix]), names)

        metrics = paired.split_bootstrap(bootstrap(scores, len(labels), labels, n_boot), list(names))
        correct_n, correct_o = dn == labels, do == labels
        tests = {"auc": None, "accuracy": paired.mcnemar(correct_n, correct_o)} | ({"qwk": None} if ordinal else {})
        per_case = [
            {"index": i, "truth": int(labels[i]), "score_new": float(pn[i, labels[i]]),
             "score_old": float(po[i, labels[i]]), "correct_new": bool(correct_n[i]), "correct_old": bool(correct_o[i])}
            for i in range(len(labels))
        ]  # fmt: skip
    else:
        tn, to = np.asarray(mn.operating["thresholds"]), np.asarray(mo.operating["thresholds"])

        def scores(ix: np.ndarray) -> dict[str, float]:
            a = multilabel_metrics(labels[ix], pn[ix], tn)
            return _pair(a, multilabel_metrics(labels[ix], po[ix], to), ("auc", "accuracy"))

        metrics = paired.split_bootstrap(bootstrap(scores, len(labels), None, n_boot), ["auc", "accuracy"])
        tests = {"auc": None, "accuracy": None}
        per_case = [{"index": i} for i in range(len(labels))]
    out |= {
        "primary_metric": "auc",
        "metrics": metrics,
        "tests": tests,
        "verdict": paired.verdict("AUC", metrics["auc"]["difference"], tests["auc"]),
        "per_case": per_case,
    }
    return out


def _decision(truth: np.ndarray, hit: np.ndarray) -> dict[str, float]:
    """Accuracy, sensitivity and specificity of decisions already taken at a bundle's own operating point."""
    tp, tn = float(np.sum((hit == 1) & (truth == 1))), float(np.sum((hit == 0) & (truth == 0)))
    pos, neg = float(np.sum(truth == 1)), float(np.sum(truth == 0))
    return {
        "accuracy": (tp + tn) / len(truth) if len(truth) else float("nan"),
        "sensitivity": tp / pos if pos else float("nan"),
        "specificity": tn / neg if neg else float("nan"),
    }


def _pair(a: dict[str, float], b: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in names:
        out |= {f"{m}_new": a[m], f"{m}_old": b[m], f"{m}_difference": a[m] - b[m]}
    return out


def _leakage(bundle: Bundle, hashes: list[str], split: str, spec: str) -> dict[str, Any]:
    """The bundle's leakage report for these cases; a case it was trained on is refused (not only flagged)."""
    from medsight.data.fingerprint import check_leakage

    report = check_leakage(bundle.meta["data"], hashes, split, spec)
    if report.get("n_seen"):
        raise MedsightError(
            f"{report['n_seen']} of the {len(hashes)} {split} case(s) were used to train {bundle.path}: a comparison "
            "on them would favour it",
            spec,
        )
    return report


# ------------------------------------------------------------------------------------------------ segmentation


def _segmentation(nb: Bundle, ob: Bundle, spec: str, split: str, n_boot: int) -> dict[str, Any]:
    from tqdm import tqdm

    from medsight.data.fingerprint import case_hash
    from medsight.tasks.segmentation.data import load_case, open_dataset
    from medsight.tasks.segmentation.evaluate import split_ids
    from medsight.tasks.segmentation.metrics import dice_per_case
    from medsight.tasks.segmentation.predict import SegmentationModel

    ds = open_dataset(spec)
    ids = split_ids(nb, ds, split)  # NEW's cases: its validation fold, or the held-out test cases
    if not ids:
        raise MedsightError(f"the {split} split is empty", ds.root)
    cases = [load_case(ds, ds.case(c)) for c in ids]
    hashes = [case_hash(c.image) for c in cases]
    leakage = {"new": _leakage(nb, hashes, split, spec), "old": _leakage(ob, hashes, split, spec)}
    mn, mo = SegmentationModel(nb, uncertainty=False), SegmentationModel(ob, uncertainty=False)
    n_classes = len(nb.label_names)
    dice_new: list[float] = []
    dice_old: list[float] = []
    for case in tqdm(cases, desc="compare", unit="case", disable=len(cases) < 4):
        if case.label is None:
            raise MedsightError("case has no label to score against", ds.root)
        for model, sink in ((mn, dice_new), (mo, dice_old)):
            mask = model.case(case)[0]
            sink.append(float(np.mean(dice_per_case([mask], [case.label], n_classes)[0])))
    dn, do = np.asarray(dice_new), np.asarray(dice_old)

    def scores(ix: np.ndarray) -> dict[str, float]:
        return {"dice_new": float(dn[ix].mean()), "dice_old": float(do[ix].mean()),
                "dice_difference": float((dn[ix] - do[ix]).mean())}  # fmt: skip

    metrics = paired.split_bootstrap(bootstrap(scores, len(dn), None, n_boot), ["dice"])
    tests = {"dice": paired.wilcoxon(dn, do)}
    return {
        "n": len(ids),
        "leakage": leakage,
        "primary_metric": "dice",
        "metrics": metrics,
        "tests": tests,
        "verdict": paired.verdict("mean Dice", metrics["dice"]["difference"], tests["dice"]),
        "per_case": [
            {"index": i, "dice_new": float(a), "dice_old": float(b)}
            for i, (a, b) in enumerate(zip(dn, do, strict=True))
        ],
    }
