"""Supervised defect segmentation (#17, slice 2): a light decoder over the frozen pretrained backbone's stride-8/16
maps, trained on CPU from a LabelSet, judged on held-out images, exported with the backbone as one ONNX graph.

Why frozen: the ImageNet maps already separate magnetic_tile's defects for PatchCore, and training only the head
keeps CPU training in minutes. Not yet in bundles, the Engine or the daemon (slice 3).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linesight.config.base import Strict
from linesight.config.fit import SegmentConfig
from linesight.errors import DataError
from linesight.export.images import read_image
from linesight.export.preprocess import PreprocessSpec, normalise, resize_native
from linesight.trainer.augment import augment_labeled
from linesight.trainer.backbones import BACKBONES, build_backbone, input_spec, load_weights
from linesight.trainer.data import holdout_split
from linesight.trainer.labels import LabelSet, class_mask
from linesight.trainer.metrics import auroc, class_iou_f1, pixel_confusion
from linesight.trainer.onnx_export import export_onnx, parity
from linesight.trainer.progress import Progress

log = logging.getLogger(__name__)

OUTPUT = "probabilities"  # the graph's output: (B, classes + 1, H, W) softmax, channel 0 = background
MAX_CLASSES = 254  # label maps are uint8 (augmentation warps them with OpenCV), 0 = background


class SegmentationHead(nn.Module):
    """Stride-8 and stride-16 maps -> per-class logits on the stride-8 grid: 1x1 to a common width, the coarse map
    upsampled and added, one 3x3 conv (ReLU6, as in Lite), 1x1 to classes + 1. No batch norm: small batches."""

    def __init__(self, channels: tuple[int, int], n_out: int, width: int):
        super().__init__()
        self.lateral8 = nn.Conv2d(channels[0], width, 1)
        self.lateral16 = nn.Conv2d(channels[1], width, 1)
        self.fuse = nn.Conv2d(width, width, 3, padding=1)
        self.classify = nn.Conv2d(width, n_out, 1)

    def forward(self, f8: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.lateral16(f16), size=f8.shape[-2:], mode="bilinear", align_corners=False)
        return self.classify(F.relu6(self.fuse(self.lateral8(f8) + up)))


class SegmentationModel(nn.Module):
    """Backbone + head as one module: normalised image -> class probabilities at input size (what ONNX holds)."""

    def __init__(self, backbone: nn.Module, head: SegmentationHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        f8, f16 = self.backbone.pyramid(x)
        return F.interpolate(self.head(f8, f16), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


class ClassScore(Strict):
    """One defect class on the held-out images, pooled over their pixels at the images' own resolution."""

    name: str
    iou: float | None  # None: the class is neither labeled nor predicted on any held-out pixel
    f1: float | None
    true_pixels: int
    predicted_pixels: int
    heldout_images: int  # held-out images with at least one object of this class


class SegmentationReport(Strict):
    """What was trained and how well it segments held-out images; written as report.json by slice 3's verb."""

    classes: list[str]
    backbone: str
    weights: str
    input_size: int
    train_images: int
    heldout_images: list[str]
    per_class: list[ClassScore]
    mean_iou: float  # over the defect classes with a defined IoU (background excluded)
    background_iou: float
    image_auroc: float | None  # max defect probability per image, good vs defective held-out images
    image_auroc_note: str
    class_weights: list[float]  # cross-entropy weights, background first
    loss_curve: list[float]  # mean training loss per epoch
    iou_curve: list[float]  # held-out mean IoU per epoch
    best_epoch: int
    epochs: int
    stopped: str  # early stop | time budget | max epochs
    seconds: float
    onnx_max_abs_diff: float
    onnx_tolerance: float


@dataclass(frozen=True)
class TrainedSegmentation:
    model: SegmentationModel
    onnx: bytes  # backbone + head, input "image" (B, 3, S, S) normalised, output "probabilities"
    spec: PreprocessSpec  # how images become the graph's input
    report: SegmentationReport


@dataclass(frozen=True)
class _Item:
    image: np.ndarray  # at input size, the source's dtype
    target: np.ndarray  # uint8 class map at input size
    full_target: np.ndarray  # uint8 class map at the image's size (metrics are taken there)
    name: str
    defective: bool
    classes: frozenset[int]


def _items(labels: LabelSet, spec: PreprocessSpec) -> list[_Item]:
    out = []
    size = (spec.height, spec.width)
    for im in labels.images:
        full = class_mask(im, labels.classes).astype(np.uint8)
        small = cv2.resize(full, (spec.width, spec.height), interpolation=cv2.INTER_NEAREST)
        image = resize_native(read_image(im.image), size, spec.interpolation)
        out.append(_Item(image, small, full, str(im.image), bool(im.objects),
                         frozenset(labels.classes.index(o.cls) + 1 for o in im.objects)))
    return out


def split(labels: LabelSet, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train / held-out image indices, held out per stratum (an image's first class, or good) so every class with
    three or more images has held-out examples; the file-name hash of the anomaly fit's split keeps it stable."""
    strata: dict[str, list[int]] = {}
    for i, im in enumerate(labels.images):
        strata.setdefault(im.objects[0].cls if im.objects else "", []).append(i)
    held: set[int] = set()
    for idx in strata.values():
        by_path = {labels.images[i].image: i for i in idx}
        hold = set(holdout_split(list(by_path), fraction, seed)[1])
        held.update(i for i in idx if labels.images[i].image in hold)
    return [i for i in range(len(labels.images)) if i not in held], sorted(held)


def class_weights(items: list[_Item], n_out: int, cap: float) -> np.ndarray:
    """Median-frequency balancing over the training pixels (Eigen & Fergus): rare defect classes weigh more, capped;
    a class absent from training weighs 0."""
    counts = np.zeros(n_out, np.float64)
    for it in items:
        counts += np.bincount(it.target.ravel(), minlength=n_out)[:n_out]
    freq = counts / counts.sum()
    present = freq > 0
    w = np.zeros(n_out)
    w[present] = np.clip(np.median(freq[present]) / freq[present], 1.0 / cap, cap)
    return w


def seg_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Class-weighted cross-entropy plus soft Dice over the defect classes present in the batch."""
    ce = F.cross_entropy(logits, target, weight=weight)
    if dice_weight == 0:
        return ce
    p = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(p.dtype)
    inter, denom = (p * onehot).sum((0, 2, 3)), (p + onehot).sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    if not present.any():
        return ce
    dice = 1 - (2 * inter[present] + 1) / (denom[present] + 1)
    return ce + dice_weight * dice.mean()


def _batch(items: list[_Item], spec: PreprocessSpec) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalise(it.image, spec) for it in items]))


@dataclass(frozen=True)
class _Scores:
    confusion: np.ndarray
    image_scores: np.ndarray
    mean_iou: float


def heldout_scores(model: SegmentationModel, items: list[_Item], spec: PreprocessSpec, n_out: int) -> _Scores:
    """Pooled pixel confusion at each image's own size (probabilities upsampled bilinearly, then argmax) and the
    image score: the highest defect-class probability anywhere in the graph's output."""
    conf = np.zeros((n_out, n_out), np.int64)
    scores = []
    with torch.no_grad():
        for s in range(0, len(items), 8):
            chunk = items[s:s + 8]
            probs = model(_batch(chunk, spec))
            scores.extend(probs[:, 1:].amax((1, 2, 3)).tolist())
            for it, p in zip(chunk, probs):
                up = F.interpolate(p[None], size=it.full_target.shape, mode="bilinear", align_corners=False)
                conf += pixel_confusion(it.full_target, up[0].argmax(0).numpy(), n_out)
    iou, _ = class_iou_f1(conf)
    defect = iou[1:][~np.isnan(iou[1:])]
    return _Scores(conf, np.asarray(scores), float(defect.mean()) if defect.size else 0.0)


def _epoch_items(train: list[_Item], cfg: SegmentConfig, epoch: int) -> list[_Item]:
    """The originals plus this epoch's augmented copies (image and label map moved together)."""
    out = list(train)
    for i, it in enumerate(train):
        for c in range(cfg.augment.copies):
            image, target = augment_labeled(it.image, it.target, cfg.augment, (epoch, i, c))
            out.append(_Item(image, target, it.full_target, it.name, it.defective, it.classes))
    return out


def build_model(cfg: SegmentConfig, n_classes: int) -> tuple[SegmentationModel, str]:
    """Backbone (frozen, eval mode) + a fresh head; returns the weights' description for the report."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone)
    weights = load_weights(backbone, cfg.backbone, cfg.weights)
    backbone.requires_grad_(False)
    head = SegmentationHead(BACKBONES[cfg.backbone].channels, n_classes + 1, cfg.width)
    return SegmentationModel(backbone, head).eval(), weights.detail


def train_segmentation(labels: LabelSet, cfg: SegmentConfig) -> TrainedSegmentation:
    """Train the head on labeled images, stop early on held-out mean IoU, export backbone + head to ONNX and check
    ONNX Runtime against torch; DataError when the labels cannot train or judge a head."""
    t0 = time.monotonic()
    n_cls = len(labels.classes)
    if not any(im.objects for im in labels.images):
        raise DataError(f"segmentation: none of the {len(labels.images)} labeled images has a labeled defect; "
                        "a segmentation head learns from defect regions (masks, polygons or boxes)")
    if n_cls > MAX_CLASSES:
        raise DataError(f"segmentation: {n_cls} classes; at most {MAX_CLASSES} are supported")
    train_idx, held_idx = split(labels, cfg.holdout_fraction, cfg.seed)
    if not any(labels.images[i].objects for i in held_idx) or not any(labels.images[i].objects for i in train_idx):
        raise DataError(f"segmentation: {len(labels.images)} labeled images are too few to hold out "
                        f"{cfg.holdout_fraction:.0%} with defects on both sides; label at least 3 defective "
                        "images of a class")
    spec = input_spec(cfg.backbone, cfg.input_size)
    items = _items(labels, spec)
    train, held = [items[i] for i in train_idx], [items[i] for i in held_idx]
    n_out = n_cls + 1
    weight = class_weights(train, n_out, cfg.max_class_weight)
    model, weights_detail = build_model(cfg, n_cls)
    opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.lr)
    w_t = torch.tensor(weight, dtype=torch.float32)
    rng = np.random.default_rng(cfg.seed)
    per_epoch = math.ceil(len(train) * (1 + cfg.augment.copies) / cfg.batch_size)
    prog = Progress("segmentation training", cfg.epochs * per_epoch)
    loss_curve: list[float] = []
    iou_curve: list[float] = []
    best, best_epoch, best_state, stopped, step = None, 0, None, "max epochs", 0
    for epoch in range(cfg.epochs):
        batch_items = _epoch_items(train, cfg, epoch)
        order = rng.permutation(len(batch_items))
        losses = []
        for s in range(0, len(order), cfg.batch_size):
            chunk = [batch_items[j] for j in order[s:s + cfg.batch_size]]
            target = torch.from_numpy(np.stack([it.target for it in chunk]).astype(np.int64))
            loss = seg_loss(model.logits(_batch(chunk, spec)), target, w_t, cfg.dice_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            prog(step)
            if time.monotonic() - t0 > cfg.max_seconds:
                stopped = "time budget"
                break
        scores = heldout_scores(model, held, spec, n_out)
        loss_curve.append(float(np.mean(losses)))
        iou_curve.append(scores.mean_iou)
        log.info("epoch %d: loss %.4f, held-out mean IoU %.3f", epoch + 1, loss_curve[-1], scores.mean_iou,
                 extra={"epoch": epoch + 1, "loss": loss_curve[-1], "heldout_mean_iou": scores.mean_iou})
        if best is None or scores.mean_iou > best.mean_iou:
            best, best_epoch, best_state = scores, epoch + 1, copy.deepcopy(model.head.state_dict())
        if stopped == "time budget":
            break
        if epoch + 1 - best_epoch >= cfg.patience:
            stopped = "early stop"
            break
    model.head.load_state_dict(best_state)
    seconds = time.monotonic() - t0
    onnx = export_onnx(model, spec.height, spec.width, output=OUTPUT)
    diff, tol = parity(model, onnx, _batch(held[:8], spec).numpy())
    report = _report(labels, cfg, weights_detail, train, held, best, weight, loss_curve, iou_curve, best_epoch,
                     stopped, seconds, diff, tol)
    return TrainedSegmentation(model, onnx, spec, report)


def _report(labels: LabelSet, cfg: SegmentConfig, weights: str, train: list[_Item], held: list[_Item],
            final: _Scores, class_w: np.ndarray, loss_curve: list[float], iou_curve: list[float], best_epoch: int,
            stopped: str, seconds: float, diff: float, tol: float) -> SegmentationReport:
    iou, f1 = class_iou_f1(final.confusion)
    per_class = [ClassScore(name=c, iou=None if np.isnan(iou[k]) else float(iou[k]),
                            f1=None if np.isnan(f1[k]) else float(f1[k]),
                            true_pixels=int(final.confusion[k].sum()),
                            predicted_pixels=int(final.confusion[:, k].sum()),
                            heldout_images=sum(k in it.classes for it in held))
                 for k, c in enumerate(labels.classes, start=1)]
    defective = np.array([it.defective for it in held], int)
    if 0 < defective.sum() < len(defective):
        image_auroc, note = auroc(final.image_scores, defective), (
            f"{int((defective == 0).sum())} good vs {int(defective.sum())} defective held-out images")
    else:
        image_auroc, note = None, "not measured: the held-out images are all defective (no good images labeled)"
    return SegmentationReport(
        classes=list(labels.classes), backbone=cfg.backbone, weights=weights, input_size=cfg.input_size,
        train_images=len(train), heldout_images=[it.name for it in held], per_class=per_class,
        mean_iou=final.mean_iou, background_iou=float(iou[0]), image_auroc=image_auroc, image_auroc_note=note,
        class_weights=[round(float(w), 4) for w in class_w], loss_curve=loss_curve, iou_curve=iou_curve,
        best_epoch=best_epoch, epochs=len(loss_curve), stopped=stopped, seconds=round(seconds, 1),
        onnx_max_abs_diff=diff, onnx_tolerance=tol)
