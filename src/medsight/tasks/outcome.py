"""Outcome prediction: image CNN, clinical logistic regression, and their fusions; all stored as plain numbers.

The image branch is the classification ResNet (``medsight.tasks.classification``). The clinical model and the fusion
models are scikit-learn logistic regressions whose coefficients are written into bundle.json (a bundle is data,
not pickled code), so :class:`Linear` rebuilds them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from torch import nn

MODELS = ("image", "clinical", "fused_embedding", "fused_late")
EMBED_COMPONENTS = 8


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
        return 1.0 / (1.0 + np.exp(-self.logit(x)))

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
    def fit(cls, emb: np.ndarray, k: int = EMBED_COMPONENTS, seed: int = 0) -> Projection:
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
        return cls(np.asarray(d["mean"]), np.asarray(d["components"]), np.asarray(d["scale"]))


def image_outputs(model: nn.Module, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, 2), embedding (N, F)): the embedding is the input to the ResNet's final ``fc`` layer."""
    captured: list[torch.Tensor] = []
    hook = model.get_submodule("fc").register_forward_hook(lambda _m, inp, _o: captured.append(inp[0].detach()))
    logits = []
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(images), batch):
                logits.append(model(torch.as_tensor(images[s : s + batch], dtype=torch.float32)).cpu())
    finally:
        hook.remove()
    return torch.cat(logits).numpy(), torch.cat(captured).cpu().numpy()


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(z, float))))


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.asarray(np.log(q / (1 - q)))


def image_probability(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated p(outcome) from the CNN's two logits: softmax(logits / T)[:, 1]."""
    z = np.asarray(logits, float) / temperature
    return sigmoid(z[:, 1] - z[:, 0])


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: among comparable pairs (the earlier time had the event), the share where the earlier one has
    the higher risk; ties in risk count one half. NaN when no pair is comparable."""
    t, e, r = np.asarray(time, float), np.asarray(event, int), np.asarray(risk, float)
    ok = ~np.isnan(t)
    t, e, r = t[ok], e[ok], r[ok]
    num, den = 0.0, 0.0
    for i in np.flatnonzero(e == 1):
        later = t > t[i]
        den += later.sum()
        num += np.sum(r[i] > r[later]) + 0.5 * np.sum(r[i] == r[later])
    return float(num / den) if den else float("nan")
