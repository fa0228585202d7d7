"""The frozen validation split of a model's feedback: each case assigned once, by patient, never reshuffled.

Why frozen: a split drawn anew at every export moves cases between training and validation, so a model is scored on
cases an earlier model trained on and the scores of successive models are not comparable (MONAI Label's users
report inflated Dice from exactly that). Here a unit (the patient when the stored instance names one, else the case)
is assigned the first time it is seen and keeps its side for good: the assignment is stored in the feedback store
(``<data_dir>/feedback/<model>/split.json``, written atomically), and a new unit goes to validation when a keyed
hash of it (HMAC-SHA256 with the feedback key, so nobody can steer a case to a side by choosing its identifiers)
falls below the validation share. Units are stored by pseudonymous keys only; the key lives beside them
(``<data_dir>/feedback/<model>/key``, created 0600), so the pseudonyms of one service stay stable across exports.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsight.errors import MedsightError
from medsight.io.atomic import write_json

#: The share of new units that go to validation.
VAL_SHARE = 0.2
SPLIT_VERSION = 1
METHOD = (
    "each unit (patient, else case) assigned once and kept: a new unit goes to val when "
    "HMAC-SHA256(key, unit) read as a fraction in [0, 1) is below the val share"
)


def feedback_key(folder: Path) -> bytes:
    """The feedback store's secret key (created once, 0600); it keys pseudonyms and split hashes."""
    from medsight.privacy.pseudonyms import load_key

    folder.mkdir(parents=True, exist_ok=True)
    return load_key(folder / "key")


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """A 16-hex-digit keyed pseudonym of ``value`` (``kind`` separates patients from cases)."""
    return hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:16]


def hashed_fraction(key: bytes, unit: str) -> float:
    """Where ``unit`` falls in [0, 1) under the keyed hash."""
    digest = hmac.new(key, f"split\x00{unit}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class FrozenSplit:
    """Unit → "train" | "val", loaded from and saved to ``path``."""

    path: Path
    val_share: float = VAL_SHARE
    assignments: dict[str, str] = field(default_factory=dict)
    added: int = 0
    #: The fingerprint of the feedback key the units' pseudonyms were made with (None: not recorded yet).
    key_id: str | None = None

    @classmethod
    def open(cls, path: Path, key: bytes | None = None) -> FrozenSplit:
        """The stored split (an empty one when there is none yet). With ``key``: refused when it was made with
        another key, whose pseudonyms match none of the stored units, so every patient would be assigned anew."""
        from medsight.privacy.pseudonyms import key_id

        now = None if key is None else key_id(key)
        if not path.is_file():
            return cls(path, key_id=now)
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MedsightError(f"cannot read the frozen split ({exc})", path) from exc
        if (
            not isinstance(raw, dict)
            or raw.get("version") != SPLIT_VERSION
            or not isinstance(raw.get("assignments"), dict)
        ):
            raise MedsightError(f"not a frozen split of version {SPLIT_VERSION}", path)
        bad = {v for v in raw["assignments"].values() if v not in ("train", "val")}
        if bad:
            raise MedsightError(f"the frozen split assigns units to {sorted(bad)}; only train and val exist", path)
        share = raw.get("val_share", VAL_SHARE)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1:
            raise MedsightError(f"the frozen split's val_share is {share!r}; it must be a number between 0 and 1", path)
        stored = raw.get("key_id")
        if now is not None and stored is not None and stored != now:
            raise MedsightError(
                f"the frozen split was made with another feedback key (key id {stored}, this one {now}): its "
                "pseudonyms would match none of this key's and every patient would be assigned a side anew; use the "
                "key it was made with (the file 'key' beside it, and $MEDSIGHT_DEID_KEY unset or the same)",
                path,
            )
        return cls(path, float(share), dict(raw["assignments"]), key_id=stored or now)

    def side(self, key: bytes, unit: str) -> str:
        """The unit's side: as stored, else assigned now by the keyed hash (and stored at :meth:`save`)."""
        found = self.assignments.get(unit)
        if found is None:
            found = "val" if hashed_fraction(key, unit) < self.val_share else "train"
            self.assignments[unit] = found
            self.added += 1
        return found

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": SPLIT_VERSION, "method": METHOD, "val_share": self.val_share}
        if self.key_id is not None:
            out["key_id"] = self.key_id
        return out | {"assignments": dict(sorted(self.assignments.items()))}

    def save(self) -> None:
        write_json(self.path, self.to_json())
