"""Issue-13 benchmark: int8 vs float engine, and the kNN index chosen by bank size, on magnetic_tile.

Prints figures; asserts nothing. Usage:
    .venv/bin/python bench/bench_compute.py int8 [--size 224] [--frames 100]
    .venv/bin/python bench/bench_compute.py equal-work [--frames 60]
int8: the fast preset (lite0, installed ImageNet weights) at SIZE, fitted twice (float; int8 with its AUROC gate
open, so both graphs run; the default gate's verdict is printed); engine median per frame of both in one run (child
processes, same frames, two passes) and image AUROC of both on the whole test set. --ef pins HNSW efSearch for both
(equal kNN work).
equal-work: anomalib's shapes (ResNet18 layer2+3 = 384-d, 256² input -> 32x32 = 1024 patches per frame, a 76.7k-row
bank from the 749 good images); ResNet18 is random-init (no download here), so the FLOPs are the same but the
feature geometry is not ImageNet's. kNN alone (flat / IVF nprobe sweep / HNSW efSearch sweep: ms per frame,
recall@1, score errors), the flat-vs-IVF crossover by bank size (the `auto` rule), and the whole engine with the
fit's chosen index vs exact search (+ image AUROC of both).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_patchcore import DATA, child, pct

ANOMALIB_MS, LINESIGHT_EXACT_MS = 494.0, 340.0  # issue 13: torch model / engine with exact search, same work


def test_images(data: str, every: int = 1) -> tuple[list[Path], np.ndarray]:
    from linesight.export.images import list_images

    paths, labels = [], []
    for d in sorted((Path(data) / "test").iterdir()):
        for p in list_images(d):
            paths.append(p)
            labels.append(int(d.name != "good"))
    return paths[::every], np.array(labels[::every])


def auroc_of(bundle: str, data: str, every: int = 1) -> dict:
    """Image scores of every `every`-th test image (run in a child: the engine alone in the process)."""
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.trainer.metrics import auroc

    eng = Engine(bundle)
    paths, labels = test_images(data, every)
    scores = [eng.predict_batch([read_image(p)], regions=False)[0].score for p in paths]
    return {"auroc": float(auroc(scores, labels)), "scores": scores, "n": f"{int((labels == 0).sum())} good + "
            f"{int(labels.sum())} defective"}


def child_auroc(bundle: str, data: str, every: int = 1) -> dict:
    """auroc_of in a fresh process (bench_patchcore.child runs that module's functions only)."""
    code = f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_compute as b; " \
           f"print(json.dumps(b.auroc_of({bundle!r}, {data!r}, {every})))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def fit_quiet(data: str, out: Path, cfg) -> tuple:
    from linesight.trainer.fit import fit

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        b = fit(data, out, cfg, force=True)
    return b, time.perf_counter() - t


def index_line(m) -> str:
    i = m.scales[0].index
    c = i.check
    s = f"{i.kind} ({i.reason})"
    if c is not None:
        s += (f"; check on {c.n_images} images / {c.n_queries} patches: recall@1 {c.recall_at_1:.3f}, image error max "
              f"{c.image_error_max:.4f}, patch error mean {c.patch_error_mean:.4f} p99 {c.patch_error_p99:.4f}, "
              f"{c.ms_per_1k:.1f} ms per 1k patches (exact {c.exact_ms_per_1k:.1f})")
    for t in i.tried:
        s += (f"\n    tried {t.setting}: recall@1 {t.recall_at_1:.3f}, image error {t.image_error_max:.4f}, patch mean "
              f"{t.patch_error_mean:.4f}")
    return s


def run_int8(a) -> None:
    from linesight.config.fit import preset

    tmp = Path(tempfile.mkdtemp(prefix="lsbench-compute-"))
    res = {}
    for q in ("none", "int8"):
        # int8 with its AUROC gate open, so both graphs are measured; the gate's verdict is printed below
        cfg = preset("fast", weights="imagenet", input_size=a.size, model_id=f"bench-{q}",
                     quantize={"mode": q, "max_auroc_drop": 1.0 if q == "int8" else None},
                     index={"hnsw_ef_search": a.ef})
        b, sec = fit_quiet(a.data, tmp / f"{q}.zip", cfg)
        m = b.manifest
        print(f"[{q}] fit {sec:.1f} s, bank {list(b.bank.shape)}, onnx {m.onnx.precision}; index {index_line(m)}",
              flush=True)
        if m.onnx.int8 is not None:
            r = m.onnx.int8
            drop = r.auroc_float - r.auroc_int8 if r.auroc_int8 is not None else float("nan")
            bound = preset("fast").quantize.max_auroc_drop
            print(f"[{q}] int8 record: {r.model_dump()}\n[{q}] the default gate (drop <= {bound}) would "
                  f"{'keep' if drop <= bound else 'refuse'} it "
                  f"(synthetic-defect AUROC drop {drop:+.4f})", flush=True)
        res[q] = m.onnx.precision
    lat = {q: child("engine_latency", str(tmp / f"{q}.zip"), a.data, a.frames, 8) for q in ("none", "int8")}
    lat2 = {q: child("engine_latency", str(tmp / f"{q}.zip"), a.data, a.frames, 8) for q in ("none", "int8")}
    acc = {q: child_auroc(str(tmp / f"{q}.zip"), a.data) for q in ("none", "int8")}
    for q in ("none", "int8"):
        med = [lat[q]["single_median_ms"], lat2[q]["single_median_ms"]]
        print(f"[{a.size}² {res[q]}] engine single median {med[0]:.1f} / {med[1]:.1f} ms (two passes, alternating), "
              f"p99 {lat[q]['single_p99_ms']:.1f} ms, stages {lat[q]['stages_ms']}; image AUROC {acc[q]['auroc']:.4f} "
              f"({acc[q]['n']})",
              flush=True)
    f, i = np.array(acc["none"]["scores"]), np.array(acc["int8"]["scores"])
    print(f"[{a.size}²] int8 vs float: AUROC {acc['int8']['auroc'] - acc['none']['auroc']:+.4f}; speed-up "
          f"{lat['none']['single_median_ms'] / lat['int8']['single_median_ms']:.2f}x / "
          f"{lat2['none']['single_median_ms'] / lat2['int8']['single_median_ms']:.2f}x; image-score correlation "
          f"{np.corrcoef(f, i)[0, 1]:.4f} (different banks: each graph's own features)", flush=True)


def frame_queries(bundle: str, data: str, n: int) -> list[np.ndarray]:
    """(1024, 384) patch features of n test frames (good and defective), through the bundle's graph."""
    from linesight.export.engine import Engine
    from linesight.export.images import read_image
    from linesight.export.preprocess import preprocess_batch

    eng = Engine(bundle)
    paths, _ = test_images(data)
    out = []
    for p in paths[:: max(1, len(paths) // n)][:n]:
        f = eng.features(preprocess_batch([read_image(p)], eng.spec))
        out.append(np.ascontiguousarray(f[0].reshape(f.shape[1], -1).T))
    return out


class ListOrdered:
    """An IVF index searched with the queries sorted by their nearest list (an experiment, not the engine's)."""

    def __init__(self, index):
        self.index = index

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _, first = self.index.quantizer.search(x, 1)
        order = np.argsort(first[:, 0], kind="stable")
        d, i = self.index.search(np.ascontiguousarray(x[order]), k)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return d[back], i[back]


def knn_sweep(bank: np.ndarray, frames: list[np.ndarray], label: str, hnsw: bool = True) -> None:
    """ms per 1024-patch frame, recall@1 and score errors of flat / IVF / HNSW on one bank."""
    import faiss

    from linesight.config.fit import FitConfig
    from linesight.export.engine import knn_search, make_index
    from linesight.trainer.compute import ivf_centroids

    flat, _, _ = make_index(bank, None, 1)

    def timed(index, exact, refine: bool = False) -> tuple[float, list]:
        one = np.zeros(len(frames[0]), np.int64) if refine else None  # one frame = one image
        knn_search(index, exact, frames[0], 1, one)
        res, ms = [], []
        for q in frames:
            t = time.perf_counter()
            res.append(knn_search(index, exact, q, 1, one))
            ms.append((time.perf_counter() - t) * 1e3)
        return pct(ms, 50), res

    t_flat, ref = timed(flat, None)
    print(f"[{label}] bank {bank.shape}: flat {t_flat:.1f} ms per {len(frames[0])}-patch frame", flush=True)

    def errors(res) -> str:
        rec = np.mean(np.concatenate([r[1][:, 0] == e[1][:, 0] for r, e in zip(res, ref)]))
        pe = np.concatenate([(r[0][:, 0] - e[0][:, 0]) / np.maximum(e[0][:, 0], 1e-12) for r, e in zip(res, ref)])
        ie = [abs(r[0].max() - e[0].max()) / e[0].max() for r, e in zip(res, ref)]
        return f"recall@1 {rec:.3f}, patch error mean {np.mean(pe):.4f}, image error max {np.max(ie):.4f}"

    t = time.perf_counter()
    cent = ivf_centroids(bank, FitConfig())
    print(f"[{label}] ivf: nlist {len(cent)} (k-means {time.perf_counter() - t:.1f} s)", flush=True)
    for p in (1, 2, 4, 8, 16, 32):
        index, exact, _quantizer = make_index(bank, cent, p)
        ms, res = timed(index, exact)
        print(f"[{label}]   ivf nprobe {p:2d}: {ms:6.1f} ms/frame ({t_flat / ms:4.1f}x flat), {errors(res)}",
              flush=True)
        if p in (4, 8):  # the same search with the frame's patches ordered by inverted list (cache locality)
            ms, _ = timed(ListOrdered(index), exact)
            print(f"[{label}]   ivf nprobe {p:2d}, patches ordered by list: {ms:6.1f} ms/frame", flush=True)
    t = time.perf_counter()
    pq = faiss.IndexRefineFlat(faiss.index_factory(bank.shape[1], f"IVF{len(cent)},PQ{bank.shape[1] // 8}x8"))
    pq.train(bank)
    pq.add(bank)
    build = time.perf_counter() - t
    for p in (4, 16):
        faiss.extract_index_ivf(pq.base_index).nprobe = p
        pq.k_factor = 16
        ms, res = timed(pq, None)
        print(f"[{label}]   ivf-pq + exact re-rank of 16 nprobe {p:2d} (build {build:.1f} s): {ms:6.1f} ms/frame "
              f"({t_flat / ms:4.1f}x flat), {errors(res)}", flush=True)
    if not hnsw:
        return
    print(f"[{label}]   (below: plain faiss HNSW, no refinement)", flush=True)
    from linesight.export.engine import REFINE_EF, REFINE_TOP
    from linesight.trainer.compute import HNSW_M, build_hnsw

    graph, entry = build_hnsw(bank)
    for ef in (16, 32, 64):
        index, _, _ = make_index(bank, graph=graph, hnsw_m=HNSW_M, ef_search=ef, entry_point=entry)
        ms, res = timed(index, None, refine=True)
        print(f"[{label}]   hnsw M {HNSW_M} ef {ef:3d} + top {REFINE_TOP} per frame again at ef {ef * REFINE_EF} (the "
              f"engine's search): {ms:6.1f} ms/frame ({t_flat / ms:4.1f}x flat), {errors(res)}", flush=True)
    for m in (16, 32):
        h = faiss.IndexHNSWFlat(bank.shape[1], m)
        h.hnsw.efConstruction = 64
        t = time.perf_counter()
        h.add(bank)
        build = time.perf_counter() - t
        for ef in (16, 32, 64, 128):
            h.hnsw.efSearch = ef
            ms, res = timed(h, None)
            print(f"[{label}]   hnsw M {m} ef {ef:3d} (build {build:.1f} s): {ms:6.1f} ms/frame "
                  f"({t_flat / ms:4.1f}x flat), "
                  f"{errors(res)}", flush=True)


def crossover(bank: np.ndarray, frames: list[np.ndarray]) -> None:
    """Flat vs IVF and HNSW, each at its fastest setting within the fit's 1 % bound, on random subsets of the bank:
    where `auto` should stop searching exactly."""
    from linesight.config.fit import FitConfig
    from linesight.export.engine import knn_search, make_index
    from linesight.trainer.compute import EF_SEARCHES, HNSW_M, build_hnsw, ivf_centroids

    rng = np.random.default_rng(0)

    def fastest(make, settings, ref) -> tuple:
        for s in settings:
            built = make(s)
            t = time.perf_counter()
            got = [knn_search(built[0], built[1], q, 1)[0][:, 0] for q in frames]
            ms = (time.perf_counter() - t) * 1e3 / len(frames)
            pe = np.mean(np.concatenate([(g - e) / np.maximum(e, 1e-12) for g, e in zip(got, ref)]))
            ie = max(abs(g.max() - e.max()) / e.max() for g, e in zip(got, ref))
            if pe <= 0.01 and ie <= 0.01:
                break
        return s, ms, pe, ie

    for n in [n for n in (2048, 4096, 8192, 16384, 32768) if n < len(bank)] + [len(bank)]:
        sub = np.ascontiguousarray(bank[np.sort(rng.choice(len(bank), n, replace=False))])
        flat, _, _ = make_index(sub)
        knn_search(flat, None, frames[0], 1)
        t = time.perf_counter()
        ref = [knn_search(flat, None, q, 1)[0][:, 0] for q in frames]
        t_flat = (time.perf_counter() - t) * 1e3 / len(frames)
        cent = ivf_centroids(sub, FitConfig())
        p, t_ivf, pe, ie = fastest(lambda p, sub=sub, cent=cent: make_index(sub, cent, p), (1, 2, 4, 8, 16, 32), ref)
        graph, entry = build_hnsw(sub)
        ef, t_h, pe_h, ie_h = fastest(lambda ef, sub=sub, g=graph, e=entry: make_index(
            sub, graph=g, hnsw_m=HNSW_M, ef_search=ef, entry_point=e), EF_SEARCHES, ref)
        print(f"[crossover] {n:6d} rows: flat {t_flat:6.1f} ms/frame | ivf nlist {len(cent)} nprobe {p} {t_ivf:6.1f} "
              f"ms ({t_flat / t_ivf:.1f}x; patch error {pe:.4f}, image {ie:.4f}) | hnsw efSearch {ef} {t_h:6.1f} ms "
              f"({t_flat / t_h:.1f}x; patch error {pe_h:.4f}, image {ie_h:.4f})", flush=True)


def run_equal_work(a) -> None:
    from linesight.config.fit import preset
    from linesight.export.bundle import load_bundle, write_bundle
    from linesight.trainer.data import open_dataset

    tmp = Path(tempfile.mkdtemp(prefix="lsbench-compute-"))
    n_train = len(open_dataset(a.data).train)
    hold = 0.1
    n_bank_imgs = n_train - round(n_train * hold)
    # anomalib's 10 % of 749 x 1024 patches, from the images left for the bank
    ratio = min(1.0, 76_700 / (n_bank_imgs * 1024))
    cfg = preset("fast", backbone="resnet18", weights="none", input_size=256, embedding_dim=384,
                 coreset={"ratio": ratio}, holdout_fraction=hold, model_id="bench-equal", quantize={"mode": a.quantize})
    if a.bundle:  # an earlier run's auto.zip: the same fit, not repeated
        tmp, b, sec = Path(a.bundle).parent, load_bundle(a.bundle), float("nan")
    else:
        b, sec = fit_quiet(a.data, tmp / "auto.zip", cfg)
    m = b.manifest
    print(f"[equal-work] fit {sec:.1f} s: resnet18 (random init) layer2+3, 256² -> grid {m.features.grid}, bank "
          f"{list(b.bank.shape)}, onnx {m.onnx.precision}; index {index_line(m)}", flush=True)
    if m.onnx.int8 is not None:
        print(f"[equal-work] int8 record: {m.onnx.int8.model_dump()}", flush=True)
    flat = load_bundle(tmp / "auto.zip")  # the same bank and graph, exact search
    flat.manifest.scales[0] = flat.manifest.scales[0].model_copy(update={"index": None, "ivf_file": None})
    flat.manifest.scoring.index = "flat"
    flat.extras = {k: v for k, v in flat.extras.items() if "ivf" not in k}
    write_bundle(tmp / "flat.zip", flat)
    if {"sweep", "crossover"} & set(a.parts):
        frames = frame_queries(str(tmp / "auto.zip"), a.data, a.frames)
        if "sweep" in a.parts:
            knn_sweep(b.bank, frames, "equal-work kNN")
        if "crossover" in a.parts:
            crossover(b.bank, frames)
    if "engine" not in a.parts:
        return
    lat = {k: child("engine_latency", str(tmp / f"{k}.zip"), a.data, a.frames, 8) for k in ("flat", "auto")}
    acc = {k: child_auroc(str(tmp / f"{k}.zip"), a.data, a.auroc_every) for k in ("flat", "auto")}
    for k in ("flat", "auto"):
        ms = lat[k]["single_median_ms"]
        print(f"[equal-work engine, {k}] single median {ms:.1f} ms p99 {lat[k]['single_p99_ms']:.1f} ms, stages "
              f"{lat[k]['stages_ms']}, image AUROC {acc[k]['auroc']:.4f} ({acc[k]['n']}); vs anomalib "
              f"{ANOMALIB_MS:.0f} ms: "
              f"{ANOMALIB_MS / ms:.1f}x, vs the recorded exact engine {LINESIGHT_EXACT_MS:.0f} ms: "
              f"{LINESIGHT_EXACT_MS / ms:.1f}x", flush=True)
    f, i = np.array(acc["flat"]["scores"]), np.array(acc["auto"]["scores"])
    rel = np.abs(i - f) / np.maximum(f, 1e-12)
    print(f"[equal-work] test-set image scores, chosen index vs exact: relative error median {np.median(rel):.5f} "
          f"max {rel.max():.5f}; AUROC {acc['auto']['auroc'] - acc['flat']['auroc']:+.4f}; same-run speed-up "
          f"{lat['flat']['single_median_ms'] / lat['auto']['single_median_ms']:.1f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["int8", "equal-work"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ef", type=int, default=None, help="int8: pin HNSW efSearch for both bundles (equal kNN work; "
                    "default: each fit tunes its own)")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--quantize", default="none", choices=["none", "int8"], help="equal-work: also int8")
    ap.add_argument("--parts", nargs="+", default=["sweep", "crossover", "engine"],
                    choices=["sweep", "crossover", "engine"], help="equal-work: which figures (default all)")
    ap.add_argument("--bundle", help="equal-work: reuse this auto.zip of an earlier run instead of fitting")
    ap.add_argument("--auroc-every", type=int, default=3, help="equal-work: AUROC on every N-th test image (exact "
                    "search at this bank size costs about a second per frame here)")
    ap.add_argument("--data", default=str(DATA))
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.what == "int8":
        run_int8(a)
    else:
        run_equal_work(a)


if __name__ == "__main__":
    main()
