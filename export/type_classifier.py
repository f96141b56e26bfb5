"""Learned few-shot defect types: region embeddings from the engine's patch features -> kNN / logistic regression.

Why: shape rules (long thin = scratch) need no labels but cannot tell a crack from a break of the same
shape. A handful of labeled example images per type is enough when the regions are described by the
same backbone features PatchCore scores with. torch-free (numpy/cv2), stored in the bundle without pickle:

- `types/classifier.json`: labels, method, unknown floor, embedding recipe, fingerprints, CV figures
- `types/embeddings.npy`: (N, E) float32 unit rows, the labeled region embeddings (kNN memory, floor)
- `types/labels.npy`: (N,) int32 label index per row
- `types/logreg.npy` (logreg only): (E + 1, C + 2) float32: input mean, std, weights; last row bias

Region embedding: the engine's patch features (D, h, w), each patch L2-normalised; the region's mask (a
frame-size mask, or a crop of the region labelling: views.MaskCrop) is taken to the patch grid (area
coverage per cell, the engine's view geometry) and cells covered >= `min_cover` are pooled as
[mean ‖ max], each half L2-normalised, the whole scaled to unit length. A region covering no cell that
much uses the single cell under its peak (or its best-covered cell). Measured on magnetic_tile (5 types,
5-fold CV grouped by image, self-supervised bundle): mean ‖ max matched or beat mean or max alone (kNN
0.889 / 0.871 / 0.889, logreg 0.887 / 0.847 / 0.867 accuracy), and subtracting the memory bank's mean
did not help (kNN 0.867), so features are used as they are.

kNN: a class scores its most similar example (1-NN decision, which beat 5- and 10-NN votes on
magnetic_tile: types are few-shot and clustered); confidence = softmax of the class scores at a
`temperature` fitted on the labeled examples (leave-one-image-out log loss: trainer.type_training).
logreg: class-balanced softmax regression; confidence = its probability.

Unknown: the answer is "unknown" when the query's best cosine similarity to any labeled example is below
`floor`. The floor is the `floor_quantile` (default 2 %) quantile of each labeled example's best
similarity to the examples of *other* images (leave-one-image-out), i.e. about 2 % of genuinely known
regions seen on a new image would be called unknown.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from linesight.config.inspection import UNKNOWN_TYPE
from linesight.config.manifest import ScaleInfo
from linesight.errors import BundleError
from linesight.export.preprocess import PreprocessSpec
from linesight.export.views import MaskCrop, View, make_view

if TYPE_CHECKING:
    from linesight.export.bundle import Bundle

__all__ = [
    "CLASSIFIER_FILE",
    "METHODS",
    "TypeAnswer",
    "TypeClassifier",
    "class_scores",
    "embed_regions",
    "grid_cells",
    "pack_logreg",
    "region_embedding",
    "softmax",
    "unit",
]

FORMAT_VERSION = 1
CLASSIFIER_FILE = "types/classifier.json"
EMBEDDINGS_FILE = "types/embeddings.npy"
LABELS_FILE = "types/labels.npy"
LOGREG_FILE = "types/logreg.npy"
METHODS = ("knn", "logreg")
UNKNOWN = UNKNOWN_TYPE


# --- embeddings ----------------------------------------------------------------------------------


def unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectors scaled to unit L2 length, so a dot product is their cosine similarity."""
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _to_grid(crop: MaskCrop, grid: tuple[int, int], input_hw: tuple[int, int] | None, resize: str,
             view: View | None = None) -> np.ndarray:
    """A region's pixels -> area coverage per cell of the features' patch grid.

    With the engine's `view` (Prediction.view) this is the engine's own geometry, tiles included; without
    it, the whole-frame view of `input_hw`/`resize` is rebuilt with the same code (export.views), or with
    no geometry at all the frame is resized straight onto the grid.
    """
    gh, gw = grid
    if view is None and input_hw is None:
        view = View(crop.frame_hw, (gh, gw), (0, 0), (gh, gw), (gh, gw), 1, (0,), (0,))
    elif view is None:
        spec = PreprocessSpec(int(input_hw[0]), int(input_hw[1]), resize=resize)
        whole = ScaleInfo(name="whole", mode="whole", bank_file="-", n_bank=1)
        view = make_view(crop.frame_hw, whole, spec, spec.height // gh)
    if view.grid_hw != tuple(grid):
        raise ValueError(f"features grid {tuple(grid)} does not match the view's grid {view.grid_hw}")
    return view.crop_coverage(crop)


def _as_crop(mask: np.ndarray | MaskCrop) -> MaskCrop:
    if isinstance(mask, MaskCrop):
        return mask
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"region mask must be 2-D (H, W), got shape {m.shape}")
    return MaskCrop.of(m)


def grid_cells(mask: np.ndarray | MaskCrop, grid: tuple[int, int], *, min_cover: float = 0.25,
               peak_xy: tuple[int, int] | None = None, input_hw: tuple[int, int] | None = None,
               resize: str = "stretch", view: View | None = None) -> np.ndarray:
    """Region mask (H, W) in image pixels, or its crop -> (h, w) float weights on the patch grid (area coverage).

    Cells covered less than `min_cover` drop out; if none is left, the cell under `peak_xy` (else the
    best-covered cell) gets weight 1, so even a 2-px defect has an embedding.
    """
    crop = _as_crop(mask)
    cover = _to_grid(crop, grid, input_hw, resize, view)
    w = np.where(cover >= min_cover, cover, 0.0).astype(np.float32)
    if w.any():
        return w
    if peak_xy is not None:
        (h, wd), (x, y) = crop.frame_hw, peak_xy
        dot = MaskCrop(crop.frame_hw, min(h - 1, max(0, int(y))), min(wd - 1, max(0, int(x))), np.ones((1, 1), bool))
        at = _to_grid(dot, grid, input_hw, resize, view)
        if at.any():
            cover = at
    w = np.zeros(grid, np.float32)
    w[np.unravel_index(int(np.argmax(cover)), cover.shape)] = 1.0
    return w


def region_embedding(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(D, h, w) patch features + (h, w) cell weights -> unit (2D,) [mean ‖ max] embedding."""
    f = np.asarray(features, np.float32)
    if f.ndim != 3 or f.shape[1:] != weights.shape:
        raise ValueError(f"features {f.shape} and grid weights {weights.shape} do not match (need (D, h, w) / (h, w))")
    sel = weights > 0
    x = unit(f[:, sel].T)  # (n, D)
    wt = weights[sel][:, None]
    mean = unit((x * wt).sum(0) / wt.sum())
    peak = unit(x.max(0))
    return (np.concatenate([mean, peak]) / math.sqrt(2.0)).astype(np.float32)


def embed_regions(features: np.ndarray, masks: Sequence[np.ndarray | MaskCrop], *, min_cover: float = 0.25,
                  peaks: Sequence[tuple[int, int] | None] | None = None, input_hw: tuple[int, int] | None = None,
                  resize: str = "stretch", view: View | None = None) -> np.ndarray:
    """Embeddings (n, 2D) of several regions of one image (full-size boolean masks or crops); `input_hw`/`resize`
    are the bundle's preprocess geometry (manifest `preprocess.input_size` / `resize`)."""
    grid = tuple(np.asarray(features).shape[1:])
    peaks = peaks if peaks is not None else [None] * len(masks)
    out = [region_embedding(features, grid_cells(m, grid, min_cover=min_cover, peak_xy=p, input_hw=input_hw,
                                                  resize=resize, view=view))
           for m, p in zip(masks, peaks)]
    return np.stack(out) if out else np.zeros((0, 2 * np.asarray(features).shape[0]), np.float32)


# --- classifier ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeAnswer:
    """`type` is a label or "unknown"; `guess` is the best label even when unknown; similarity is cosine."""

    type: str
    confidence: float
    similarity: float
    guess: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "confidence": round(self.confidence, 4), "similarity": round(self.similarity, 4),
                "guess": self.guess}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by each row's maximum so large scores cannot overflow."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def pack_logreg(mu: np.ndarray, sd: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One (E + 1, C + 2) float32 block: column 0 = input mean, 1 = input std, 2.. = W; last row = bias.
    Written by the trainer, read by _logreg_proba: the layout of types/logreg.npy lives here with its reader."""
    block = np.zeros((W.shape[0] + 1, W.shape[1] + 2), np.float32)
    block[:-1, 0], block[:-1, 1], block[:-1, 2:] = mu, sd, W
    block[-1, 2:] = b
    return block


def _logreg_proba(block: np.ndarray, x: np.ndarray) -> np.ndarray:
    mu, sd, W, b = block[:-1, 0], block[:-1, 1], block[:-1, 2:], block[-1, 2:]
    return softmax(((x - mu) / sd) @ W + b)


def class_scores(sims: np.ndarray, targets: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, N) similarities -> (n, C): each class's most similar example (-inf for a class with none)."""
    out = np.full((len(sims), n_classes), -np.inf, np.float32)
    for c in range(n_classes):
        members = targets == c
        if members.any():
            out[:, c] = sims[:, members].max(axis=1)
    return out


@dataclass
class TypeClassifier:
    """Few-shot type classifier over unit region embeddings. Built by trainer.type_training.fit_classifier,
    stored with `to_extras`, loaded on the line with `from_bundle`."""

    labels: list[str]
    embeddings: np.ndarray  # (N, E) float32 unit rows
    targets: np.ndarray  # (N,) int32 label index
    method: str = "knn"
    floor: float = -1.0
    temperature: float = 0.05
    input_hw: tuple[int, int] | None = None  # the bundle's preprocess geometry the embeddings were made with
    resize: str = "stretch"
    min_cover: float = 0.25
    floor_quantile: float = 0.02
    logreg: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)  # fingerprints, CV figures, counts (for reports)

    # -------------------------------------------------------------- inference
    def embed(self, features: np.ndarray, masks: Sequence[np.ndarray | MaskCrop],
              peaks: Sequence[tuple[int, int] | None] | None = None, view: View | None = None) -> np.ndarray:
        if 2 * np.asarray(features).shape[0] != self.embeddings.shape[1]:
            raise ValueError(f"features have {np.asarray(features).shape[0]} channels, the type classifier was "
                             f"built on {self.embeddings.shape[1] // 2}")
        return embed_regions(features, masks, min_cover=self.min_cover, peaks=peaks, input_hw=self.input_hw,
                             resize=self.resize, view=view)

    def predict_embeddings(self, emb: np.ndarray) -> list[TypeAnswer]:
        q = unit(np.asarray(emb, np.float32).reshape(len(emb), -1))
        sims = q @ self.embeddings.T
        best = sims.max(axis=1)
        if self.method == "logreg":
            proba = _logreg_proba(self.logreg, q)
        else:
            per_class = class_scores(sims, self.targets, len(self.labels)).astype(np.float64)
            proba = softmax(np.where(np.isfinite(per_class), per_class / self.temperature, -1e30))
        out = []
        for p, s in zip(proba, best):
            j = int(np.argmax(p))
            known = bool(s >= self.floor)
            out.append(TypeAnswer(self.labels[j] if known else UNKNOWN, float(p[j]) if known else 0.0, float(s),
                                  self.labels[j]))
        return out

    def classify(self, features: np.ndarray, masks: Sequence[np.ndarray | MaskCrop],
                 peaks: Sequence[tuple[int, int] | None] | None = None, view: View | None = None) -> list[TypeAnswer]:
        """Type answers for the regions of one image (full-size masks, or crops of the region labelling:
        analysis.locate_regions), given its (D, h, w) patch features and the engine's view they came from
        (Prediction.view)."""
        if not len(masks):
            return []
        return self.predict_embeddings(self.embed(features, masks, peaks, view))

    # -------------------------------------------------------------- storage
    def to_extras(self) -> dict[str, bytes]:
        from linesight.export.bundle import bank_bytes, json_default

        meta = {"version": FORMAT_VERSION, "method": self.method, "labels": self.labels, "floor": self.floor,
                "floor_quantile": self.floor_quantile, "temperature": self.temperature,
                "input_hw": None if self.input_hw is None else list(self.input_hw), "resize": self.resize,
                "min_cover": self.min_cover,
                "embedding": "mean||max of L2-normalised patch features over the region's grid cells",
                "dim": int(self.embeddings.shape[1]),
                "n_examples": int(len(self.embeddings)), **self.info}
        out = {CLASSIFIER_FILE: json.dumps(meta, indent=2, default=json_default).encode() + b"\n",
               EMBEDDINGS_FILE: bank_bytes(self.embeddings),
               LABELS_FILE: bank_bytes(self.targets, np.int32)}
        if self.logreg is not None:
            out[LOGREG_FILE] = bank_bytes(self.logreg)
        return out

    @classmethod
    def from_extras(cls, extras: dict[str, bytes], where: str = "bundle",
                    onnx_sha256: str | None = None) -> TypeClassifier | None:
        if CLASSIFIER_FILE not in extras:
            return None
        try:
            meta = json.loads(extras[CLASSIFIER_FILE])
            arrays = {n: np.load(io.BytesIO(extras[n]), allow_pickle=False)
                      for n in (EMBEDDINGS_FILE, LABELS_FILE, LOGREG_FILE) if n in extras}
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{where}: unreadable type classifier ({exc}); re-run `linesight types`") from exc
        missing = [n for n in (EMBEDDINGS_FILE, LABELS_FILE) if n not in arrays]
        if meta.get("method") == "logreg" and LOGREG_FILE not in arrays:
            missing.append(LOGREG_FILE)
        if missing or meta.get("version") != FORMAT_VERSION or meta.get("method") not in METHODS:
            raise BundleError(f"{where}: type classifier incomplete or of another version (missing {missing}, "
                              f"version {meta.get('version')!r}); re-run `linesight types`")
        emb, y, labels = arrays[EMBEDDINGS_FILE], arrays[LABELS_FILE], list(meta["labels"])
        if emb.ndim != 2 or y.shape != (len(emb),) or (len(y) and (y.min() < 0 or y.max() >= len(labels))):
            raise BundleError(f"{where}: type classifier arrays disagree (embeddings {emb.shape}, labels {y.shape})")
        want = meta.get("backbone_sha256")
        if onnx_sha256 is not None and want is not None and want != onnx_sha256:
            raise BundleError(f"{where}: the type classifier was built on another backbone (sha256 {want[:12]}, "
                              f"bundle has {onnx_sha256[:12]}); re-run `linesight types` on this bundle")
        info = {k: v for k, v in meta.items() if k not in ("version", "method", "labels", "floor", "floor_quantile",
                                                          "temperature", "min_cover", "embedding", "n_examples", "dim",
                                                          "input_hw", "resize")}
        hw = meta.get("input_hw")
        return cls(labels, emb.astype(np.float32), y.astype(np.int32), meta["method"], float(meta["floor"]),
                   float(meta["temperature"]), None if hw is None else (int(hw[0]), int(hw[1])),
                   str(meta.get("resize", "stretch")), float(meta["min_cover"]), float(meta["floor_quantile"]),
                   arrays.get(LOGREG_FILE), info)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> TypeClassifier | None:
        """The bundle's classifier, or None when it has none. A stale/broken one raises BundleError."""
        from linesight.export.bundle import sha256

        clf = cls.from_extras(bundle.extras, f"bundle {bundle.path}", sha256(bundle.onnx))
        if clf is None:
            return None
        pre = bundle.manifest.preprocess
        geometry = (pre.input_size, pre.resize)
        if clf.input_hw is not None and (clf.input_hw, clf.resize) != geometry:
            raise BundleError(f"bundle {bundle.path}: type classifier was built for input {clf.input_hw} "
                              f"({clf.resize}), the bundle preprocesses to {geometry[0]} ({geometry[1]}); re-run "
                              "`linesight types`")
        if clf.embeddings.shape[1] != 2 * bundle.manifest.features.embedding_dim:
            raise BundleError(f"bundle {bundle.path}: type classifier expects {clf.embeddings.shape[1] // 2}-channel "
                              f"features, the bundle has {bundle.manifest.features.embedding_dim}; re-run "
                              "`linesight types`")
        return clf
