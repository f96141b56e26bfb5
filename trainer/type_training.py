"""Fitting the learned defect-type classifier from labeled region embeddings (what the line never runs).

Why in trainer/: only `linesight types` (trainer.types) fits a classifier; the line loads the fitted one from
the bundle (export.type_classifier), so the fitting code stays out of the deployable package. numpy only.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from linesight.errors import LinesightError
from linesight.export.type_classifier import (
    METHODS,
    UNKNOWN,
    TypeClassifier,
    class_scores,
    pack_logreg,
    softmax,
    unit,
)

__all__ = ["extend_classifier", "fit_classifier", "fit_logreg", "fit_temperature", "loo_image_scores"]

log = logging.getLogger(__name__)


def fit_classifier(embeddings: np.ndarray, labels: Sequence[str], groups: Sequence[int], *,
                   method: str = "knn", temperature: float | None = None, min_cover: float = 0.25,
                   floor_quantile: float = 0.02,
                   input_hw: tuple[int, int] | None = None, resize: str = "stretch",
                   info: dict[str, Any] | None = None) -> TypeClassifier:
    """`labels` per row (type names), `groups` per row (image id: the floor and the kNN temperature are
    measured across images). `temperature` None = fitted (kNN)."""
    if method not in METHODS:
        raise LinesightError(f"unknown type classifier method {method!r}; choose one of {', '.join(METHODS)}")
    emb = unit(np.asarray(embeddings, np.float32))
    if emb.ndim != 2 or len(emb) != len(labels) or len(emb) != len(groups) or len(emb) == 0:
        raise LinesightError(f"type classifier: need matching, non-empty embeddings ({emb.shape}), labels "
                             f"({len(labels)}) and image groups ({len(groups)})")
    names = sorted(set(labels))
    if UNKNOWN in names:
        raise LinesightError(f"'{UNKNOWN}' is the classifier's answer for 'nothing close'; rename that type")
    y = np.array([names.index(t) for t in labels], np.int32)
    loo = loo_image_scores(emb, np.asarray(groups), y, len(names))
    best = loo.max(axis=1)
    known = best[np.isfinite(best)]
    floor = float(np.quantile(known, floor_quantile)) if known.size else -1.0
    if method == "knn" and temperature is None:
        temperature = fit_temperature(loo, y)
    block = fit_logreg(emb, y, len(names)) if method == "logreg" else None
    clf = TypeClassifier(names, emb, y, method, floor, 0.05 if temperature is None else temperature,
                         None if input_hw is None else tuple(input_hw), resize, min_cover, floor_quantile, block,
                         dict(info or {}))
    log.info("type classifier fitted", extra={"method": method, "types": names, "examples": len(emb),
                                              "floor": round(floor, 4), "temperature": clf.temperature})
    return clf



def extend_classifier(clf: TypeClassifier, embeddings: np.ndarray, labels: Sequence[str],
                      source: str) -> TypeClassifier:
    """`clf` with more examples (operator-typed regions, `project learn`); a new type becomes a new class.
    The floor and kNN temperature stay as fitted (a few examples cannot re-measure them); logreg is refitted."""
    if UNKNOWN in labels:
        raise LinesightError(f"'{UNKNOWN}' is the classifier's answer for 'nothing close', not a type to learn")
    emb = unit(np.asarray(embeddings, np.float32).reshape(len(labels), -1))
    names = clf.labels + sorted(set(labels) - set(clf.labels))
    all_emb = np.concatenate([clf.embeddings, emb]).astype(np.float32)
    y = np.concatenate([clf.targets, [names.index(t) for t in labels]]).astype(np.int32)
    counts = dict(clf.info.get("learned_examples", {}))
    for t in labels:
        counts[t] = counts.get(t, 0) + 1
    info = {**clf.info, "learned_examples": counts, "learned_from": source}
    block = fit_logreg(all_emb, y, len(names)) if clf.method == "logreg" else None
    return replace(clf, labels=names, embeddings=all_emb, targets=y, logreg=block, info=info)

def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, *, l2: float = 1e-2, steps: int = 400,
               lr: float = 0.5) -> np.ndarray:
    """Class-balanced multinomial logistic regression (full-batch gradient descent with momentum).

    Returns the parameter block of `pack_logreg`; inputs are standardised first.
    """
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    n, e = z.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sw = (n / (n_classes * np.maximum(counts, 1)))[y][:, None]  # rare types weigh as much as common ones
    onehot = np.eye(n_classes)[y]
    W, b = np.zeros((e, n_classes)), np.zeros(n_classes)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    for _ in range(steps):
        g = sw * (softmax(z @ W + b) - onehot) / n
        gW, gb = z.T @ g + l2 * W, g.sum(0)
        vW, vb = 0.9 * vW - lr * gW, 0.9 * vb - lr * gb
        W, b = W + vW, b + vb
    return pack_logreg(mu, sd, W, b)


def loo_image_scores(emb: np.ndarray, groups: np.ndarray, targets: np.ndarray, n_classes: int) -> np.ndarray:
    """Per example, each class's best cosine similarity among the examples of *other* images (n, C).

    Row blocks keep memory at 1024 x N whatever the number of examples."""
    out = np.empty((len(emb), n_classes), np.float32)
    for s in range(0, len(emb), 1024):
        sims = emb[s:s + 1024] @ emb.T
        sims[groups[s:s + 1024, None] == groups[None, :]] = -np.inf
        out[s:s + 1024] = class_scores(sims, targets, n_classes)
    return out


def fit_temperature(scores: np.ndarray, targets: np.ndarray) -> float:
    """Temperature of the kNN softmax minimising the leave-one-image-out log loss (temperature scaling),
    so a confidence of 0.9 means about 9 in 10 right on new images. Cosine similarities of one backbone
    sit in a narrow band, so a fixed temperature would be badly calibrated."""
    ok = np.isfinite(scores[np.arange(len(targets)), targets])
    if not ok.any():
        return 0.05
    s, y = scores[ok].astype(np.float64), targets[ok]
    best, best_t = np.inf, 0.05
    for t in np.geomspace(1e-4, 0.5, 60):
        p = softmax(np.where(np.isfinite(s), s / t, -1e30))
        nll = -np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)))
        if nll < best:
            best, best_t = nll, float(t)
    return best_t
