"""Test-time flip for lesion detectors: the findings on the image and on its mirror, merged into one set.

**Merge.** The mirror's boxes are mapped back onto the image (:func:`.uncertainty.second_pass`) and paired with the
image's one-to-one within each class, exactly as the uncertainty pairs them (:func:`.uncertainty.paired`: Hungarian
assignment on IoU, pairs need IoU >= 0.3). A pair becomes one finding: the score-weighted mean box and the mean
score; a box seen in one view only keeps its place with half its score (the other view scored it 0). So a lesion
both views find rises above one that only one view finds, which is what averaging two views should do; and the
merged set and the uncertainty are computed from the same pairs, so they cannot disagree about which boxes match.
The rule is :func:`.fusion.fuse` for two views (a seed ensemble fuses its members by the same rule); why not a
box-fusion library is said there.

**Decision.** Only where training mirrors images (lesions; lateral objects are never mirrored). Training scores
the image alone and the merged pair on validation with the epoch-selection metric (CPM for lesions) and keeps the
flip only when it scores more than :data:`TIE` higher; a tie keeps the single pass (half the inference cost).
``bundle.json["test_time_flip"]`` records the candidates, the rule and the choice; predict, evaluate and the service
read it and never choose on the data they score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from medsight.tasks.detection.fusion import fuse
from medsight.tasks.detection.network import Detections

#: A merged candidate must beat the single pass by more than this on validation to be kept.
TIE = 0.002
SINGLE = ["image"]
FLIPPED = ["image", "left-right mirror"]


def merge(first: Detections, second: Detections) -> Detections:
    """One set of findings from two views of an image (``second`` already mapped back onto the image): paired boxes
    become their score-weighted mean box with the mean score, unpaired boxes keep half their score; highest first
    (:func:`.fusion.fuse` of the two views)."""
    return fuse([first, second])


def merged(first: Sequence[Detections], second: Sequence[Detections]) -> list[Detections]:
    """:func:`merge` for every image."""
    return [merge(a, b) for a, b in zip(first, second, strict=True)]


def decide(
    flip: bool,
    first: Sequence[Detections],
    both: Sequence[Detections] | None,
    score: Callable[[Sequence[Detections]], float],
    metric: str,
) -> dict[str, Any]:
    """Whether the flip is kept, from the validation detections of the image alone (``first``) and the merged
    findings of the image and its mirror (``both``, :func:`merged`; ``None`` where the plan never mirrors);
    ``score`` is the epoch-selection metric named ``metric``. The record for ``bundle.json["test_time_flip"]``."""
    if not flip or both is None:
        return {
            "kept": False,
            "views": SINGLE,
            "decided_on": "plan",
            "rule": "never for objects that are not mirror-symmetric (training does not flip them either)",
            "candidates": [],
            "forward_passes_per_image": 1,
        }
    single, merged_score = float(score(first)), float(score(both))
    kept = merged_score > single + TIE
    return {
        "kept": bool(kept),
        "views": FLIPPED if kept else SINGLE,
        "decided_on": "val",
        "rule": f"merge the mirror's findings when validation {metric} rises by more than {TIE:g} "
        "(otherwise the single pass: half the inference)",
        "candidates": [{"views": SINGLE, metric: round(single, 4)}, {"views": FLIPPED, metric: round(merged_score, 4)}],
        "forward_passes_per_image": 2 if kept else 1,
    }


def kept(meta: dict[str, Any], flip: bool) -> bool:
    """Does this bundle merge the mirror's findings? Never where its plan does not mirror (``flip``: a hand-edited
    bundle.json cannot merge a contrast view), nor in bundles from before the choice existed."""
    return flip and bool((meta.get("test_time_flip") or {}).get("kept"))
