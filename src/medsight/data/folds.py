"""Patient-level cross-validation folds and a held-out test set, derived once and stored, so every run agrees.

The folds are a pure function of the sorted case ids, their patients and a fixed seed (not the training seed),
so they come out the same on every machine. They are also written to a JSON file (nnU-Net's
``splits_final.json`` idea): a file found in the data folder (``medsight_splits.json`` or nnU-Net's
``splits_final.json``) wins; otherwise the derived folds are cached under ``$MEDSIGHT_CACHE`` and copied into
every bundle, and a later run finding a cached file reuses it as is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight import config
from medsight.errors import MedsightError
from medsight.io.atomic import write_json

FOLDS_SEED = 12345
N_FOLDS = 5
TEST_SHARE = 0.2
SPLITS_FILES = ("medsight_splits.json", "splits_final.json")


@dataclass
class Folds:
    """``test`` (held-out case ids; the official test set when the data have one) and ``folds[k]`` (val ids);
    ``train[k]`` the training ids of fold ``k`` when a splits file lists them (nnU-Net's ``splits_final.json``),
    else every other fold's cases."""

    folds: list[list[str]]
    test: list[str]
    method: str
    patients: dict[str, str] = field(default_factory=dict)
    source: str = "derived"
    train: list[list[str]] | None = None

    @property
    def dev(self) -> list[str]:
        """Every case that is not test: training plus validation."""
        return sorted({c for f in (*self.folds, *(self.train or [])) for c in f})

    def train_val(self, fold: int) -> tuple[list[str], list[str]]:
        if not 0 <= fold < len(self.folds):
            raise MedsightError(f"fold {fold} does not exist (there are {len(self.folds)} folds)")
        val = sorted(self.folds[fold])
        if self.train is not None:
            return sorted(self.train[fold]), val
        return [c for c in self.dev if c not in set(val)], val

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "seed": FOLDS_SEED,
            "test": self.test,
            "folds": self.folds,
            "patients": self.patients,
            "source": self.source,
        }
        if self.train is not None:
            out["train"] = self.train
        return out


def group_folds(ids: Sequence[str], patients: Sequence[str], n_folds: int, seed: int = FOLDS_SEED) -> list[list[str]]:
    """Split ``ids`` into ``n_folds`` folds so that no patient spans two folds (patients shuffled, then dealt
    largest first to the smallest fold, which balances fold sizes)."""
    by_patient: dict[str, list[str]] = {}
    for case, patient in zip(ids, patients, strict=True):
        by_patient.setdefault(patient, []).append(case)
    names = sorted(by_patient)
    order = np.random.default_rng(seed).permutation(len(names))
    groups = sorted((by_patient[names[i]] for i in order), key=len, reverse=True)  # stable: ties keep shuffle
    n_folds = max(1, min(n_folds, len(groups)))
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for g in groups:
        min(folds, key=len).extend(g)
    return [sorted(f) for f in folds]


def derive(
    ids: Sequence[str],
    patients: Sequence[str] | None = None,
    official_test: Sequence[str] | None = None,
    n_folds: int = N_FOLDS,
    test_share: float = TEST_SHARE,
) -> Folds:
    """Folds for ``ids`` (the cases with labels for training). Without ``official_test`` a patient-level
    ``test_share`` of them is held out as the test set first."""
    ids = sorted(ids)
    patient_of = dict(zip(ids, patients, strict=True)) if patients is not None else {c: c for c in ids}
    if official_test is not None:
        test = sorted(official_test)
        dev = [c for c in ids if c not in set(test)]
        method = f"official test split; {n_folds}-fold patient-level CV on the rest (seed {FOLDS_SEED})"
    else:
        n_test_folds = max(2, round(1 / test_share))
        first = group_folds(ids, [patient_of[c] for c in ids], n_test_folds, FOLDS_SEED + 1)
        test = first[0]
        dev = [c for c in ids if c not in set(test)]
        method = (
            f"held-out test = 1/{n_test_folds} of patients; {n_folds}-fold patient-level CV on the rest "
            f"(seed {FOLDS_SEED})"
        )
    if len(dev) < 2:
        raise MedsightError(f"only {len(dev)} training case(s): cross-validation needs at least 2")
    folds = group_folds(dev, [patient_of[c] for c in dev], n_folds, FOLDS_SEED)
    return Folds(folds=folds, test=test, method=method, patients={c: patient_of[c] for c in ids})


def stored_folds(
    root: Path,
    ids: Sequence[str],
    patients: Sequence[str] | None = None,
    official_test: Sequence[str] | None = None,
) -> Folds:
    """The folds for the data in ``root``: from a splits file in the folder, else cached, else derived + cached."""
    for name in SPLITS_FILES:
        found = root / name
        if found.is_file():
            return _read(found, ids, official_test)
    key = hashlib.sha256(
        json.dumps([str(root.resolve().name), sorted(ids), sorted(official_test or [])]).encode()
    ).hexdigest()[:16]
    cached = config.cache_root() / "segmentation_splits" / f"{root.resolve().name}-{key}.json"
    if cached.is_file():
        folds = _read(cached, ids, official_test)
        folds.source = str(cached)
        return folds
    folds = derive(ids, patients, official_test)
    folds.source = str(cached)
    try:
        write_json(cached, folds.to_json())
    except OSError:  # a read-only cache only loses the copy; the folds are derived the same way every time
        folds.source = "derived (cache not writable)"
    return folds


NNUNET_FORM = 'nnU-Net\'s form is [{"train": [case ids], "val": [case ids]}, ...], one object per fold'
MEDSIGHT_FORM = 'medsight\'s form is {"test": [case ids], "folds": [[case ids], ...]}'


def _ids(value: Any, what: str, path: Path) -> list[str]:
    """A list of case ids (strings) named ``what`` in the splits file, each once."""
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise MedsightError(f"{what} must be a list of case ids (strings), not {type(value).__name__}", path)
    seen: set[str] = set()
    for c in value:
        if c in seen:
            raise MedsightError(f"{what} lists case {c!r} twice", path)
        seen.add(c)
    return sorted(value)


def _read(path: Path, ids: Sequence[str], official_test: Sequence[str] | None = None) -> Folds:
    """A splits file, checked: its form, each case once per list, no case in two validation folds, no test case in a
    fold (it would be trained or validated on), no case the data do not have (``ids``, the cases with labels for
    training, and ``official_test``, the data's own test cases)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MedsightError(f"cannot read splits ({exc})", path) from exc
    known = set(ids)
    train: list[list[str]] | None = None
    if isinstance(raw, list):  # nnU-Net splits_final.json: [{"train": [...], "val": [...]}, ...]
        if not raw:
            raise MedsightError(f"holds no folds ({NNUNET_FORM})", path)
        folds, train = [], []
        for k, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise MedsightError(f"fold {k} is a {type(entry).__name__}, not an object ({NNUNET_FORM})", path)
            missing = [key for key in ("train", "val") if key not in entry]
            if missing:
                raise MedsightError(
                    f"fold {k} has no {' or '.join(repr(m) for m in missing)} list (its keys: "
                    f"{', '.join(repr(str(key)) for key in entry) or 'none'}; {NNUNET_FORM})",
                    path,
                )
            tr, val = _ids(entry["train"], f"fold {k} 'train'", path), _ids(entry["val"], f"fold {k} 'val'", path)
            if not tr:
                raise MedsightError(f"fold {k} has an empty 'train' list: nothing to train on", path)
            both = sorted(set(tr) & set(val))
            if both:
                raise MedsightError(f"fold {k}: case {both[0]!r} is in both 'train' and 'val'", path)
            folds.append(val)
            train.append(tr)
        test = sorted(known - {c for f in (*folds, *train) for c in f})
        out = Folds(folds=folds, test=test, method="nnU-Net splits_final.json", source=str(path), train=train)
    elif isinstance(raw, dict):
        if "folds" not in raw:
            raise MedsightError(f"has no 'folds' list ({MEDSIGHT_FORM})", path)
        if not isinstance(raw["folds"], list) or not raw["folds"]:
            raise MedsightError(f"'folds' must be a non-empty list of lists of case ids ({MEDSIGHT_FORM})", path)
        folds = [_ids(f, f"fold {k}", path) for k, f in enumerate(raw["folds"])]
        test = _ids(raw.get("test", []), "'test'", path)
        if "train" in raw:  # written by medsight from an nnU-Net file: the training ids of each fold
            if not isinstance(raw["train"], list) or len(raw["train"]) != len(folds):
                raise MedsightError(f"'train' must hold one list of case ids per fold ({len(folds)})", path)
            train = [_ids(t, f"fold {k} 'train'", path) for k, t in enumerate(raw["train"])]
        patients = raw.get("patients", {})
        if not isinstance(patients, dict):
            raise MedsightError("'patients' must map case ids to patient ids", path)
        out = Folds(
            folds=folds,
            test=test,
            method=str(raw.get("method", "stored")),
            patients={str(k): str(v) for k, v in patients.items()},
            source=str(path),
            train=train,
        )
    else:
        raise MedsightError(f"expected a list (nnU-Net) or an object (medsight), not {type(raw).__name__}", path)
    where: dict[str, int] = {}
    for k, f in enumerate(out.folds):
        for c in f:
            if c in where:
                raise MedsightError(f"case {c!r} is in validation folds {where[c]} and {k}: each case once", path)
            where[c] = k
    held = set(out.test)
    for k, f in enumerate(out.folds):
        used = sorted(held & {*f, *(out.train[k] if out.train is not None else [])})
        if used:
            raise MedsightError(
                f"case {used[0]!r} is both in 'test' and in fold {k}: a held-out test case must never be trained "
                f"or validated on ({len(used)} such case(s))",
                path,
            )
    unknown = {c for f in (*out.folds, *(out.train or [])) for c in f} - known
    unknown |= set(out.test) - known - set(official_test or [])
    if unknown:
        raise MedsightError(f"splits name {len(unknown)} case(s) not in the data, e.g. {sorted(unknown)[0]}", path)
    return out
