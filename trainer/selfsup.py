"""Self-supervised backbone training for air-gapped lines: learn layer2/layer3 features from the product's
own good images by segmenting synthetic defects painted on them (trainer/synth.py).

Why: random-init features do not separate defects from normal texture and ImageNet weights may not be
obtainable. A light head on layer2+layer3 must predict the synthetic mask (focal + dice), which forces
those layers - the ones PatchCore uses - to respond to local irregularities. Real defects are never seen:
validation uses held-out good images and synthetic defects painted on them.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from linesight.config.fit import FitConfig
from linesight.config.manifest import WeightsInfo
from linesight.errors import DataError
from linesight.export.preprocess import PreprocessSpec, preprocess
from linesight.trainer.backbones import BACKBONES, build_backbone, input_spec, load_weights
from linesight.trainer.data import fingerprint, holdout_split, load_images, open_dataset
from linesight.trainer.features import PatchFeatures
from linesight.trainer.metrics import auroc
from linesight.trainer.progress import Progress
from linesight.trainer.synth import DefectSynth

log = logging.getLogger(__name__)

SIZE_RANGE = (0.03, 0.45)  # fraction of the short side: blowholes to large uneven regions
P_DEFECT = 0.75  # share of training crops that get defects; the rest teach "clean stays clean"


class SegHead(nn.Module):
    """layer2 + layer3 -> defect logits on the layer2 grid (stride 8). Training only; never exported."""

    def __init__(self, channels: tuple[int, int], width: int = 64):
        super().__init__()
        self.p2 = nn.Conv2d(channels[0], width, 1)
        self.p3 = nn.Conv2d(channels[1], width, 1)
        self.fuse = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True),
                                  nn.Conv2d(width, 1, 1))

    def forward(self, l2: torch.Tensor, l3: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.p3(l3), size=l2.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([self.p2(l2), up], 1))


def seg_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal (soft targets) + soft dice: focal keeps tiny defects from drowning in background pixels."""
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    focal = (bce * (target - p).abs().pow(gamma)).mean() * 10.0
    inter = (p * target).sum((1, 2, 3))
    denom = p.sum((1, 2, 3)) + target.sum((1, 2, 3))
    has = target.sum((1, 2, 3)) > 0
    dice = (1 - (2 * inter + 1) / (denom + 1))[has].mean() if has.any() else logits.new_zeros(())
    return focal + dice


@dataclass
class SelfSupResult:
    backbone: nn.Module
    loss_curve: list[float]  # mean training loss per validation interval
    val_curve: list[tuple[int, float]]  # (step, held-out synthetic image AUROC)
    best_step: int
    best_val_auroc: float
    steps: int
    seconds: float
    stopped: str  # "early stop" | "time budget" | "max steps"
    head: SegHead | None = None  # at the best step; not exported (see the fusion note in the report)
    detail: str = ""


def _unit_images(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Images exactly as the engine sees them (preprocess), un-normalised back to RGB [0,1], float16 NHWC."""
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    out = np.empty((len(images), spec.height, spec.width, 3), np.float16)
    for i, im in enumerate(images):
        out[i] = np.clip(preprocess(im, spec).transpose(1, 2, 0) * std + mean, 0, 1)
    return out


class _Batches:
    """Random crops of the resized good images with synthetic defects, as normalised tensors + masks."""

    def __init__(self, unit: np.ndarray, crop: int, spec: PreprocessSpec, rng: np.random.Generator):
        self.unit, self.crop, self.rng = unit, crop, rng
        self.mean = np.asarray(spec.mean, np.float32)
        self.std = np.asarray(spec.std, np.float32)
        n_src = min(len(unit), 64)
        self.synth = DefectSynth([unit[i].astype(np.float32) for i in rng.choice(len(unit), n_src, replace=False)],
                                 size_range=SIZE_RANGE, count=(1, 3))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ms = [], []
        H, W = self.unit.shape[1:3]
        c = self.crop
        for _ in range(batch):
            img = self.unit[int(self.rng.integers(len(self.unit)))]
            y, x = int(self.rng.integers(0, H - c + 1)), int(self.rng.integers(0, W - c + 1))
            img = img[y:y + c, x:x + c].astype(np.float32)
            if self.rng.random() < 0.5:
                img = img[:, ::-1]
            if self.rng.random() < 0.5:
                img = img[::-1]
            img = np.ascontiguousarray(img)
            if self.rng.random() < P_DEFECT:
                img, mask, _ = self.synth(img, self.rng)
            else:
                mask = np.zeros((c, c), np.uint8)
            xs.append(((img - self.mean) / self.std).transpose(2, 0, 1))
            ms.append(mask)
        x = torch.from_numpy(np.stack(xs).astype(np.float32))
        m = torch.from_numpy(np.stack(ms).astype(np.float32))[:, None]
        return x, F.avg_pool2d(m, 8)  # soft target on the stride-8 grid


def _val_set(unit: np.ndarray, spec: PreprocessSpec, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Each held-out good image once clean and once with synthetic defects (fixed seed): a fixed yardstick."""
    rng = np.random.default_rng(seed + 7919)
    synth = DefectSynth([u.astype(np.float32) for u in unit], size_range=SIZE_RANGE, count=(1, 2))
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    xs, labels = [], []
    for u in unit:
        u = u.astype(np.float32)
        bad, _, _ = synth(u, rng)
        for img, lab in ((u, 0), (bad, 1)):
            xs.append(((img - mean) / std).transpose(2, 0, 1))
            labels.append(lab)
    return torch.from_numpy(np.stack(xs).astype(np.float32)), np.asarray(labels)


@torch.no_grad()
def _validate(backbone: nn.Module, head: SegHead, x: torch.Tensor, labels: np.ndarray, batch: int) -> float:
    """Image score = max of the 3x3-smoothed defect probability; AUROC over clean vs synthetic."""
    backbone.eval(), head.eval()
    scores = []
    for s in range(0, len(x), batch):
        p = torch.sigmoid(head(*backbone.pyramid(x[s:s + batch])))
        scores.append(F.avg_pool2d(p, 3, 1, 1).amax((1, 2, 3)).numpy())
    backbone.train(), head.train()
    return auroc(np.concatenate(scores), labels)


def train_selfsup(backbone: nn.Module, channels: tuple[int, int], train_images: list[np.ndarray],
                  val_images: list[np.ndarray], cfg: FitConfig) -> SelfSupResult:
    """Train `backbone` (in place, then restored to its best validation state) on synthetic defects."""
    crop = cfg.selfsup.crop or cfg.input_size
    if crop % 16 or crop > cfg.input_size:
        raise DataError(f"selfsup crop {crop} must be a multiple of 16 and <= input size {cfg.input_size}")
    if not train_images or not val_images:
        raise DataError("self-supervised training needs good training images and at least one held-out good image")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    spec = input_spec(cfg.backbone, cfg.input_size)
    batches = _Batches(_unit_images(train_images, spec), crop, spec, rng)
    val_x, val_y = _val_set(_unit_images(val_images, spec), spec, cfg.seed)
    head = SegHead(channels)
    unused = BACKBONES[cfg.backbone].unused
    params = [p for n, p in backbone.named_parameters() if not n.startswith(unused)] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.selfsup.lr, weight_decay=1e-4)
    warmup = min(100, max(1, cfg.selfsup.steps // 10))
    budget = cfg.selfsup.minutes * 60
    t0 = time.monotonic()

    def lr_factor(s: int) -> float:
        """Linear warm-up, then (cosine) decay over whichever ends first: the step count or the time budget."""
        ramp = min(1.0, (s + 1) / warmup)
        if cfg.selfsup.schedule == "constant":
            return ramp
        done = max(s / cfg.selfsup.steps, (time.monotonic() - t0) / budget)
        return ramp * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    backbone.train(), head.train()
    prog = Progress("self-supervised training", cfg.selfsup.steps)
    loss_curve, val_curve, run = [], [], []
    best = (-1.0, 0, copy.deepcopy(backbone.state_dict()), copy.deepcopy(head.state_dict()))
    bad_evals, stopped, step = 0, "max steps", 0
    for step in range(1, cfg.selfsup.steps + 1):
        x, m = batches.sample(cfg.selfsup.batch)
        loss = seg_loss(head(*backbone.pyramid(x)), m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run.append(loss.item())
        elapsed = time.monotonic() - t0
        # ETA honours whichever ends first: the step count or the time budget
        prog(step, min(cfg.selfsup.steps, int(step * budget / elapsed)) if elapsed > 0 else None)
        last = step == cfg.selfsup.steps or elapsed >= budget
        if step % cfg.selfsup.val_every == 0 or last:
            v = _validate(backbone, head, val_x, val_y, cfg.batch_size)
            loss_curve.append(float(np.mean(run)))
            val_curve.append((step, v))
            run = []
            log.info("selfsup step %d: loss %.4f, held-out synthetic AUROC %.4f (best %.4f @ %d)", step,
                     loss_curve[-1], v, max(v, best[0]), step if v > best[0] else best[1],
                     extra={"loss": {"step": step, "loss": round(loss_curve[-1], 5), "val_auroc": round(v, 5)}})
            if v > best[0]:
                best = (v, step, copy.deepcopy(backbone.state_dict()), copy.deepcopy(head.state_dict()))
                bad_evals = 0
            else:
                bad_evals += 1
                if bad_evals >= cfg.selfsup.patience:
                    stopped = "early stop"
                    break
        if elapsed >= budget:
            stopped = "time budget"
            break
    backbone.load_state_dict(best[2])
    head.load_state_dict(best[3])
    backbone.eval(), head.eval()
    seconds = time.monotonic() - t0
    log.info("self-supervised training: %d steps in %.0f s (%s); best held-out synthetic AUROC %.4f at step %d",
             step, seconds, stopped, best[0], best[1])
    return SelfSupResult(backbone, loss_curve, val_curve, best[1], best[0], step, seconds, stopped, head)


def self_supervised_model(cfg: FitConfig, dataset: str | Path, init: str = "none") -> tuple[PatchFeatures, WeightsInfo,
                                                                                          SelfSupResult]:
    """Backbone initialised from `init` (none | imagenet | .pth), trained self-supervised on DATASET's good
    images minus the held-out ones (the same split fit() uses for thresholds), wrapped for PatchCore."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone)
    start = None
    if init != "none":
        start = load_weights(backbone, cfg.backbone, init)
    ds = open_dataset(dataset)
    # the same split fit() uses: its held-out images (thresholds) are the validation set here
    train_paths, hold_paths = holdout_split(ds.train, cfg.holdout_fraction, cfg.seed)
    train_imgs, train_paths, _ = load_images(train_paths)
    hold_imgs, hold_paths, _ = load_images(hold_paths)
    res = train_selfsup(backbone, BACKBONES[cfg.backbone].channels, train_imgs, hold_imgs, cfg)
    fp = fingerprint(train_paths, ds.root)[:16]
    origin = f"fine-tuned from {start.detail}" if start else "from scratch"
    crop = cfg.selfsup.crop or cfg.input_size
    res.detail = (f"self-supervised ({origin}) on {len(train_imgs)} good images of {ds.name} (fingerprint {fp}) "
                  f"with synthetic defects; {res.steps} steps x {cfg.selfsup.batch} crops {crop}px, "
                  f"lr {cfg.selfsup.lr}, seed {cfg.seed}; best step {res.best_step}, held-out synthetic AUROC "
                  f"{res.best_val_auroc:.3f} ({res.stopped}, {res.seconds:.0f} s); no real defects seen")
    if cfg.selfsup.save:
        torch.save(res.backbone.state_dict(), cfg.selfsup.save)  # plain tensors (torch.load weights_only=True)
        log.info("self-supervised backbone saved to %s (refit banks with --weights %s)", cfg.selfsup.save,
                 cfg.selfsup.save)
    module = PatchFeatures(res.backbone, BACKBONES[cfg.backbone].channels, cfg.embedding_dim).eval()
    info = WeightsInfo(source="self", pretrained=True, detail=res.detail, sha256=start.sha256 if start else None,
                       training={"loss_curve": [round(v, 5) for v in res.loss_curve],
                                 "val_curve": [[int(s), round(float(v), 5)] for s, v in res.val_curve],
                                 "best_step": res.best_step, "stopped": res.stopped, "seconds": round(res.seconds, 1)})
    log.info("selfsup loss curve (per %d steps): %s", cfg.selfsup.val_every, [round(v, 4) for v in res.loss_curve])
    return module, info, res
