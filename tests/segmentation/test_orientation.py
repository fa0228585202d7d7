"""The plan's ``flip_axes`` and ``max_rotation_degrees``: which axes training flips (and test time mirrors) and how
far it rotates. An ultrasound image has a top (the transducer) and depth below it; a plan can keep that orientation,
a malformed override is refused by name, and a plan stored before these keys existed reads back as nnU-Net's rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fingerprints import BUSI_LIKE
from medsight.errors import MedsightError
from medsight.tasks.segmentation.augment import train_transforms
from medsight.tasks.segmentation.inference import mirror_axes, sliding_probabilities
from medsight.tasks.segmentation.plan import SegmentationPlan, describe, make_plan

KEEP_TOP = {"preset": "fast", "image_pixels": 4096, "flip_axes": [1], "max_rotation_degrees": 0}


def _top_stays_darker(plan: SegmentationPlan, draws: int = 60) -> list[bool]:
    """Per augmented sample of an image that brightens from top to bottom: is its top half still the darker?"""
    h, w = plan.patch_size
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    label = np.zeros((h, w), np.float32)
    label[h // 2 - 4 : h // 2 + 4, w // 2 - 4 : w // 2 + 4] = 1
    item = {"image": rows[None], "label": label[None], "fg": np.flatnonzero(label), "bg": np.flatnonzero(label == 0)}
    chain = train_transforms(plan, seed=0)
    kept = []
    for _ in range(draws):
        out = np.asarray(chain(dict(item))[0]["image"])[0]
        kept.append(bool(out[: h // 2].mean() < out[h // 2 :].mean()))
    return kept


def test_a_plan_that_keeps_the_top_never_turns_an_image_upside_down() -> None:
    kept = make_plan(BUSI_LIKE, overrides=KEEP_TOP)
    assert kept.flip_axes == [1] and kept.max_rotation_degrees == 0 and kept.mirrored_axes() == [1]
    assert all(_top_stays_darker(kept))
    nnunet = make_plan(BUSI_LIKE, overrides={"preset": "fast", "image_pixels": 4096})
    assert nnunet.flip_axes is None and nnunet.mirrored_axes() == [0, 1]
    assert not all(_top_stays_darker(nnunet))  # nnU-Net's rule flips top-bottom half the time


def test_test_time_mirroring_flips_only_the_axes_training_flipped() -> None:
    assert mirror_axes(2, True) == [(), (2,), (3,), (2, 3)]
    assert mirror_axes(2, True, [1]) == [(), (3,)] and mirror_axes(2, False, [1]) == [(), (3,)]
    assert mirror_axes(3, False, []) == [()]
    plan = make_plan(BUSI_LIKE, overrides={**KEEP_TOP, "test_time_flips": True})
    seen: list[torch.Tensor] = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)

    image = np.random.default_rng(0).normal(size=(1, *plan.patch_size)).astype(np.float32)
    probs = sliding_probabilities(image, predictor, plan)
    assert len(seen) == 2 and torch.equal(seen[1], torch.flip(seen[0], (3,)))  # identity, then left-right only
    assert probs.shape == (2, *plan.patch_size)


def test_the_plan_says_how_it_bounds_the_augmentation_and_reads_back() -> None:
    kept = make_plan(BUSI_LIKE, overrides={**KEEP_TOP, "max_rotation_degrees": 15})
    words = next(line for line in describe(kept, BUSI_LIKE) if line.startswith("loss:"))
    assert "flips along axis 1 only" in words and "rotation within ±15°" in words
    assert SegmentationPlan.from_json(kept.to_json()) == kept
    stored = kept.to_json()
    del stored["flip_axes"], stored["max_rotation_degrees"]  # a bundle written before these keys
    old = SegmentationPlan.from_json(stored)
    assert old.flip_axes is None and old.max_rotation_degrees is None and old.mirrored_axes() == [0, 1]
    plain = next(line for line in describe(make_plan(BUSI_LIKE), BUSI_LIKE) if line.startswith("loss:"))
    assert "flips along" not in plain and "rotation within" not in plain


@pytest.mark.parametrize(
    ("key", "wrong"),
    [("flip_axes", v) for v in ([2], [1, 1], [True], 1, ["1"], [[1]])]
    + [("max_rotation_degrees", v) for v in (-1, 200, "15", True)],
)
def test_a_malformed_orientation_override_is_refused_by_name(key: str, wrong: object) -> None:
    with pytest.raises(MedsightError, match=rf"plan override {key}="):
        make_plan(BUSI_LIKE, overrides={key: wrong})
