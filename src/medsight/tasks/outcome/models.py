"""The fitted outcome models as typed containers: the clinical encoder, the logistic regressions, the embedding
projection and the CNN's temperature, plus the rule that picks the deployed model and its operating point.

Everything is stored in ``bundle.json`` as plain numbers (a bundle is data, not pickled code), so each container
has ``to_json``/``from_json`` that rebuild it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from medsight.data.clinical import ClinicalEncoder
from medsight.errors import MedsightError
from medsight.evaluation.operating_point import choose_threshold

ModelName = Literal["image", "clinical", "fused_embedding", "fused_late"]
MODELS: tuple[ModelName, ...] = ("image", "clinical", "fused_embedding", "fused_late")
LABELS: dict[str, str] = {
    "image": "image only (CNN)",
    "clinical": "clinical only (logistic regression)",
    "fused_embedding": "fused: CNN embedding + clinical (logistic regression)",
    "fused_late": "fused: mean of calibrated probabilities",
}
#: The only selection rule: a fusion must earn its place on validation.
FUSION_BEATS_BOTH = "fusion_beats_both"
RULES = {
    FUSION_BEATS_BOTH: "a fusion is kept only if its validation AUC is above both the image-only and clinical-only AUCs"
}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(z, float))))


def two_class(p: np.ndarray) -> np.ndarray:
    """(n, 2) probabilities [p(not outcome), p(outcome)] from p(outcome): what conformal sets are made over."""
    q = np.asarray(p, float)
    return np.stack([1 - q, q], axis=1)


def image_probability(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated p(outcome) from the CNN's two logits: softmax(logits / T)[:, 1]."""
    z = np.asarray(logits, float) / temperature
    return sigmoid(z[:, 1] - z[:, 0])


@dataclass
class Linear:
    """A fitted logistic regression: p = sigmoid(x · coef + intercept)."""

    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, c: float = 0.3, seed: int = 0) -> Linear:
        lr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
        lr.fit(x, y)
        return cls(lr.coef_[0].astype(float), float(lr.intercept_[0]))

    def logit(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, float) @ self.coef + self.intercept

    def proba(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(self.logit(x))

    def to_json(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Linear:
        return cls(np.asarray(d["coef"], float), float(d["intercept"]))


@dataclass
class Projection:
    """PCA of the CNN embedding (fitted on train), then standardised components."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, emb: np.ndarray, k: int, seed: int = 0) -> Projection:
        k = max(1, min(k, emb.shape[0] - 1, emb.shape[1]))
        pca = PCA(n_components=k, random_state=seed).fit(emb)
        z = (emb - pca.mean_) @ pca.components_.T
        sd = z.std(axis=0)
        return cls(pca.mean_.astype(float), pca.components_.astype(float), np.where(sd > 0, sd, 1.0))

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        return np.asarray(((emb - self.mean) @ self.components.T) / self.scale)

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "components": self.components.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Projection:
        return cls(np.asarray(d["mean"], float), np.asarray(d["components"], float), np.asarray(d["scale"], float))


@dataclass
class FittedModels:
    """Everything after the CNN: its temperature, the clinical encoder and the three logistic models."""

    temperature: float
    encoder: ClinicalEncoder
    clinical: Linear
    projection: Projection
    fused_embedding: Linear

    @classmethod
    def fit(
        cls,
        temperature: float,
        encoder: ClinicalEncoder,
        emb: np.ndarray,
        x_clin: np.ndarray,
        y: np.ndarray,
        c: float,
        components: int,
        seed: int,
    ) -> FittedModels:
        """Fit on the training rows given (``emb``, ``x_clin``, ``y`` are train only)."""
        clinical = Linear.fit(x_clin, y, c=c, seed=seed)
        projection = Projection.fit(emb, components, seed=seed)
        fused = Linear.fit(np.hstack([projection(emb), x_clin]), y, c=c, seed=seed)
        return cls(float(temperature), encoder, clinical, projection, fused)

    def probabilities(self, logits: np.ndarray, emb: np.ndarray, x_clin: np.ndarray) -> dict[str, np.ndarray]:
        """p(outcome) from each of the four models."""
        p_img = image_probability(logits, self.temperature)
        p_clin = self.clinical.proba(x_clin)
        p_emb = self.fused_embedding.proba(np.hstack([self.projection(emb), x_clin]))
        return {"image": p_img, "clinical": p_clin, "fused_embedding": p_emb, "fused_late": (p_img + p_clin) / 2}

    def to_json(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "encoder": self.encoder.to_json(),
            "clinical": self.clinical.to_json(),
            "projection": self.projection.to_json(),
            "fused_embedding": self.fused_embedding.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | None = None) -> FittedModels:
        try:
            return cls(
                float(d["temperature"]),
                ClinicalEncoder.from_json(d["encoder"]),
                Linear.from_json(d["clinical"]),
                Projection.from_json(d["projection"]),
                Linear.from_json(d["fused_embedding"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MedsightError(f"bundle.json 'models' is not a set of fitted outcome models ({exc!r})", where) from exc


@dataclass
class Selection:
    """Which model is deployed, and why."""

    selected: str
    fusion_kept: bool
    best_fusion: str
    rule: str
    val_auc: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "fusion_kept": self.fusion_kept,
            "best_fusion": self.best_fusion,
            "rule": self.rule,
            "val_auc": dict(self.val_auc),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | None = None) -> Selection:
        try:
            sel = cls(str(d["selected"]), bool(d["fusion_kept"]), str(d["best_fusion"]), str(d["rule"]), d["val_auc"])
        except (KeyError, TypeError) as exc:
            raise MedsightError(f"bundle.json 'selection' is incomplete ({exc!r})", where) from exc
        if sel.selected not in MODELS or sel.best_fusion not in MODELS:
            raise MedsightError(f"bundle.json 'selection' names an unknown model {sel.selected!r}", where)
        return sel


def select_model(val_auc: dict[str, float], rule: str = FUSION_BEATS_BOTH) -> Selection:
    """Keep a fusion only when its validation AUC beats both the image-only and the clinical-only model."""
    if rule not in RULES:
        raise MedsightError(f"unknown selection rule {rule!r} (known: {', '.join(RULES)})")

    def v(m: str) -> float:
        x = val_auc.get(m, float("nan"))
        return -1.0 if x is None or np.isnan(x) else float(x)

    best_part = max(("image", "clinical"), key=v)
    best_fusion = max(("fused_embedding", "fused_late"), key=v)
    kept = v(best_fusion) > v("image") and v(best_fusion) > v("clinical")
    return Selection(best_fusion if kept else best_part, bool(kept), best_fusion, RULES[rule], dict(val_auc))


@dataclass
class OperatingPoint:
    """The decision threshold on the deployed model's probability, chosen on validation."""

    threshold: float
    method: str
    applies_to: str
    val_sensitivity: float | None = None
    val_specificity: float | None = None
    chosen_on: str = "val"

    @classmethod
    def choose(cls, y: np.ndarray, p: np.ndarray, target_sensitivity: float | None, applies_to: str) -> OperatingPoint:
        op = choose_threshold(y, p, target_sensitivity)
        return cls(
            float(op["threshold"]),
            str(op["method"]),
            applies_to,
            _num(op["val_sensitivity"]),
            _num(op["val_specificity"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "threshold": self.threshold,
            "val_sensitivity": self.val_sensitivity,
            "val_specificity": self.val_specificity,
            "chosen_on": self.chosen_on,
            "applies_to": self.applies_to,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | None = None) -> OperatingPoint:
        try:
            return cls(
                float(d["threshold"]),
                str(d["method"]),
                str(d["applies_to"]),
                _num(d.get("val_sensitivity")),
                _num(d.get("val_specificity")),
                str(d.get("chosen_on", "val")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MedsightError(f"bundle.json 'operating_point' is incomplete ({exc!r})", where) from exc


def _num(v: Any) -> float | None:
    """JSON has no NaN: an undefined number is None."""
    if v is None:
        return None
    f = float(v)
    return None if np.isnan(f) else f
